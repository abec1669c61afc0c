"""The ``objects PATH...`` source: Kubernetes objects read from YAML/JSON files, re-read on change.

A file that fails to parse is logged and its last good objects keep serving; an object that cannot
be used is logged with its kind, namespace and name and only it is skipped.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import yaml

from clusterdns.k8s.objects import KINDS, Object, ObjectError, from_dict
from clusterdns.k8s.store import Store

log = logging.getLogger("clusterdns.kubernetes")

SUFFIXES = (".yaml", ".yml", ".json")
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def expand(paths: list[str]) -> list[str]:
    """The files named by ``paths``: files as given, directories' *.yaml/*.yml/*.json (sorted)."""
    files: list[str] = []
    for p in paths:
        if os.path.isdir(p):
            files.extend(os.path.join(p, f) for f in sorted(os.listdir(p)) if f.endswith(SUFFIXES))
        elif os.path.exists(p):
            files.append(p)
    return files


def read_documents(path: str) -> list[Any]:
    """Every document of a YAML or JSON file, with ``kind: List`` flattened."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    docs = [json.loads(text)] if path.endswith(".json") else list(yaml.load_all(text, Loader=_Loader))
    out: list[Any] = []
    for doc in docs:
        if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") and isinstance(doc.get("items"), list):
            item_kind = str(doc["kind"])[: -len("List")]
            for item in doc["items"]:
                if isinstance(item, dict) and "kind" not in item and item_kind:
                    item = {**item, "kind": item_kind}
                out.append(item)
        elif doc is not None:
            out.append(doc)
    return out


def load_objects(path: str, pod_names: bool = True) -> list[Object]:
    """The usable objects of one file; raises OSError/ValueError/yaml.YAMLError if it is unreadable.
    ``pod_names``: keep endpoints' Pod names (see objects.from_dict)."""
    objs: list[Object] = []
    for doc in read_documents(path):
        if not isinstance(doc, dict):
            log.warning("objects: %s: skipping a document that is not a mapping", path)
            continue
        if doc.get("kind") not in KINDS:
            continue  # Deployments and the like: not DNS's business
        try:
            objs.append(from_dict(doc, pod_names=pod_names))
        except ObjectError as e:
            log.warning("objects: %s: skipping %s", path, e)
    return objs


@dataclass
class FileSource:
    """Serves the objects found at ``paths``; polls them every ``interval`` seconds."""

    paths: list[str]
    interval: float = 1.0
    _stamps: dict[str, tuple[int, int]] = field(default_factory=dict)
    _good: dict[str, list[Object]] = field(default_factory=dict)
    _synced: bool = False

    def synced(self) -> bool:
        return self._synced

    def load(self, store: Store) -> None:
        """Read whatever changed since the last call and push the union to the store."""
        files = expand(self.paths)
        changed = False
        for gone in set(self._good) - set(files):
            del self._good[gone]
            self._stamps.pop(gone, None)
            changed = True
        for path in files:
            try:
                st = os.stat(path)
            except OSError:
                continue
            stamp = (st.st_mtime_ns, st.st_size)
            if self._stamps.get(path) == stamp:
                continue
            self._stamps[path] = stamp
            try:
                self._good[path] = load_objects(path, store.opts.endpoint_pod_names)
                changed = True
            except (OSError, ValueError, UnicodeDecodeError, yaml.YAMLError) as e:
                first = str(e).splitlines()[0] if str(e) else type(e).__name__
                log.error("objects: cannot read %s: %s; keeping its last good state", path, first)
        if changed or not self._synced:
            store.replace(KINDS, [o for objs in self._good.values() for o in objs])
        self._synced = True

    async def run(self, store: Store) -> None:
        self.load(store)
        while True:
            await asyncio.sleep(self.interval)
            try:
                self.load(store)
            except Exception:  # never let one bad poll end the source
                log.exception("objects: reload failed")
