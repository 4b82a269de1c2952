"""Rules about other devices: host passthrough, graphics, video, watchdog, sound, serial."""

from __future__ import annotations

from collections.abc import Iterator

from migrate.assessment.concern import Severity
from migrate.assessment.facts import device_label, devices
from migrate.assessment.registry import Context, Hit, rule
from migrate.core.model import VM

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO

KUBEVIRT_VIDEO = {"vga", "bochs", "ramfb", "virtio", "none"}  # v1.9 VideoDevice.type
KUBEVIRT_WATCHDOG = {"i6300esb"}  # diag288 exists for s390x only
KUBEVIRT_SOUND = {"ich9", "ac97"}
DROPPED_DEVICES = {
    "parallel": "parallel port",
    "smartcard": "smartcard reader",
    "redirdev": "USB redirection channel",
    "shmem": "shared-memory device (ivshmem)",
}


# -- host devices: the VM is tied to its host ------------------------------------------


@rule(
    "pci-passthrough",
    CRITICAL,
    "Remove the device before moving, or expose it on a node through KubeVirt's "
    "permittedHostDevices and add it to the VirtualMachine as a hostDevice (GPU: gpu) after "
    "vmmove manifests; the VM is then tied to such nodes (nodeSelector in its plan entry).",
)
def pci_passthrough(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt assigns host PCI devices only through a node's device plugin, never by host address."""
    for dev in devices(vm, "pci-passthrough"):
        yield Hit(f"PCI host device {device_label(dev)} is passed through", subject=device_label(dev))


@rule(
    "usb-passthrough",
    CRITICAL,
    "Remove the device, or list it in KubeVirt's permittedHostDevices.usb on a node that has it "
    "and add it to the VirtualMachine as a hostDevice after vmmove manifests (nodeSelector in its plan entry for such nodes).",
)
def usb_passthrough(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A USB device plugged into the source host does not exist on a KubeVirt node."""
    for dev in devices(vm, "usb-passthrough"):
        yield Hit(f"USB host device {device_label(dev)} is passed through", subject=device_label(dev))


@rule(
    "mdev-passthrough",
    CRITICAL,
    "Remove the vGPU, or offer the mediated device type through KubeVirt's "
    "permittedHostDevices.mediatedDevices and add it to the VirtualMachine as a gpu after vmmove manifests (nodeSelector in its plan entry for such nodes).",
)
def mdev_passthrough(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A mediated device (vGPU) instance belongs to the source host's physical GPU."""
    for dev in devices(vm, "mdev"):
        yield Hit(f"mediated device {device_label(dev)} (vGPU) is passed through", subject=device_label(dev))


@rule(
    "scsi-passthrough",
    CRITICAL,
    "Present the storage to the cluster as a block-mode PVC and attach it as a lun disk, or "
    "remove the device.",
)
def scsi_passthrough(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A host SCSI device given to the guest exists only on the source host."""
    for dev in devices(vm, "scsi-passthrough"):
        yield Hit(f"host SCSI device {device_label(dev)} is passed through", subject=device_label(dev))


@rule(
    "filesystem-share",
    WARNING,
    "Copy the shared files into a PVC and share that with virtiofs, or into a disk.",
)
def filesystem_share(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt shares PVCs, ConfigMaps and Secrets with virtiofs, never a host directory."""
    for dev in devices(vm, "filesystem"):
        yield Hit(f"host directory {device_label(dev)} shared into the guest is not carried", subject=device_label(dev))


# -- emulated devices KubeVirt does differently --------------------------------------------


@rule("graphics-spice", INFO, "Use virtctl vnc (or the console) to reach the screen.")
def graphics_spice(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt offers VNC only; SPICE displays become VNC."""
    for dev in devices(vm, "graphics"):
        if (dev.model or "").lower() == "spice":
            yield Hit("SPICE display becomes VNC", subject="spice")


@rule("graphics-other", INFO, "Use virtctl vnc (or the console) to reach the screen.")
def graphics_other(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt offers VNC only; SDL, RDP and other displays are replaced by VNC."""
    for dev in devices(vm, "graphics"):
        model = (dev.model or "").lower()
        if model and model not in ("vnc", "spice"):
            yield Hit(f"{dev.model} display becomes VNC", subject=dev.model)


@rule(
    "video-model",
    INFO,
    "Nothing to do for most guests; guests with a driver only for the old card fall back to "
    "plain VGA.",
)
def video_model(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt emulates vga, bochs, ramfb and virtio video only (qxl, cirrus, vmvga are gone)."""
    for dev in devices(vm, "video"):
        model = (dev.model or "").lower()
        if model and model not in KUBEVIRT_VIDEO:
            to = "bochs" if vm.firmware.type == "efi" else "vga"
            yield Hit(f"{dev.model} video card becomes {to}", subject=dev.model)


@rule(
    "watchdog-model",
    WARNING,
    "Make sure the guest loads the i6300esb watchdog driver (Linux: i6300esb module) if it "
    "relies on the watchdog.",
)
def watchdog_model(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt's only x86 watchdog is the i6300esb; ib700, itco and others are not emulated."""
    for dev in devices(vm, "watchdog"):
        model = (dev.model or "").lower()
        if model and model not in KUBEVIRT_WATCHDOG:
            yield Hit(f"{dev.model} watchdog becomes i6300esb", subject=dev.model)


@rule(
    "sound-model",
    INFO,
    "Add an ich9 sound device to the VirtualMachine (spec.domain.devices.sound) if the guest needs audio; vmmove does not carry sound cards.",
)
def sound_model(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt emulates ich9 and ac97 sound only; other sound cards are dropped."""
    for dev in devices(vm, "sound"):
        model = (dev.model or "").lower()
        if model not in KUBEVIRT_SOUND:
            what = f"{dev.model} sound card" if dev.model else "sound card of unknown model"
            yield Hit(f"{what} is dropped", subject=dev.model or "sound")


@rule(
    "serial-extra",
    INFO,
    "Use the network or a virtio-serial channel instead of the extra serial ports.",
)
def serial_extra(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt gives a VM one serial console; further serial ports are dropped."""
    for i, dev in enumerate(devices(vm, "serial")):
        if i > 0:
            port = dev.details.get("port", str(i))
            yield Hit(f"serial port {port} is dropped (only the first becomes the console)", subject=f"serial{port}")


@rule("device-dropped", INFO, "Nothing to do unless the guest relies on the device.")
def device_dropped(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt has no parallel ports, smartcards, USB redirection or ivshmem; they are dropped."""
    for dev in devices(vm, *DROPPED_DEVICES):
        what = DROPPED_DEVICES[dev.kind]
        yield Hit(f"{what} {dev.model or ''}".rstrip() + " is dropped", subject=dev.kind)
