"""Shared command-line options, spelled as virsh, kubectl and the aws cli spell them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from migrate.core.output import FORMATS

F = TypeVar("F", bound=Callable[..., Any])


def output_format(*formats: str, default: str = "table") -> Callable[[F], F]:
    """``-o/--output table|json|yaml``."""
    return click.option("-o", "--output", "output", type=click.Choice(formats or FORMATS),
                        default=default, show_default=True, help="Output format.")


def connect(default: tuple[str, ...] = ("qemu:///system",)) -> Callable[[F], F]:
    """``-c/--connect URI`` (repeatable), like virsh."""
    return click.option("-c", "--connect", "uris", multiple=True, metavar="URI",
                        help=f"libvirt URI to read (repeatable); default {', '.join(default)} "
                             "when no PATH is given.")


def kube(f: F) -> F:
    """``--kubeconfig``, ``--context``, ``-n/--namespace``, like kubectl."""
    f = click.option("-n", "--namespace", default=None,
                     help="With a PLAN: the namespace of the VMs whose plan entry names "
                          "none, instead of the plan's namespace: (the plan file is not "
                          "changed; default: the plan's). Without a plan: the "
                          "context's namespace unless given.")(f)
    f = click.option("--context", default=None, help="kubeconfig context to use.")(f)
    return click.option("--kubeconfig", type=click.Path(dir_okay=False), default=None,
                        envvar="KUBECONFIG", help="Path to the kubeconfig file (default: "
                        "$KUBECONFIG, then ~/.kube/config).")(f)


def aws(f: F) -> F:
    """``--profile``, ``--endpoint-url``, ``--region``, like the aws cli (env vars apply too)."""
    f = click.option("--region", default=None, help="S3 region (default: profile/environment).")(f)
    f = click.option("--endpoint-url", default=None, metavar="URL",
                     help="S3-compatible endpoint, e.g. http://127.0.0.1:8333 (path-style "
                          "addressing is used).")(f)
    return click.option("--profile", default=None,
                        help="AWS shared-config profile (default: $AWS_PROFILE).")(f)


def wave_vms(help: str) -> Callable[[F], F]:
    """``PLAN [VM]... --wave N`` (required, ``help`` its help): some VMs of one wave."""
    def wrap(f: F) -> F:
        f = click.option("--wave", type=click.IntRange(min=1), required=True, metavar="N",
                         help=help)(f)
        f = click.argument("vms", nargs=-1, metavar="[VM]...")(f)
        return click.argument("plan_file", metavar="PLAN", type=click.Path(dir_okay=False))(f)
    return wrap


def refuse_with_plan(plan: str, names: tuple[str, ...]) -> None:
    """Refuse options the plan decides when they were given on the command line.

    A plan is the one place its work folder, transfer target and conversion settings are
    written down; a flag that silently lost to the plan would mislead, so it is an error
    naming every such flag.
    """
    ctx = click.get_current_context()
    given = [p for p in ctx.command.params
             if p.name in names
             and ctx.get_parameter_source(p.name) == click.core.ParameterSource.COMMANDLINE]
    if given:
        from migrate.core.errors import UsageError

        def flag(p: click.Parameter) -> str:
            name = next((o for o in reversed(p.opts) if o.startswith("--")), p.opts[0])
            secondary = getattr(p, "secondary_opts", [])
            return f"{name}/{secondary[0]}" if secondary else name

        flags = ", ".join(flag(p) for p in given)
        raise UsageError(f"{plan}: {flags}: set by the plan (its workdir, transfer and convert "
                         "keys); edit the plan instead")
