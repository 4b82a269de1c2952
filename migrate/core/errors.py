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


class SourceError(VmmoveError):
    """A source that cannot be read; ``str()`` names the file or URI and the problem."""
