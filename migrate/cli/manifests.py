"""``vmmove manifests``: KubeVirt VirtualMachines (and DataVolumes) to review before applying."""

from __future__ import annotations

import sys
import time

import click

from migrate.cli.options import output_format
from migrate.core.errors import UsageError


@click.command("manifests")
@click.argument("inventory", required=False, type=click.Path(dir_okay=False))
@click.option("--out", "out", type=click.Path(file_okay=False), default=None,
              help="Folder to write <namespace>/<vm>.yaml, Secrets and kustomization.yaml files into.")
@click.option("-n", "--namespace", default="default", show_default=True, help="Namespace of an INVENTORY's VirtualMachines. With --plan the plan's namespace: (and its VM entries') is used and -n is ignored.")
@click.option("--vm", "vms", multiple=True, metavar="NAME",
              help="Only this VM (name or UUID; repeatable). Default: every VM of the inventory.")
@click.option("--workdir", type=click.Path(file_okay=False), default=None,
              help="Work folder of convert/upload: its journal says where each disk went.")
@click.option("--http-base", metavar="URL", default=None,
              help="For disks with no transfer record: import from URL/<image file name>.")
@click.option("--blank", "blank", multiple=True, metavar="VM/DISK",
              help="Give this disk an empty volume instead of its data (repeatable), e.g. web/vdb.")
@click.option("--map", "map_file", type=click.Path(dir_okay=False), default=None,
              help="YAML file with 'networks' and 'storage' maps (see docs/manifests.md).")
@click.option("--network", "network_pairs", multiple=True, metavar="SOURCE=TARGET",
              help="Map a source network (network:default, bridge:br0, a port group, *) to "
                   "'pod' or 'multus:NAMESPACE/NAME' (repeatable; over the map file).")
@click.option("--storage-class", default=None, help="StorageClass of every DataVolume (over the map file's default).")
@click.option("--volume-mode", type=click.Choice(["Block", "Filesystem"]), default=None,
              help="volumeMode of every DataVolume (default: the StorageProfile's).")
@click.option("--access-mode", "access_modes", multiple=True,
              type=click.Choice(["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]),
              help="accessModes of every DataVolume (repeatable; default: the StorageProfile's).")
@click.option("--run-strategy", default="Halted", show_default=True,
              type=click.Choice(["Halted", "Always", "Manual", "RerunOnFailure", "Once"]),
              help="spec.runStrategy; Halted leaves starting the VM to the cutover.")
@click.option("--keep-cdroms", is_flag=True, help="Keep CD-ROMs with media (their images need a source too).")
@click.option("--timezone", default=None, metavar="TZ",
              help="Time zone of guests whose clock keeps local time (Windows), e.g. Europe/Berlin. Default UTC.")
@click.option("--preference", default="none", show_default=True, metavar="auto|none|NAME",
              help="VirtualMachineClusterPreference: 'auto' picks one from the guest OS.")
@click.option("--preferences", "preferences_file", type=click.Path(dir_okay=False), default=None,
              help="The cluster's preferences (kubectl get virtualmachineclusterpreferences -o yaml) "
                   "to check names and requirements.")
@click.option("--instancetype", default="none", show_default=True, metavar="auto|none|NAME",
              help="VirtualMachineClusterInstancetype, only on an exact CPU and memory match.")
@click.option("--instancetypes", "instancetypes_file", type=click.Path(dir_okay=False), default=None,
              help="The cluster's instancetypes (kubectl get virtualmachineclusterinstancetypes -o yaml).")
@click.option("--validate-schemas", "schemas", type=click.Path(file_okay=False), default=None, metavar="DIR",
              help="Also validate strictly against the KubeVirt/CDI schemas in DIR (e.g. ../shared/schemas).")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False), default=None, metavar="PLAN",
              help="Take namespace, maps, defaults, per-VM overrides and work folder from this "
                   "plan (vmmove plan); --out defaults to the plan's <workdir>/manifests.")
