"""The cluster as DNS sees it: the current objects, kept in step with the index.

Sources (files, the API watch) feed objects in; every change re-derives only the records of the
owner it touches (a Service with its EndpointSlices, a Namespace, a Pod) and hands them to the
index. ``replace`` diffs a full snapshot (a relist, a re-read file) so no deletion is missed.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from clusterdns.k8s import records
from clusterdns.k8s.index import Index, Table
from clusterdns.k8s.objects import EndpointSlice, Namespace, Object, Pod, Service, key_of

log = logging.getLogger("clusterdns.kubernetes")

Key = tuple[str, str, str]  # (kind, namespace, name)
Matcher = Callable[[Mapping[str, str]], bool]
ProgrammingHook = Callable[[str, float], None]  # (service_kind, seconds)


def _ns_key(ns: str) -> Key:
    """The key of the Namespace object named ``ns`` (key_of: a Namespace lives in itself)."""
    return ("Namespace", ns, ns)


@dataclass
class Filters:
    """Which objects are served: `namespaces`, `labels`, `namespace_labels`, and pods mode."""

    namespaces: frozenset[str] = frozenset()  # empty: every namespace
    labels: Matcher | None = None
    namespace_labels: Matcher | None = None
    pods_verified: bool = False


class Store:
    """Objects by key; owners re-derived into the index on every change."""

    def __init__(self, index: Index, opts: records.Options, filters: Filters | None = None,
                 on_programmed: ProgrammingHook | None = None) -> None:
        self.index = index
        self.opts = opts
        self.filters = filters or Filters()
        self.on_programmed = on_programmed
        self.objects: dict[Key, Object] = {}
        self._slices_of: Table[tuple[str, str], tuple[Key, ...]] = Table()  # a tuple: nearly always one
        self._ns_refs: Counter[str] = Counter()

    # --- feeding ---------------------------------------------------------------------------
    def upsert(self, obj: Object) -> None:
        """Add or replace one object."""
        key = key_of(obj)
        old = self.objects.get(key)
        if old == obj:
            if isinstance(obj, EndpointSlice):
                self.objects[key] = obj  # keep the newest trigger time
            return
        if old is not None:
            self._unlink(key, old)
        self.objects[key] = obj
        self._link(key, obj)
        self._refresh(obj, old)

    def delete(self, key: Key) -> None:
        """Remove one object (a no-op when it is unknown)."""
        old = self.objects.pop(key, None)
        if old is not None:
            self._unlink(key, old)
            self._refresh(old, None)

    def replace(self, kinds: Iterable[str], objs: Iterable[Object]) -> None:
        """Make the objects of ``kinds`` exactly ``objs`` (a full snapshot)."""
        kinds = set(kinds)
        fresh = {key_of(o): o for o in objs}
        for key in [k for k in self.objects if k[0] in kinds and k not in fresh]:
            self.delete(key)
        for obj in fresh.values():
            self.upsert(obj)

    # --- bookkeeping -------------------------------------------------------------------------
    def _link(self, key: Key, obj: Object) -> None:
        self._ns_refs[obj.namespace] += 1
        if isinstance(obj, EndpointSlice):
            svc = (obj.namespace, obj.service)
            self._slices_of[svc] = (*self._slices_of.get(svc, ()), key)

    def _unlink(self, key: Key, obj: Object) -> None:
        self._ns_refs[obj.namespace] -= 1
        if self._ns_refs[obj.namespace] <= 0:
            del self._ns_refs[obj.namespace]
        if isinstance(obj, EndpointSlice):
            svc = (obj.namespace, obj.service)
            owned = tuple(k for k in self._slices_of.get(svc, ()) if k != key)
            if owned:
                self._slices_of[svc] = owned
            else:
                self._slices_of.pop(svc, None)

    def _refresh(self, obj: Object, old: Object | None) -> None:
        """Re-derive whatever ``obj`` (and the version it replaced) contributes to."""
        if isinstance(obj, EndpointSlice):
            services = {(obj.namespace, obj.service)}
            if isinstance(old, EndpointSlice):
                services.add((old.namespace, old.service))
            for ns, name in services:
                self._derive_service(ns, name)
            self._programmed(obj)
        elif isinstance(obj, Service):
            self._derive_service(obj.namespace, obj.name)
        elif isinstance(obj, Pod):
            self._derive_pod(obj.namespace, obj.name)
        elif isinstance(obj, Namespace) and self.filters.namespace_labels is not None:
            # its labels decide whether anything in it is served: re-derive its contents
            for kind, ns, name in [k for k in self.objects if k[1] == obj.name]:
                if kind == "Service":
                    self._derive_service(ns, name)
                elif kind == "Pod":
                    self._derive_pod(ns, name)
        self._derive_namespace(obj.namespace)

    def _served(self, obj: Object) -> bool:
        f = self.filters
        if f.namespaces and obj.namespace not in f.namespaces:
            return False
        if f.namespace_labels is not None:
            ns = self.objects.get(_ns_key(obj.namespace))
            if not isinstance(ns, Namespace) or not f.namespace_labels(dict(ns.labels)):
                return False
        if f.labels is not None and not isinstance(obj, Namespace) and not f.labels(dict(obj.labels)):
            return False
        return True

    def _derive_service(self, ns: str, name: str) -> None:
        owner = f"svc/{ns}/{name}"
        svc = self.objects.get(("Service", ns, name))
        if not isinstance(svc, Service) or not self._served(svc):
            self.index.set(owner, {})
            return
        slices = [s for k in self._slices_of.get((ns, name), ()) if isinstance(s := self.objects[k], EndpointSlice)
                  and self._served(s)]
        self.index.set(owner, records.service_records(svc, slices, self.opts))

    def _derive_pod(self, ns: str, name: str) -> None:
        pod = self.objects.get(("Pod", ns, name))
        recs: records.Records = {}
        if self.filters.pods_verified and isinstance(pod, Pod) and self._served(pod):
            recs = records.pod_records(pod, self.opts)
        self.index.set(f"pod/{ns}/{name}", recs)

    def _derive_namespace(self, ns: str) -> None:
        """A namespace exists while a Namespace object or any object in it is loaded."""
        if not ns:
            return
        exists = ns in self._ns_refs or _ns_key(ns) in self.objects
        f = self.filters
        if f.namespaces and ns not in f.namespaces:
            exists = False
        if exists and f.namespace_labels is not None:
            obj = self.objects.get(_ns_key(ns))
            exists = isinstance(obj, Namespace) and f.namespace_labels(dict(obj.labels))
        self.index.set(f"ns/{ns}", records.namespace_records(ns, self.opts) if exists else {})

    def namespace_exists(self, ns: str) -> bool:
        return self.index.exists(f"{ns}.svc.{self.opts.zones[0]}") if self.opts.zones else False

    def _programmed(self, sl: EndpointSlice) -> None:
        if self.on_programmed is None or sl.trigger_time is None:
            return
        svc = self.objects.get(("Service", sl.namespace, sl.service))
        if not isinstance(svc, Service):
            return
        kind = "headless_with_selector" if svc.headless else "cluster_ip"
        self.on_programmed(kind, max(0.0, time.time() - sl.trigger_time))
