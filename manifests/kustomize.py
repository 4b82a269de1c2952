"""Writing manifests as a reviewable tree: one file per VM, a kustomization per namespace.

Layout (``--out DIR``)::

    DIR/kustomization.yaml              resources: every namespace folder
    DIR/<namespace>/kustomization.yaml  namespace + resources: the files below
    DIR/<namespace>/<vm>.yaml           one VirtualMachine (dataVolumeTemplates inside)
    DIR/<namespace>/secret-<name>.yaml  Secrets the imports need (mode 0600: credentials)
    DIR/.vmmove-index.json              which VMs each file above was written for

A rerun replaces its own earlier output: a file the index says was written for the VMs of
this run, and that this run no longer writes (a Secret renamed when the credentials
changed, a VM renamed), is removed unless another VM's run still wrote it.  Files vmmove
did not write (not in the index) are never touched.

The YAML is stable from run to run (keys sorted, lists in source order, no timestamps but
the recorded scan time), so ``git diff`` shows only what changed in the sources or options.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
import os
from pathlib import Path
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from manifests.generate import ManifestSet
from migrate.core.errors import VmmoveError
from migrate.core.serialize import atomic_write

_Dumper: Any = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # libyaml's emitter when present
_STR, _INT, _BOOL = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:bool"
_MAP, _SEQ, _NULL = "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq", "tag:yaml.org,2002:null"


def _node(obj: Any) -> Node:
    """PyYAML's node graph for plain data, built directly: the generic representer costs more
    than everything else for 1,000 VMs.  Keys sorted; multi-line strings (the notes) as
    literal blocks.  Quoting stays PyYAML's: the serializer resolves every scalar."""
    kind = type(obj)
    if kind is str:
        return ScalarNode(_STR, obj, style="|" if "\n" in obj else None)
    if kind is dict:
        return MappingNode(_MAP, [(ScalarNode(_STR, str(k)), _node(obj[k])) for k in sorted(obj)], flow_style=not obj)
    if kind is list:
        return SequenceNode(_SEQ, [_node(v) for v in obj], flow_style=not obj)
    if kind is bool:
        return ScalarNode(_BOOL, "true" if obj else "false")
    if kind is int:
        return ScalarNode(_INT, str(obj))
    if obj is None:
        return ScalarNode(_NULL, "null")
    raise TypeError(f"cannot render {kind.__name__} as YAML")


def to_yaml(obj: Any) -> str:
    return yaml.serialize(_node(obj), Dumper=_Dumper, width=100, allow_unicode=True)


def to_json(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def render(obj: Any, fmt: str) -> str:
    return to_json(obj) if fmt == "json" else to_yaml(obj)


def render_many(sets: list[ManifestSet], fmt: str) -> str:
    """The VirtualMachines of ``sets`` for printing: one object when there is one; else a
    YAML stream (``---`` between documents) or a JSON ``kind: List``, as kubectl prints."""
    objs = [s.virtual_machine for s in sets]
    if len(objs) == 1:
        return render(objs[0], fmt)
    if fmt == "json":
        return to_json({"apiVersion": "v1", "kind": "List", "items": objs})
    return "".join(("---\n" if i else "") + to_yaml(o) for i, o in enumerate(objs))


def _write(path: Path, text: str, private: bool = False) -> None:
    atomic_write(path, text, private=private)


INDEX = ".vmmove-index.json"


def _read_index(root: Path) -> dict[str, list[str]]:
    """The manifest index: relative path → the VM keys it was written for ({} when none)."""
    try:
        data = json.loads((root / INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {str(k): [str(v) for v in vs] for k, vs in data.items() if isinstance(vs, list)} \
        if isinstance(data, dict) else {}


def _retire(root: Path, written: dict[Path, set[str]],
            keys: set[str]) -> tuple[dict[str, list[str]], set[str]]:
    """The index after this run (``written``: file → the VM keys it is for; ``keys``: the
    VMs of this run) and the namespace folders a file was removed from; removes the files
    only this run's VMs had and it no longer writes."""
    removed: set[str] = set()
    index = {rel: set(owners) for rel, owners in _read_index(root).items()}
    for path, owners in written.items():
        rel = path.relative_to(root).as_posix()
        index[rel] = (index.get(rel, set()) - keys) | owners
    for rel, owners in list(index.items()):
        if root / rel in written:
            continue
        left = owners - keys
        if not left:
            stale = root / rel
            if ".." not in Path(rel).parts and stale.is_file() and not stale.is_symlink():
                stale.unlink()
                removed.add(stale.parent.name)
            del index[rel]
        else:
            index[rel] = left
    return {rel: sorted(owners) for rel, owners in sorted(index.items())}, removed


def write_tree(sets: list[ManifestSet], out: str | os.PathLike[str]) -> list[tuple[str, str, str]]:
    """Write every set under ``out``; returns (namespace, kind/name, relative path) rows.

    Everything is rendered and checked before the first file is written; each file is
    written atomically.  A namespace's kustomization lists every manifest in its folder, so
    runs for different ``--vm`` selections add up instead of forgetting each other.
    """
    root = Path(out)
    files: dict[Path, tuple[str, bool]] = {}
    owners: dict[Path, set[str]] = {}
    rows: list[tuple[str, str, str]] = []
    namespaces: set[str] = set()
    for s in sorted(sets, key=lambda s: (s.namespace, s.name)):
        ns = s.namespace
        namespaces.add(ns)
        path = root / ns / f"{s.name}.yaml"
        if path in files:
            raise VmmoveError(f"VirtualMachine {ns}/{s.name}: two VMs got the same name")
        files[path] = (to_yaml(s.virtual_machine), False)
        owners.setdefault(path, set()).add(s.vm_key)
        rows.append((ns, f"VirtualMachine/{s.name}", f"{ns}/{path.name}"))
        for secret in s.secrets:
            name = secret["metadata"]["name"]
            spath = root / ns / f"secret-{name}.yaml"
            text = to_yaml(secret)
            owners.setdefault(spath, set()).add(s.vm_key)
            if spath in files:
                if files[spath][0] != text:
                    raise VmmoveError(f"Secret {ns}/{name}: two different manifests recorded for it")
                continue
            files[spath] = (text, True)  # credentials: private
            rows.append((ns, f"Secret/{name}", f"{ns}/{spath.name}"))
    # fsync dominates writing a tree; concurrent fsyncs share the filesystem's journal commits
    with ThreadPoolExecutor(max_workers=8, thread_name_prefix="write") as pool:
        for future in [pool.submit(_write, path, text, private) for path, (text, private) in files.items()]:
            future.result()
    index, emptied = _retire(root, owners, {s.vm_key for s in sets})
    _write(root / INDEX, json.dumps(index, indent=1) + "\n")
    for ns in sorted(namespaces | emptied):
        folder = root / ns
        resources = sorted(p.name for p in folder.glob("*.yaml") if p.name != "kustomization.yaml")
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "namespace": ns,
            "resources": resources,
        }
        _write(folder / "kustomization.yaml", to_yaml(kustomization))
    all_ns = sorted(p.parent.name for p in root.glob("*/kustomization.yaml"))
    top = {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization", "resources": all_ns}
    _write(root / "kustomization.yaml", to_yaml(top))
    return rows
