"""Rules about network interfaces: model, what they are plugged into, MAC addresses."""

from __future__ import annotations

from collections.abc import Iterator

from migrate.assessment.concern import Severity
from migrate.assessment.facts import hostonly_initramfs, is_windows, nic_label
from migrate.assessment.registry import Context, Hit, normalize_mac, rule
from migrate.core.model import VM

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO

# KubeVirt v1.9 Interface.model: e1000, e1000e, igb, ne2k_pci, pcnet, rtl8139, virtio
KUBEVIRT_NIC_MODELS = {"e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139", "virtio"}
NIC_MODEL_ALIASES = {
    "vlance": "pcnet",  # VMware's name for the AMD PCnet32
    "flexible": "pcnet",  # VMware "flexible" starts as vlance
    "ne2k-pci": "ne2k_pci",
    "virtio-net": "virtio",
    "virtio-net-pci": "virtio",
    "virtio-transitional": "virtio",
    "virtio-non-transitional": "virtio",
    "e1000-82540em": "e1000",
    "e1000-82544gc": "e1000",
    "e1000-82545em": "e1000",
}
MAPPABLE_NIC_TYPES = {"network", "bridge", "vds"}  # have a named network a map can match


def kubevirt_nic_model(model: str | None) -> str | None:
    """The KubeVirt model a source NIC model is, or ``None`` when KubeVirt lacks it."""
    if model is None:
        return "virtio"
    m = model.lower()
    m = NIC_MODEL_ALIASES.get(m, m)
    return m if m in KUBEVIRT_NIC_MODELS else None


@rule(
    "nic-model",
    WARNING,
    "Linux: nothing to do (virtio-net is built in) unless the network configuration is tied to "
    "the interface name or driver. Windows: install netkvm from virtio-win before cutover, or "
    "choose e1000e in the VM's plan entry (nics: {nic0: {model: e1000e}}).",
)
def nic_model(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt emulates only e1000, e1000e, igb, ne2k_pci, pcnet, rtl8139 and virtio NICs."""
    windows, source = is_windows(vm), hostonly_initramfs(vm)
    remedy = None
    if source:  # virtio_net is a module there, loaded from the root file system
        remedy = ("RHEL-family guest: virtio_net loads from the root file system once the rebuilt "
                  "initramfs (initramfs-hostonly) has found it; check ifcfg/NetworkManager files "
                  "that name the old interface (ens192) or its driver.")
    for nic in vm.nics:
        if kubevirt_nic_model(nic.model) is None:
            to = "virtio (or e1000e)" if windows else "virtio"
            yield Hit(f"NIC {nic_label(vm, nic)} model {nic.model} becomes {to}",
                      subject=nic_label(vm, nic), remediation=remedy)


@rule(
    "nic-no-network",
    WARNING,
    "Map the NIC to a pod network or a Multus NetworkAttachmentDefinition in the plan's "
    "network map (SR-IOV: an SR-IOV network), or drop it.",
)
def nic_no_network(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A network map matches libvirt networks and bridges; user, direct, hostdev, vhostuser NICs have none."""
    for nic in vm.nics:
        if nic.type not in MAPPABLE_NIC_TYPES:
            what = {
                "user": "user-mode (SLIRP)",
                "direct": f"macvtap on {nic.network or '?'}",
                "hostdev": "an SR-IOV/host device",
                "vhostuser": "vhost-user",
                "ethernet": "a host tap device",
            }.get(nic.type, nic.type)
            yield Hit(f"NIC {nic_label(vm, nic)} is {what}: no network to map", subject=nic_label(vm, nic))
        elif not nic.network:
            yield Hit(f"NIC {nic_label(vm, nic)} ({nic.type}) names no network", subject=nic_label(vm, nic))


@rule(
    "mac-duplicate",
    WARNING,
    "Give one of the NICs a new MAC in its VM's plan entry (nics: {nic0: {mac: 52:54:00:12:34:56}}), or let KubeVirt/kubemacpool assign one; "
    "guests that bind configuration to the MAC need it updated.",
)
def mac_duplicate(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Two NICs with one MAC on the same cluster network break each other (kubemacpool refuses them)."""
    for nic in vm.nics:
        if not nic.mac:
            continue
        owners = ctx.macs.get(normalize_mac(nic.mac), [])
        if len(owners) > 1:
            others = sorted({o.name for o in owners if o is not vm})
            parts = [f"VM {', '.join(others)}"] if others else []
            if sum(1 for o in owners if o is vm) > 1:
                parts.append("another NIC of this VM")
            yield Hit(f"MAC {nic.mac} is also used by {' and '.join(parts)}", subject=nic.mac)
