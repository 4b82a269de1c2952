"""Rules about the VM as a whole: kind of domain, machine, state, guest OS, CPU and memory."""

from __future__ import annotations

import re
from collections.abc import Iterator

from migrate.assessment.concern import Severity
from migrate.assessment.facts import guest_known, hostonly_initramfs, is_windows
from migrate.assessment.registry import Context, Hit, rule
from migrate.core.model import VM, PowerState

CRITICAL, WARNING, INFO = Severity.CRITICAL, Severity.WARNING, Severity.INFO

GiB = 1024**3
VCPUS_HIGH = 64  # more than a typical worker node can give one VM
MEMORY_HIGH = 256 * GiB

_I440FX_RE = re.compile(r"^(pc|pc-i440fx-.*|pc-[01]\.\d+.*|pc-\d+\.\d+|rhel\d.*)$")
_CONTAINER_HYPERVISORS = {"lxc", "openvz"}
_PV_OS_TYPES = {"xen", "linux", "xenpvh"}


# -- what kind of domain it is ---------------------------------------------------------


@rule(
    "container",
    CRITICAL,
    "Not movable: rebuild the workload as a container image or a VM, then migrate that.",
)
def container(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt runs virtual machines; an LXC/OpenVZ container has no disk image or kernel to boot."""
    if (vm.hypervisor or "").lower() in _CONTAINER_HYPERVISORS or vm.os_type == "exe":
        yield Hit(f"{vm.hypervisor or 'container'} domain (os type {vm.os_type or '?'}) is a container, not a VM")


@rule(
    "xen-pv",
    CRITICAL,
    "Convert the guest to HVM first (install a bootloader and a kernel with virtio drivers, "
    "e.g. with virt-v2v), then rescan.",
)
def xen_pv(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt has full virtualisation only; a Xen PV guest boots a PV kernel with no firmware."""
    if vm.os_type in _PV_OS_TYPES:
        yield Hit(f"Xen paravirtualised guest (os type {vm.os_type})")


@rule(
    "xen-hvm",
    WARNING,
    "Make sure the guest kernel/initramfs has virtio drivers (Windows: install virtio-win) and "
    "remove Xen PV drivers or tools that expect a Xen host.",
)
def xen_hvm(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A Xen HVM guest often boots through Xen PV drivers, which KVM does not provide."""
    if (vm.hypervisor or "").lower() == "xen" and vm.os_type not in _PV_OS_TYPES:
        yield Hit("Xen HVM guest: its Xen PV disk and network drivers will find no Xen host")


@rule(
    "arch-unsupported",
    CRITICAL,
    "Not movable to an x86_64 KubeVirt cluster; rebuild the workload for x86_64.",
)
def arch_unsupported(vm: VM, ctx: Context) -> Iterator[Hit]:
    """vmmove targets x86_64 KubeVirt nodes; a guest for another architecture cannot boot there."""
    arch = (vm.arch or "").lower()
    if arch and arch not in ("x86_64", "amd64", "i686", "i386"):
        yield Hit(f"architecture {vm.arch} is not x86_64")


@rule(
    "arch-i686",
    INFO,
    "Nothing to change in the guest; x86_64 CPUs run 32-bit guests as they are.",
)
def arch_i686(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt only runs x86_64 machines; a 32-bit guest boots on one unchanged."""
    if (vm.arch or "").lower() in ("i686", "i386"):
        yield Hit(f"32-bit ({vm.arch}) guest runs on an x86_64 machine")


@rule(
    "machine-i440fx",
    WARNING,
    "Test-boot the guest on q35 before cutover; Windows may re-detect devices and ask for "
    "re-activation, and guests older than ~2010 may not boot on q35.",
)
def machine_i440fx(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt accepts only q35 machine types, so an i440fx (pc) chipset changes under the guest."""
    machine = (vm.machine or "").lower()
    if machine and "q35" not in machine and _I440FX_RE.match(machine):
        yield Hit(f"machine type {vm.machine} (i440fx) becomes q35")


@rule("machine-other", INFO, "Test-boot the guest on q35 before cutover.")
def machine_other(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt accepts only q35 machine types; other chipsets (VMware hardware, microvm) change."""
    machine = (vm.machine or "").lower()
    if machine and "q35" not in machine and not _I440FX_RE.match(machine):
        yield Hit(f"machine type {vm.machine} becomes q35")


# -- power state ---------------------------------------------------------------------------


@rule(
    "vm-running",
    WARNING,
    "Shut the VM down before converting, or use a staged cutover (copy while running, then a "
    "short final sync with the VM off).",
)
def vm_running(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Disks of a running VM change while they are copied; a consistent copy needs it off."""
    if vm.power_state in (PowerState.RUNNING, PowerState.PAUSED, PowerState.SHUTDOWN):
        yield Hit(f"VM is {vm.power_state.value}")


@rule(
    "vm-suspended",
    WARNING,
    "Resume the VM and shut it down cleanly; the saved memory state cannot be carried over.",
)
def vm_suspended(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A suspended VM's memory lives in a host-side save file that KubeVirt cannot restore."""
    if vm.power_state is PowerState.SUSPENDED:
        yield Hit("VM is suspended: its memory state is saved on the source host")


@rule(
    "vm-crashed",
    WARNING,
    "Find out why it crashed and check its file systems before moving it.",
)
def vm_crashed(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A crashed guest may have unclean file systems, which the copy would carry along."""
    if vm.power_state is PowerState.CRASHED:
        yield Hit("VM is crashed")


# -- guest OS ---------------------------------------------------------------------------------


@rule(
    "guest-os-unknown",
    WARNING,
    "Find out what the guest runs and pick a KubeVirt preference (e.g. rhel.9, windows.2k22) "
    "and disk/NIC models the guest has drivers for; record them in the VM's plan entry "
    "(preference, disks: {vda: {bus: sata}}, nics: {nic0: {model: e1000e}}).",
)
def guest_os_unknown(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Disk bus, NIC model, Hyper-V features and preference all depend on what the guest runs."""
    if not guest_known(vm):
        yield Hit("the source does not say which guest OS it runs")


@rule(
    "guest-windows",
    INFO,
    "Install the virtio-win drivers (viostor/vioscsi, netkvm) in the guest before cutover if "
    "disks or NICs move to virtio; otherwise keep sata disks and an e1000e NIC.",
)
def guest_windows(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Windows needs Hyper-V enlightenments (added) and virtio drivers before buses change to virtio."""
    if is_windows(vm):
        os = vm.guest_os
        name = (os.name or os.id) if os else None
        yield Hit(f"Windows guest ({name or 'Windows'}): Hyper-V enlightenments are added")


@rule(
    "initramfs-hostonly",
    WARNING,
    "Before cutover, in the guest: `dracut -f --regenerate-all --add-drivers 'virtio_blk "
    "virtio_scsi ahci'` (every installed kernel; RHEL 5: mkinitrd --with=virtio_blk), then shut "
    "it down; or convert the guest with virt-v2v-in-place.",
)
def initramfs_hostonly(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A RHEL-family guest from VMware/Hyper-V/Xen boots a host-only initramfs without virtio/AHCI."""
    source = hostonly_initramfs(vm)
    if source:
        os = vm.guest_os
        name = (os.name or os.id) if os else None
        yield Hit(f"{name or 'RHEL-family'} guest from {source}: its host-only dracut initramfs has "
                  f"only {source}'s storage drivers, not virtio_blk/virtio_scsi/ahci; without a "
                  "rebuild it stops at 'dracut-initqueue timeout' on KubeVirt")


@rule(
    "clock-localtime",
    WARNING,
    "Set defaults.timezone in the plan to the source host's time zone (e.g. Europe/Berlin; it "
    "becomes spec.domain.clock.timezone), or make the guest keep its hardware clock in UTC "
    "(Linux: timedatectl set-local-rtc 0).",
)
def clock_localtime(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt's guest clock is UTC unless a timezone is set; a localtime RTC would be off by hours."""
    if vm.clock_offset == "localtime":
        kind = "Windows guest" if is_windows(vm) else "guest"
        yield Hit(f"{kind} keeps its hardware clock in the source host's local time")


@rule(
    "clock-variable",
    INFO,
    "Nothing to do: the guest resynchronises its clock (NTP) after the move.",
)
def clock_variable(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt offers utc or a timezone; a libvirt 'variable' clock adjustment is not kept."""
    if vm.clock_offset == "variable":
        yield Hit("variable clock offset becomes UTC")


# -- CPU, memory, host tuning ------------------------------------------------------------


@rule(
    "numa",
    WARNING,
    "Size the VM to fit one node; for NUMA-sensitive workloads use dedicatedCpuPlacement with "
    "hugepages and guestMappingPassthrough on nodes that support it.",
)
def numa(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A libvirt guest NUMA layout is bound to the source host; KubeVirt does not carry it."""
    if vm.tuning.numa_nodes > 0:
        yield Hit(f"{vm.tuning.numa_nodes} guest NUMA node(s) and their host binding are dropped")


@rule(
    "cpu-pinning",
    WARNING,
    "Use spec.domain.cpu.dedicatedCpuPlacement on nodes with the CPU manager if the workload "
    "needs dedicated CPUs.",
)
def cpu_pinning(vm: VM, ctx: Context) -> Iterator[Hit]:
    """vCPU pinning names host CPUs of the source; KubeVirt places VMs on any node's CPUs."""
    if vm.tuning.cpu_pinning:
        yield Hit("vCPU pinning to host CPUs is dropped")


@rule(
    "hugepages",
    WARNING,
    "Set spec.domain.memory.hugepages.pageSize if the nodes provide hugepages and the workload "
    "needs them.",
)
def hugepages(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Hugepage backing needs hugepages reserved on the node; vmmove does not assume that."""
    if vm.tuning.hugepages:
        yield Hit("hugepage memory backing is dropped")


@rule(
    "hotplug-memory",
    INFO,
    "Set spec.domain.memory.maxGuest by hand if memory hot-plug is still wanted.",
)
def hotplug_memory(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt's memory hot-plug works differently; the source's maximum is not carried over."""
    if vm.max_memory and vm.max_memory > vm.memory:
        yield Hit(
            f"maximum memory {vm.max_memory // 2**20} MiB (hot-plug) is dropped; the VM gets "
            f"{vm.memory // 2**20} MiB"
        )


@rule(
    "hotplug-vcpus",
    INFO,
    "Set spec.domain.cpu.maxSockets by hand if vCPU hot-plug is still wanted.",
)
def hotplug_vcpus(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt hot-plugs whole sockets; the source's vCPU maximum is not carried over."""
    if vm.max_vcpus and vm.max_vcpus > vm.vcpus:
        yield Hit(f"maximum of {vm.max_vcpus} vCPUs (hot-plug) is dropped; the VM gets {vm.vcpus}")


@rule(
    "memory-unknown",
    WARNING,
    "Set the memory size in the VM's plan entry (memory: 4Gi); the VM cannot be scheduled without one.",
)
def memory_unknown(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A KubeVirt VM needs a memory size to be scheduled on a node."""
    if vm.memory <= 0:
        yield Hit("the source does not say how much memory the VM has")


@rule(
    "memory-high",
    WARNING,
    "Check that a worker node can hold the VM (memory plus overhead), or shrink it.",
)
def memory_high(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A KubeVirt VM must fit on one worker node, memory overhead included."""
    if vm.memory > MEMORY_HIGH:
        yield Hit(f"{vm.memory / GiB:.0f} GiB of memory is more than {MEMORY_HIGH // GiB} GiB")


@rule(
    "vcpus-high",
    WARNING,
    "Check that a worker node has this many CPUs to give, or reduce the vCPU count.",
)
def vcpus_high(vm: VM, ctx: Context) -> Iterator[Hit]:
    """A KubeVirt VM must fit on one worker node's CPUs."""
    if vm.vcpus > VCPUS_HIGH:
        yield Hit(f"{vm.vcpus} vCPUs is more than {VCPUS_HIGH}")


@rule(
    "snapshots",
    WARNING,
    "Delete or merge the snapshots you no longer need before converting; keep the source until "
    "the move is verified if you need to go back to one.",
)
def snapshots(vm: VM, ctx: Context) -> Iterator[Hit]:
    """Only a disk's current state is converted; snapshots stay behind on the source."""
    if vm.snapshots > 0:
        yield Hit(f"{vm.snapshots} snapshot(s) are not carried over")


# -- firmware -------------------------------------------------------------------------------


@rule("secure-boot", INFO, "Nothing to do: SMM is enabled with secure boot.")
def secure_boot(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt's secure boot needs features.smm, which vmmove adds; keys in NVRAM are reset."""
    if vm.firmware.secure_boot:
        yield Hit("UEFI secure boot is kept (SMM enabled); custom keys in NVRAM are not carried")


@rule(
    "tpm",
    WARNING,
    "Before cutover, suspend BitLocker/LUKS TPM sealing or have the recovery keys at hand, and "
    "re-enrol TPM-bound secrets after the move.",
)
def tpm(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt gives the VM a fresh vTPM; keys sealed in the old TPM (BitLocker) are lost."""
    if vm.firmware.tpm_version or vm.firmware.tpm_model:
        version = f" {vm.firmware.tpm_version}" if vm.firmware.tpm_version else ""
        model = vm.firmware.tpm_model or "tpm"
        yield Hit(f"TPM{version} ({model}): its contents are not carried", subject="tpm")


@rule(
    "tpm-version",
    WARNING,
    "Check that the guest supports TPM 2.0 (older Windows and Linux with TPM 1.2 only do not).",
)
def tpm_version(vm: VM, ctx: Context) -> Iterator[Hit]:
    """KubeVirt emulates TPM 2.0 only; a TPM 1.2 guest sees a different device."""
    if vm.firmware.tpm_version and vm.firmware.tpm_version != "2.0":
        yield Hit(f"TPM {vm.firmware.tpm_version} becomes TPM 2.0", subject="tpm")
