"""``vmmove scan``: the inventory every later step reads."""

from __future__ import annotations

import sys

import click

from migrate.cli.options import connect, output_format
from migrate.core.model import Inventory
from migrate.core.output import emit, error_line, escape

def render(inv: Inventory, fmt: str) -> None:
    """The inventory as a table (none with no VM: the error lines say why) or data."""
    from migrate.core.serialize import to_data
    from migrate.views.inventory import TABLE_HEADERS, inventory_table

    if fmt == "table":
        if not inv.vms:
            if not inv.errors:  # the error lines below say why otherwise
                click.echo("No VMs found.", err=True)
            return
        rows, legend = inventory_table(inv)
        emit(None, "table", TABLE_HEADERS, rows)
        if len(legend) > 1:  # several hosts: say which is which (one is the -c given)
            for label, location in legend:
                click.echo(escape(f"{label}: {location}"), err=True)
    else:
        emit(to_data(inv), fmt)


@click.command("scan")
@click.argument("paths", nargs=-1, metavar="[PATH]...", type=click.Path())
@connect()
@output_format()
@click.option(
    "--output-file",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    metavar="FILE",
    help="Also write the full inventory here (JSON when FILE ends in .json, else YAML); "
    "this file is the input of assess, plan, convert and manifests.",
)
@click.option(
    "-j",
    "--jobs",
    type=click.IntRange(1, 64),
    default=None,
    metavar="N",
    help="Sources (URIs, files) read at once, and qemu-img probes per host [default: 8].",
)
@click.option(
    "--connect-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="Give up on a libvirt host that has not answered after this long.",
)
@click.option(
    "--ovf-configuration",
    default=None,
    metavar="NAME",
    help="Read OVF/OVA descriptors with this DeploymentOptionSection configuration instead "
    "of the one marked default; a descriptor that offers no such configuration is an error.",
)
@click.option(
    "--pve-storage",
    "pve_storage",
    multiple=True,
    metavar="ID=PATH",
    help="Where a Proxmox VE storage's volumes are on this machine, for <vmid>.conf files "
    "(repeat: --pve-storage local-lvm=/dev/pve --pve-storage local=/var/lib/vz).",
)
@click.pass_context
def scan_cmd(ctx: click.Context, paths: tuple[str, ...], uris: tuple[str, ...], output: str,
             output_file: str | None, jobs: int | None, connect_timeout: float,
             ovf_configuration: str | None, pve_storage: tuple[str, ...]) -> None:
    """Inventory VMs from libvirt hosts and offline descriptors.

    \b
    PATH is a libvirt domain XML (.xml), an OVF (.ovf), an OVA (.ova), a VMware .vmx or
    a Proxmox VE qemu-server/<vmid>.conf (its disks found through --pve-storage), or a
    folder searched recursively for them. With neither PATH nor -c, the local
    libvirt (qemu:///system) is read, like virsh.

    \b
    Examples:
      vmmove scan                                    # qemu:///system
      vmmove scan -c qemu+ssh://root@kvm1/system -c qemu+ssh://root@kvm2/system
      vmmove scan -c "test://$PWD/fixtures/libvirt/node.xml"
      vmmove scan exports/ vm.ova -o yaml --output-file inventory.yaml

    Problems (unreachable host, bad file, missing disk image) are printed on stderr, one
    line each; the rest is still scanned and the exit status is 1.
    """
    from migrate.core.errors import UsageError
    from migrate.core.serialize import save_inventory
    from migrate.core.errors import SourceError
    from migrate.clients.libvirt import check_uri
    from migrate.sources.pve import parse_storage_map
    from migrate.views.bars import CountBar
    from migrate.sources.scan import scan

    try:
        storage = parse_storage_map(pve_storage)
    except SourceError as exc:
        raise UsageError(str(exc)) from None
    uri_list = list(uris) or ([] if paths else ["qemu:///system"])
    for uri in uri_list:
        check_uri(uri)  # a mistyped URI: one line, before anything is scanned
    inv = scan(uri_list, list(paths), jobs=jobs, timeout=connect_timeout, pve_storage=storage,
               ovf_configuration=ovf_configuration, progress=CountBar("scan", "source"))
    if output_file:
        save_inventory(inv, output_file)
    render(inv, output)
    sys.stdout.flush()
    for err in inv.errors:
        click.echo(error_line(err), err=True)
    if inv.errors:
        ctx.exit(1)


commands = [scan_cmd]
