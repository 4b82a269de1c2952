"""Transfer backends: put converted images where CDI fills PVCs from.

* :mod:`converters.transfer.base` — the interface (:class:`Backend`, :class:`TransferItem`,
  :class:`TransferResult`, progress subscribers) and the journalled runner;
* :mod:`converters.transfer.s3` — S3 / S3-compatible object storage, resumable multipart;
* :mod:`converters.transfer.uploadproxy` — CDI's upload proxy (``virtctl image-upload``).

Each finished transfer is one ``upload`` journal step (see :mod:`migrate.core.workdir`), which
``vmmove manifests`` turns into the DataVolume source.
"""

from converters.transfer.base import (
    FAILED,
    RESUMED,
    SKIPPED,
    UPLOADED,
    Backend,
    Subscriber,
    Subscribers,
    TransferError,
    TransferItem,
    TransferResult,
    run_transfers,
    transfer_one,
)

__all__ = [
    "FAILED", "RESUMED", "SKIPPED", "UPLOADED", "Backend", "Subscriber", "Subscribers",
    "TransferError", "TransferItem", "TransferResult", "run_transfers", "transfer_one",
]
