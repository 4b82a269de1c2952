"""``vmmove boot-test PLAN --wave N [VM…]``: boot each staged guest as KubeVirt would."""

from __future__ import annotations

import click

from migrate.cli.options import output_format
from migrate.errors import VmmoveError
from migrate.output import emit

HEADERS = ["VM", "VERDICT", "TIME", "ACCEL", "FIRMWARE", "BUSES", "REASON / EVIDENCE"]


@click.command("boot-test")
@click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))
@click.argument("vms", nargs=-1, metavar="[VM]...")
@click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
              help="The wave whose staged guests are booted (all unless VMs are named).")
@click.option("--timeout", type=click.FloatRange(min=1), default=None, metavar="SECONDS",
              help="How long a guest may take to show a login prompt, the plan's marker "
                   "or its guest agent (default: the plan's bootTest.timeout, 300).")
@click.option("--accel", type=click.Choice(["auto", "kvm", "tcg"]), default=None,
              help="KVM or TCG (default: the plan's bootTest.accel; auto = KVM when "
                   "/dev/kvm is usable).")
@click.option("-c", "--connect", "uri", default="qemu:///system", show_default=True,
              metavar="URI", help="The local libvirtd that runs the test domains.")
@output_format()
def boot_test_cmd(plan_file: str, vms: tuple[str, ...], wave: int, timeout: float | None,
                  accel: str | None, uri: str, output: str) -> None:
    """Boot each staged (and converted) guest from a throwaway overlay in a local libvirt
    domain made from its VirtualMachine spec (q35, firmware, CPU, memory, disk buses, NIC
    models without a network), and judge it from the serial console and guest agent.

    \b
    vmmove boot-test plan.yaml --wave 1
    vmmove boot-test plan.yaml --wave 1 web-01 --timeout 120 --accel tcg

    Neither the source nor the cluster is touched. The verdict goes to the journal;
    `vmmove cutover` refuses a VM whose last boot test failed (unless --skip-boot-test).
    Evidence (console log, BIOS log, screenshot) stays in <workdir>/boot-test/<vm>/.
    Exit status 1 when any guest did not boot.
    """
    from migrate.cutover import select_vms
    from migrate.guest.stage import boot_test_vm
    from migrate.pipeline import plan_lock
    from migrate.plan import load_plan
    from migrate.progress import log

    plan = load_plan(plan_file)
    chosen = select_vms(plan, wave, vms)
    results = []
    with plan_lock(plan), plan.journal() as journal:
        for p in chosen:
            log(f"{p.vm.name}: boot test started")
            result = boot_test_vm(plan, p, journal, timeout=timeout, accel=accel, uri=uri)
            log(f"{p.vm.name}: {result.verdict} in {result.seconds:.1f}s ({result.reason})")
            results.append((p, result))
    data = [{"vm": p.vm.name, "key": p.key, **r.to_data()} for p, r in results]
    rows = [[p.vm.name, r.verdict, f"{r.seconds:.1f}s", r.accel, r.firmware,
             " ".join(f"{k}:{v}" for k, v in r.buses.items()),
             r.reason if r.ok else f"{r.reason} (console: {r.console})"] for p, r in results]
    emit(data, output, HEADERS, rows)
    failed = [p.vm.name for p, r in results if not r.ok]
    if failed:
        raise VmmoveError(f"boot test: {', '.join(failed)} did not boot; see the console logs "
                          f"under {plan.workdir / 'boot-test'}")


commands = [boot_test_cmd]
