"""Sources of VM descriptions: live libvirt connections and offline files.

Each reader turns one source into VMs or raises :class:`SourceError` with a one-line
message; :func:`migrate.sources.scan.scan` runs them all and collects the errors so that
one bad file never stops a scan.
"""

from migrate.errors import VmmoveError


class SourceError(VmmoveError):
    """A source that cannot be read; ``str()`` names the file or URI and the problem."""
