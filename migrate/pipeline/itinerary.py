"""The two itineraries, each declared once, as data (as Forklift declares its cold and
warm itineraries): the ordered phases a wave is staged through, and the ordered phases
one VM is cut over through.

Everything that needs the order reads it from here: the wave runner
(:mod:`migrate.pipeline.wave`) and its resume point, the cutover state machine
(:mod:`migrate.pipeline.cutover`), ``vmmove status``, the dry runs, and the runbook, which
renders its numbered steps from :data:`CUTOVER`'s ``text``.  A phase's ``name`` is also
its journal item's last part (``stage``/``wave-<N>/<name>``, ``cutover``/``<vm>/<name>``),
so renaming one changes the journal on disk: add phases, do not rename them.

Where a new stage goes: a new :class:`Phase` here, its function in the runner that owns
the itinerary (``WAVE_RUNNERS`` in :mod:`migrate.pipeline.stages`, the step methods of
:class:`migrate.pipeline.cutover.Cutover`), and its step library below the pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Phase:
    """One phase of an itinerary.

    ``name``: its journal name; ``title``: a few words (tables, runbook); ``text``: what
    it does and how to check it by hand (runbook; ``{plan_ref}`` is replaced by the
    plan's path); ``source_stopped``: the source VM is down once this phase has started
    (cutover only: the next action then says so); ``checks``: the named checks the phase
    makes, in order, every one run and every problem reported at once (the cutover's
    preflight; their functions are in the phase's runner).
    """

    name: str
    title: str
    text: str = ""
    source_stopped: bool = False
    checks: tuple[str, ...] = ()


@dataclass(frozen=True)
class Itinerary:
    """An ordered list of phases with a name."""

    name: str
    phases: tuple[Phase, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.phases)

    def phase(self, name: str) -> Phase:
        for p in self.phases:
            if p.name == name:
                return p
        raise KeyError(f"{self.name} itinerary has no phase {name!r}")

    def after(self, name: str) -> tuple[Phase, ...]:
        """The phases after ``name``."""
        i = self.names.index(name)
        return self.phases[i + 1:]


#: A wave staged by ``vmmove migrate PLAN --wave N --stage``.
WAVE = Itinerary("wave", (
    Phase("convert", "convert the disks",
          "every disk of the wave's VMs into the plan's work folder (qcow2 or raw); with "
          "an S3 target each disk is sent while it is written (the upload phase then "
          "finds it there)"),
    Phase("inspect", "inspect the guests",
          "each staged image read read-only with libguestfs: OS, drivers, agents, network "
          "(docs/guest-readiness.md); skipped without libguestfs-tools"),
    Phase("guest", "convert the guests",
          "virt-v2v on the staged copy of the guests that need it (plan convert.guest: "
          "auto | never | always); never on the source"),
    Phase("upload", "transfer the images",
          "the converted images to the plan's transfer target (S3 or the upload proxy)"),
    Phase("manifests", "write the manifests",
          "VirtualMachines with DataVolume templates, and Secrets, under the work folder"),
    Phase("apply", "apply and import",
          "server-side apply of the objects, then the DataVolume imports watched"),
))

#: One VM cut over by ``vmmove cutover PLAN --wave N``.
CUTOVER = Itinerary("cutover", (
    Phase("preflight", "Preflight",
          "no critical concern, the last boot test (if any) passed, VirtualMachine applied, "
          "every disk imported, source reachable. Nothing is changed.",
          checks=("concerns", "boot-test", "applied", "imported", "target", "source")),
    Phase("stop", "Stop the source",
          "ACPI shutdown, waiting `--shutdown-timeout` (default 300 s); only with `--force` "
          "is it then powered off. The domain stays defined, its disks untouched."),
    Phase("sync", "Final sync",
          "`full`: the staged copy was read while the VM ran, so every disk is converted "
          "again from the stopped source, sent again and re-imported (the DataVolume is "
          "recreated). `verify`: the staged copy was read shut off; the stopped source is "
          "compared with it (`qemu-img compare`) and its checksum checked; only a disk that "
          "changed is sent again.", source_stopped=True),
    Phase("start", "Start the target", "`runStrategy: Always`.", source_stopped=True),
    Phase("verify", "Verify",
          "the VirtualMachineInstance reaches Running (and its guest agent connects when "
          "the source had one; `--verify-command CMD`: and CMD exits 0).",
          source_stopped=True),
    Phase("done", "Done",
          "the downtime (step 2 start to step 5 end) is in the journal and in "
          "`vmmove report {plan_ref}`.", source_stopped=True),
))

#: One *warm* VM cut over (plan ``warm: true``, docs/warm-migration.md): its disks were
#: copied while it ran by precopy rounds (:data:`PRECOPY`, ``vmmove sync``), so the same
#: phases (same journal names) move only the final delta while the source is down.
WARM_CUTOVER = Itinerary("warm cutover", tuple(
    replace(phase, text=text, checks=phase.checks + (("warm",) if phase.checks else ()))
    if text else phase
    for phase, text in zip(CUTOVER.phases, (
        "as the cold preflight, and a precopy round no older than `warm.maxRoundAge` with "
        "no full round pending. Nothing is changed.",
        None,
        "the final delta: what changed since the last precopy round (the checkpoint's dirty "
        "bitmap for qcow2 disks, changed block hashes for the others) is written into each "
        "volume, then the guest-visible checksum of every source disk is compared with its "
        "volume; a mismatch stops the cutover before the target starts.",
        None, None,
        "the downtime, beside the full copy it saved, is in the journal and in "
        "`vmmove report {plan_ref}`; the checkpoints vmmove made on the host are removed.",
    ))))


#: One precopy round of a warm VM (``vmmove sync PLAN --wave N``, repeated with
#: ``--every``): the source keeps running throughout.
PRECOPY = Itinerary("precopy", (
    Phase("round", "Precopy round",
          "the first round copies each disk in full; later rounds copy only what changed "
          "since the previous round (a new `vmmove-` checkpoint each round, or block "
          "hashes); each round is journalled with its changed bytes and duration."),
))


#: One warm VM of an *offline* source (a VMX folder with flat VMDKs, an OVF/OVA export, a
#: domain XML file): there is no domain vmmove can stop or start.  The operator powers the
#: VM off at its platform (vSphere, Workstation, ...) and says so with
#: ``--source-powered-off``, which the journal records; the export must show no VMware
#: lock file.  The same phases (same journal names); the final delta re-reads the export.
OFFLINE_WARM_CUTOVER = Itinerary("offline warm cutover", tuple(
    replace(phase, text=text, checks=checks if checks is not None else phase.checks)
    if text else phase
    for phase, text, checks in zip(WARM_CUTOVER.phases, (
        "as the warm preflight, but the source is an export, not a domain: its descriptor "
        "and disks are readable inside the export, no VMware lock file (`*.lck`) says the VM "
        "still runs, and `--source-powered-off` confirms the operator powered it off at its "
        "platform. Nothing is changed.",
        "nothing vmmove can stop: the operator powered the VM off at its platform; the "
        "confirmation (`--source-powered-off`) and its time are journalled. A VMware lock "
        "file appearing in the export later stops a resumed cutover.",
        "the final delta: every disk of the export re-read whole and hashed per MiB; only "
        "the 64 KiB pieces whose content changed since the last precopy round are written; "
        "the source's guest-visible checksum comes from the same pass and is compared with "
        "the volume's; a mismatch stops the cutover before the target starts.",
        None, None, None,
    ), (
        ("concerns", "boot-test", "applied", "imported", "target", "export", "powered-off",
         "warm"),
        None, None, None, None, None,
    ))))


def cutover_itinerary(warm: bool, offline: bool = False) -> Itinerary:
    """The cutover itinerary of a VM: :data:`WARM_CUTOVER` for a warm one
    (:data:`OFFLINE_WARM_CUTOVER` when its source is an offline export), else
    :data:`CUTOVER`."""
    if warm:
        return OFFLINE_WARM_CUTOVER if offline else WARM_CUTOVER
    return CUTOVER


#: The stage names of :data:`WAVE`, in order (journal items ``wave-<N>/<stage>``).
STAGES = WAVE.names
#: The step names of :data:`CUTOVER`, in order (journal items ``<vm key>/<step>``).
STEPS = CUTOVER.names
