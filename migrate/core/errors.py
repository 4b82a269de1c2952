"""Errors a user sees as one line: ``vmmove: error: <what> : <problem>``."""


class VmmoveError(Exception):
    """A failure with a message fit for the user; the CLI prints it and exits non-zero.

    Modules raise subclasses (or this) with a message that names the file, VM, disk or
    URI and the problem, never a traceback.
    """

    exit_code = 1


class UsageError(VmmoveError):
    """The command line or an input file asks for something impossible."""

    exit_code = 2


def unreadable(path: object, exc: OSError) -> str:
    """The one wording of an input file (inventory, plan) that cannot be read:
    ``<path>: no such file or directory`` (the OS's reason, lower case)."""
    why = exc.strerror or str(exc)
    return f"{path}: {why[:1].lower()}{why[1:]}"


class SourceError(VmmoveError):
    """A source that cannot be read; ``str()`` names the file or URI and the problem."""


class ConnectError(SourceError):
    """A libvirt host that cannot be reached: ``uri`` (without its password) and
    ``reason``; ``str()`` is ``<uri>: cannot connect: <reason>``."""

    def __init__(self, uri: str, reason: str) -> None:
        super().__init__(f"{uri}: cannot connect: {reason}")
        self.uri, self.reason = uri, reason


def listed(head: str, problems: list[str]) -> str:
    """The one layout of a message with many problems (``plan --check``'s): a head line
    with the count, then one ``  - problem`` line each — never one line joined by
    separators.  ``head`` ends where the count's colon goes."""
    lines = "\n".join(f"  - {p}" for p in problems)
    return f"{head}:\n{lines}" if problems else head


class ProblemsError(VmmoveError):
    """Several problems of one step, each on its own line (:func:`listed`)."""

    def __init__(self, head: str, problems: list[str]) -> None:
        self.head = head
        self.problems = list(problems)
        super().__init__(listed(head, self.problems))
