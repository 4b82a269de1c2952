"""Clients of the systems vmmove talks to (SSH, NBD, libvirt's backup API, …).

Only modules in this package import third-party client libraries (``libvirt``); the
rest of vmmove calls these modules.
"""
