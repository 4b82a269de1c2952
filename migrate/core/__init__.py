"""The core: model, typed journal records, the journal, errors, the work folder, progress.

Everything else depends on this package; it depends on nothing of vmmove's
(docs/architecture.md).
"""
