"""The ``vmmove`` command line.

Every module in this package (other than ``options`` and private ones) defines one or
more click commands in a module-level ``commands`` list; :class:`VmmoveGroup` finds them,
so adding a command is adding a module.  Modules import heavy libraries (kubernetes,
boto3, libvirt) inside their functions so that ``vmmove --help`` stays fast.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from functools import cache
from typing import Any

import click

from migrate import __version__
from migrate.core.output import error_lines
from migrate.core.errors import VmmoveError

_NOT_COMMANDS = {"options", "types"}


def pipeline_order() -> list[str]:
    """Commands in the order a migration uses them: the wave itinerary's stages between
    plan and cutover (``migrate`` runs them all), the boot test (a check of the cutover's
    preflight) before the cutover, then the views; others follow by name."""
    from migrate.pipeline.itinerary import CUTOVER, WAVE

    return ["scan", "assess", "plan", "migrate", *WAVE.names, "boot-test", CUTOVER.name,
            "rollback", "status", "report", "runbook", "clean"]


@cache
def _discover() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for mod in pkgutil.iter_modules(__path__):
        if mod.name.startswith("_") or mod.name in _NOT_COMMANDS:
            continue
        module = importlib.import_module(f"{__name__}.{mod.name}")
        for cmd in getattr(module, "commands", []):
            assert cmd.name not in found, f"two commands named {cmd.name}"
            found[cmd.name] = cmd
    return found


class VmmoveGroup(click.Group):
    """Finds commands by module and turns :class:`VmmoveError` into one error line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        order = {name: i for i, name in enumerate(pipeline_order())}
        return sorted(_discover(), key=lambda name: (order.get(name, len(order)), name))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return _discover().get(cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        from tqdm.contrib.logging import logging_redirect_tqdm

        from migrate.core.progress import LOGGER

        try:
            with logging_redirect_tqdm(loggers=[LOGGER]):  # a log line never tears a bar
                return super().invoke(ctx)
        except VmmoveError as exc:
            for line in error_lines(exc):  # a list of problems: one escaped line each
                click.echo(line, err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("vmmove: interrupted; rerun the same command to resume", err=True)
            ctx.exit(130)
        except BrokenPipeError as exc:
            if stdout_closed():
                raise  # the reader of vmmove's output went away (`| head`): click exits quietly
            # a pipe or socket of vmmove's own (an NBD connection, a child's stdin): click
            # would take it for stdout and exit 1 without a word
            click.echo(f"vmmove: error: a connection or pipe vmmove was using closed "
                       f"unexpectedly ({exc.strerror or exc}); rerun the same command to "
                       "resume", err=True)
            ctx.exit(1)


def stdout_closed() -> bool:
    """True when nobody reads vmmove's standard output any more (the read end of its pipe
    is closed: ``poll`` reports POLLERR on the write end)."""
    import select

    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no real file descriptor (a test runner)
        return False


@click.group(cls=VmmoveGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="vmmove")
@click.option("-v", "--verbose", is_flag=True,
              help="Log the commands run underneath (qemu-img command lines, libvirt calls) "
                   "on stderr; credentials are never logged.")
def main(verbose: bool) -> None:
    """Move libvirt/KVM, VMware and OVF virtual machines into KubeVirt.

    \b
    The pipeline, one command a step:
      scan → assess → plan → convert → upload → manifests → apply → cutover (rollback) → runbook
    Each step reads the previous one's output file and records its progress in a journal,
    so every command can be rerun to resume.
    """
    from migrate.core.progress import set_verbose

    set_verbose(verbose)


def run() -> None:  # console-script entry point
    main(prog_name="vmmove")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run())
