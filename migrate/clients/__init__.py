"""Clients: the only modules that talk to libvirt, Kubernetes and the hosts' tools."""
