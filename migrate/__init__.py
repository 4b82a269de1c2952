"""vmmove: move libvirt/KVM, VMware and OVF virtual machines into KubeVirt."""

__version__ = "0.1.0"
