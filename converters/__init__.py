"""Disk image conversion (qemu-img) and transfer backends (S3, CDI upload proxy)."""
