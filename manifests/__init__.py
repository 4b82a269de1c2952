"""KubeVirt VirtualMachine and CDI DataVolume generation from the vmmove model."""
