"""Lossless conversion of the model to plain data and back, and inventory files.

``to_data`` and ``from_data`` walk the dataclass type hints, so adding a field to the
model needs no change here.  Files are written atomically: a temporary name in the same
folder, fsynced, then renamed, so a crash never leaves half an inventory behind.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from enum import Enum, StrEnum
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from migrate.core.errors import VmmoveError, unreadable
from migrate.core.model import Inventory

T = TypeVar("T")


class InventoryError(VmmoveError):
    """An inventory file that cannot be read; the message names the file and the problem."""


class UnreadableInventory(InventoryError):
    """An inventory file that is missing or unreadable: exit 2 like a missing plan
    (a usage error: the path given is wrong), worded by :func:`unreadable`."""

    exit_code = 2


def to_data(obj: Any) -> Any:
    """A dataclass tree as dicts, lists and scalars (enums by value)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_data(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, dict):
        return {str(k): to_data(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_data(v) for v in obj]
    return obj


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_data(cls: type[T], data: Any, where: str = "") -> T:
    """Rebuild ``cls`` from :func:`to_data` output; unknown keys are an error naming the path."""
    return _convert(cls, data, where or cls.__name__)


def _convert(tp: Any, data: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return _convert(inner[0], data, where)
        raise InventoryError(f"{where}: unsupported union {tp}")
    if origin is list:
        if not isinstance(data, list):
            raise InventoryError(f"{where}: expected a list, got {type(data).__name__}")
        (item,) = typing.get_args(tp)
        return [_convert(item, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is dict:
        if not isinstance(data, dict):
            raise InventoryError(f"{where}: expected a mapping, got {type(data).__name__}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(vt, v, f"{where}.{k}") for k, v in data.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise InventoryError(f"{where}: expected a mapping, got {type(data).__name__}")
        hints = _hints(tp)
        names = {f.name for f in dataclasses.fields(tp) if f.init}
        unknown = sorted(set(data) - names)
        if unknown:
            raise InventoryError(f"{where}: unknown field(s) {', '.join(unknown)}")
        kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return tp(**kwargs)
        except TypeError as exc:  # a required field is missing
            raise InventoryError(f"{where}: {exc}") from None
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(data)
        except ValueError:
            allowed = ", ".join(m.value for m in tp)
            raise InventoryError(f"{where}: {data!r} is not one of {allowed}") from None
    if tp is Any:
        return data
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if isinstance(tp, type) and not isinstance(data, tp):
        raise InventoryError(f"{where}: expected {tp.__name__}, got {type(data).__name__}")
    return data


# Enums of strings (journal kinds and statuses) are written as their plain value.
yaml.SafeDumper.add_multi_representer(StrEnum, lambda d, v: d.represent_str(str(v)))


def dumps(data: Any, fmt: str) -> str:
    """Plain data as ``json`` or ``yaml`` text."""
    if fmt == "json":
        return json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    if fmt == "yaml":
        return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)
    raise ValueError(f"unknown format {fmt!r}")


def atomic_write(path: str | os.PathLike[str], text: str | bytes, *,
                 private: bool = False) -> None:
    """Write a file under a temporary name beside it, fsync, then rename over ``path``.

    Mode: 0600 when ``private`` (credentials), else the umask's (a shared output), never
    world-writable (:mod:`migrate.core.files`).  Missing parent folders are created.  A failed
    write (full disk…) raises :class:`migrate.core.files.WriteError` naming ``path`` and leaves
    nothing behind: ``path`` is the old file or absent, the temporary name is removed.
    """
    from migrate.core.files import PRIVATE_FILE, make_dirs, shared_mode, write_failure

    target = Path(path)
    make_dirs(target.parent)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), PRIVATE_FILE if private else shared_mode())
            fh.write(text.encode() if isinstance(text, str) else text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise write_failure(target, exc) from None
    except BaseException:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        raise


def format_for(path: str | os.PathLike[str]) -> str:
    """``json`` for ``.json`` files, ``yaml`` otherwise."""
    return "json" if str(path).lower().endswith(".json") else "yaml"


def save_inventory(inv: Inventory, path: str | os.PathLike[str]) -> None:
    atomic_write(path, dumps(to_data(inv), format_for(path)))


def _parse(text: str) -> Any:
    """JSON or YAML text as data.

    JSON goes to the json module (pure-Python YAML takes ~30 s for a 10 MB inventory).
    YAML, and JSON that json refuses, goes to PyYAML (libyaml when present), which
    produces the error message.
    """
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError:
            pass
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 (safe loader)


def load_inventory(path: str | os.PathLike[str]) -> Inventory:
    """Read an inventory written by ``vmmove scan -o json|yaml`` (either format, any name)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UnreadableInventory(unreadable(path, exc)) from None
    try:
        data = _parse(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InventoryError(f"{path}: not valid JSON/YAML{at}") from None
    if isinstance(data, dict) and data.get("kind") == "Plan":  # the mirror of plan's check
        raise InventoryError(f"{path}: this is a plan (vmmove plan), not an inventory; give "
                             f"the inventory it names ({data.get('inventory', '?')}), or a "
                             "command that takes a plan")
    if not isinstance(data, dict) or "vms" not in data:
        raise InventoryError(f"{path}: not a vmmove inventory (no 'vms' list)")
    try:
        return from_data(Inventory, data, "inventory")
    except InventoryError as exc:
        raise InventoryError(f"{path}: {exc}") from None
