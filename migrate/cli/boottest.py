"""``vmmove boot-test PLAN --wave N [VM…]``: boot each staged guest as KubeVirt would."""

from __future__ import annotations

import click

from migrate.cli.options import output_format, wave_vms
from migrate.core.errors import VmmoveError
from migrate.core.output import emit


@click.command("boot-test")
@wave_vms("The wave whose staged guests are booted (all unless VMs are named).")
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
    from migrate.core.progress import log
    from migrate.pipeline.guest import boot_test_selection
    from migrate.plan import load_plan
    from migrate.views.guest import BOOT_TEST_HEADERS, boot_test_table

    plan = load_plan(plan_file)
    results = boot_test_selection(plan, wave, vms, timeout=timeout, accel=accel, uri=uri, log=log)
    data, rows = boot_test_table(results)
    emit(data, output, BOOT_TEST_HEADERS, rows)
    failed = [p.vm.name for p, r in results if not r.ok]
    if failed:
        raise VmmoveError(f"boot test: {', '.join(failed)} did not boot; see the console logs "
                          f"under {plan.workdir / 'boot-test'}")


commands = [boot_test_cmd]