@click.option("--wave", type=click.IntRange(min=1), default=None, metavar="N",
              help="With --plan: only the VMs of wave N.")
@output_format("table", "yaml", "json", default="table")
def manifests_cmd(inventory: str | None, out: str | None, namespace: str, vms: tuple[str, ...],
                  workdir: str | None, http_base: str | None, blank: tuple[str, ...],
                  map_file: str | None, network_pairs: tuple[str, ...], storage_class: str | None,
                  volume_mode: str | None, access_modes: tuple[str, ...], run_strategy: str,
                  keep_cdroms: bool, timezone: str | None, preference: str,
                  preferences_file: str | None, instancetype: str, instancetypes_file: str | None,
                  schemas: str | None, plan_file: str | None, wave: int | None,
                  output: str) -> None:
    """Write a KubeVirt VirtualMachine per VM, with one DataVolume template per disk.

    \b
    Each DataVolume imports the disk from where `vmmove upload` put it (journal in
    --workdir), from --http-base, or is blank when asked (--blank). Networks must all be
    mapped (--map / --network). VMs are Halted until the cutover starts them.
    With -o yaml|json the single selected VM is printed instead (--out not needed); with
    --plan, every selected VM (--wave, --vm) is printed, and INVENTORY may be left out.
    """
    from manifests.kustomize import render, render_many, write_tree
    from migrate.core.output import error_line, table

    if plan_file:
        from migrate.pipeline.stages import plan_manifest_sets, plan_manifests

        if output != "table":
            _, sets = plan_manifest_sets(plan_file, inventory, wave, vms)
            sys.stdout.write(render_many(sets, output))
            if out:
                write_tree(sets, out)
            return
        written, folder = plan_manifests(plan_file, inventory, wave, out, vms)
        click.echo(table(["NAMESPACE", "OBJECT", "FILE"], written), nl=False)
        click.echo(f"manifests of {plan_file} written to {folder}", err=True)
        return
    if inventory is None:
        raise UsageError("manifests: give an INVENTORY (from vmmove scan), or --plan PLAN")
    if wave is not None:
        raise UsageError("--wave goes with --plan PLAN")
    if output == "table" and not out:
        raise UsageError("manifests: --out DIR is required (or -o yaml|json to print one VM)")
    started = time.perf_counter()
    from migrate.pipeline.manifests import inventory_manifest_sets

    sets, refused, selected = inventory_manifest_sets(
        inventory, vms, namespace=namespace, workdir=workdir, http_base=http_base,
        blank=blank, map_file=map_file, network_pairs=network_pairs,
        storage_class=storage_class, volume_mode=volume_mode, access_modes=access_modes,
        run_strategy=run_strategy, keep_cdroms=keep_cdroms, timezone=timezone,
        preference=preference, preferences_file=preferences_file, instancetype=instancetype,
        instancetypes_file=instancetypes_file, schemas=schemas,
        one=None if output == "table" else output)
    if output != "table":
        sys.stdout.write(render(sets[0].virtual_machine, output))
        if out:
            write_tree(sets, out)
        return
    assert out is not None
    # Like scan: what can be written is written; one error line per refused VM; exit 1.
    rows = write_tree(sets, out) if sets else []
    elapsed = time.perf_counter() - started
    if rows:
        click.echo(table(["NAMESPACE", "OBJECT", "FILE"], rows), nl=False)
    sys.stdout.flush()
    for error in refused:
        click.echo(error_line(error), err=True)
    notes = sum(len(s.notes) for s in sets)
    click.echo(f"{len(sets)} of {selected} VirtualMachine(s) written to {out} in {elapsed:.2f}s"
               + (f", {len(refused)} refused (the errors above)" if refused else "")
               + (f"; {notes} note(s) in the vmmove.io/notes annotations" if notes else ""),
               err=True)
    if refused:
        raise click.exceptions.Exit(1)


commands = [manifests_cmd]
