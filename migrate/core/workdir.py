"""Conventions shared by convert, upload and manifests: the work folder and its journal.

A *work folder* (``vmmove convert --to DIR``, ``--workdir DIR`` elsewhere) holds the
converted images and one journal, ``DIR/vmmove-journal.sqlite``.  Journal items for disks
are ``<vm key>/<disk target>`` so that every step (convert, upload, manifests, cutover)
talks about the same disk the same way.

Journal kinds and the ``data`` each step records:

* ``convert``: ``output`` (absolute path), ``format``, ``source``, ``virtual_size``,
  ``allocated`` (bytes of the output), ``verified`` (qemu-img compare passed), ``size``
  (bytes of the output file), ``inode`` (``[st_dev, st_ino]`` of the output vmmove renamed
  into place: the only file it will replace), ``identity`` (:func:`vm_identity`); the
  step's ``checksum`` is ``FORM:HEX`` of the output file (:mod:`migrate.core.digest`:
  ``xxh3-1m:<hex>``; ``sha256:<hex>`` in journals written before issue 17).
* ``upload``: ``backend`` (``s3`` | ``upload`` | ``http``), ``url`` (for s3/http: the
  path-style URL CDI imports from), ``secret`` (name of the Secret manifest, s3 only),
  ``secret_file`` (where that Secret manifest was written), ``dv`` and ``namespace``
  (upload proxy: the DataVolume already filled), ``size``; ``checksum`` as above.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from migrate.core.model import VM, Disk, Inventory
from migrate.core.naming import assign_names

JOURNAL_NAME = "vmmove-journal.sqlite"


def journal_path(workdir: str | os.PathLike[str]) -> Path:
    return Path(workdir) / JOURNAL_NAME


def disk_item(vm: VM, disk: Disk) -> str:
    """The journal item of one disk: ``<vm key>/<disk target>``."""
    return f"{vm.key}/{disk.target}"


def vm_identity(vm: VM) -> str:
    """Who a VM is across inventories: ``<uuid>|<source kind>|<location>[#member]``.

    Two inventories (two hosts, two exports) may hold VMs of the same name, or even the
    same UUID (a cloned VM); the UUID and where the VM was read from together tell them
    apart.  Recorded in convert steps as ``identity``.
    """
    src = vm.source
    member = f"#{src.member}" if src.member else ""
    kind = getattr(src.kind, "value", src.kind)
    return f"{vm.uuid or vm.name}|{kind}|{src.location}{member}"


def target_names(inventory: Inventory) -> dict[str, str]:
    """Kubernetes names for every VM of an inventory, keyed by :attr:`VM.key`."""
    return assign_names((vm.key, vm.name) for vm in inventory.vms)


def image_basename(vm_target_name: str, disk: Disk) -> str:
    """File name stem of a converted disk: ``<vm name>-<disk target>`` (``web-vda``)."""
    target = re.sub(r"[^a-z0-9]+", "-", disk.target.lower()).strip("-") or "disk"
    return f"{vm_target_name}-{target}"
