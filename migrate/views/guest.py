"""Tables of the guest-readiness commands (docs/guest-readiness.md): ``vmmove inspect`` and
``vmmove boot-test``, as ``-o json|yaml`` data and as table rows."""

from __future__ import annotations

from typing import Any

from migrate.core.serialize import to_data

INSPECT_HEADERS = ["VM", "OS", "BOOT", "DRIVERS MISSING", "AGENTS", "STATIC IP", "NOTE"]
BOOT_TEST_HEADERS = ["VM", "VERDICT", "TIME", "ACCEL", "FIRMWARE", "BUSES",
                     "REASON / EVIDENCE"]


def inspect_table(results: list[tuple[Any, Any]]) -> tuple[list[dict[str, Any]], list[list[Any]]]:
    """(data, rows) of ``(PlannedVM, Inspection)`` pairs: one row per VM with its OS, boot
    loader (``efi`` when it needs EFI), the drivers missing, agents and static addresses."""
    data = [{"vm": p.vm.name, "key": p.key, "inspection": to_data(r)} for p, r in results]
    rows = []
    for p, r in results:
        missing = sorted(k for k, v in r.drivers.items() if v is False)
        static = [f"{n.interface}={','.join(n.addresses)}" for n in r.network
                  if n.method == "static" and n.addresses]
        os_name = r.product_name or r.distro or "-"
        boot = (r.bootloader or "-") + (" efi" if r.efi else "")
        rows.append([p.vm.name, os_name, boot, ", ".join(missing) or "-",
                     ", ".join(r.agents) or "-", " ".join(static) or "-", r.error or ""])
    return data, rows


def boot_test_table(results: list[tuple[Any, Any]]) -> tuple[list[dict[str, Any]],
                                                              list[list[Any]]]:
    """(data, rows) of ``(PlannedVM, BootResult)`` pairs: the verdict, its time, the
    accelerator, firmware and disk buses, and the reason (with the console log when the
    guest did not boot)."""
    data = [{"vm": p.vm.name, "key": p.key, **r.to_data()} for p, r in results]
    rows = [[p.vm.name, r.verdict, f"{r.seconds:.1f}s", r.accel, r.firmware,
             " ".join(f"{k}:{v}" for k, v in r.buses.items()),
             r.reason if r.ok else f"{r.reason} (console: {r.console})"] for p, r in results]
    return data, rows
