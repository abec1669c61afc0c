"""A fake Kubernetes API server for tests: the real list/watch HTTP protocol on 127.0.0.1.

The server (aiohttp) runs on its own event loop in a background thread, so synchronous tests drive
it through thread-safe methods (``apply``, ``delete``, ``drop_watches`` ...). Semantics follow the
real apiserver: one cluster-wide integer resourceVersion, List items without kind/apiVersion, watch
events one JSON document per line (chunked, 200 at once), too-old RVs answered in-band with an
ERROR 410 "Expired" event, periodic BOOKMARKs, continue tokens that expire with compaction.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

Obj = dict[str, Any]
Key = tuple[str, str]  # (namespace, name); namespace "" for cluster-scoped kinds


@dataclass(frozen=True)
class KindInfo:
    kind: str
    api_version: str
    plural: str
    namespaced: bool

    @property
    def prefix(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"


KINDS: dict[str, KindInfo] = {
    k.kind: k
    for k in (
        KindInfo("Service", "v1", "services", True),
        KindInfo("Namespace", "v1", "namespaces", False),
        KindInfo("Pod", "v1", "pods", True),
        KindInfo("Endpoints", "v1", "endpoints", True),
        KindInfo("EndpointSlice", "discovery.k8s.io/v1", "endpointslices", True),
    )
}
_BY_PATH = {(k.prefix, k.plural): k for k in KINDS.values()}


def kind_info(kind: str) -> KindInfo:
    """Look a kind up by its name ("Service") or its plural ("services")."""
    for k in KINDS.values():
        if kind in (k.kind, k.plural):
            return k
    raise KeyError(f"unknown kind {kind!r}")


def status(code: int, reason: str, message: str) -> Obj:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def _status_response(code: int, reason: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(status(code, reason, message), status=code, headers=headers)


# ---------------------------------------------------------------------------------------- selectors

Pred = Callable[[Obj], bool]
_SET_RE = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\((.*)\)\s*$")


def _split_top(expr: str) -> list[str]:
    """Split on commas that are not inside parentheses."""
    parts, depth, cur = [], 0, ""
    for ch in expr:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def _binary(term: str, get: Callable[[Obj, str], str | None], exists: bool) -> Pred:
    for op in ("!=", "==", "="):
        if op in term:
            k, v = (s.strip() for s in term.split(op, 1))
            if op == "!=":
                return lambda o: get(o, k) != v
            return lambda o: get(o, k) == v
    if not exists:
        raise ValueError(f"unsupported selector term {term!r}")
    if term.startswith("!"):
        k = term[1:].strip()
        return lambda o: get(o, k) is None
    return lambda o: get(o, term) is not None


def _label(o: Obj, key: str) -> str | None:
    labels = (o.get("metadata") or {}).get("labels") or {}
    return labels.get(key)


def _field(o: Obj, path: str) -> str:
    cur: Any = o
    for part in path.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return "" if cur is None else str(cur)


def _set_term(key: str, positive: bool, values: set[str]) -> Pred:
    return lambda o: (_label(o, key) in values) == positive


def parse_label_selector(expr: str) -> Pred:
    preds: list[Pred] = []
    for term in _split_top(expr):
        m = _SET_RE.match(term)
        if m:
            preds.append(_set_term(m.group(1), m.group(2) == "in", {v.strip() for v in m.group(3).split(",")}))
        else:
            preds.append(_binary(term, _label, exists=True))
    return lambda o: all(p(o) for p in preds)


def parse_field_selector(expr: str) -> Pred:
    preds = [_binary(term, _field, exists=False) for term in _split_top(expr)]
    return lambda o: all(p(o) for p in preds)


# ------------------------------------------------------------------------------------------ watches

@dataclass(eq=False)
class _Watcher:
    info: KindInfo
    match: Pred
    queue: asyncio.Queue[tuple[int | None, bytes | None, Obj | None]]
    progress: int  # RV up to which this watcher has been told everything (for bookmarks)
    dropped: asyncio.Event = field(default_factory=asyncio.Event)
    closing: bool = False


@dataclass
class _HistoryEntry:
    rv: int
    info: KindInfo
    type: str
    obj: Obj
    old: Obj | None


def _event_line(type_: str, obj: Obj) -> bytes:
    return json.dumps({"type": type_, "object": obj}, separators=(",", ":")).encode() + b"\n"


def _filtered_event(e: _HistoryEntry, match: Pred) -> tuple[str, Obj] | None:
    """What a watcher with this selector sees for one change (real servers map selector transitions)."""
    if e.type == "DELETED":
        return ("DELETED", e.obj) if match(e.obj) else None
    new_ok, old_ok = match(e.obj), e.old is not None and match(e.old)
    if new_ok and old_ok:
        return "MODIFIED", e.obj
    if new_ok:
        return "ADDED", e.obj
    if old_ok:
        return "DELETED", e.obj
    return None


class FakeApiServer:
    """A fake apiserver; every public method is safe to call from any thread.

    ``history``: watch events kept (older RVs get 410); ``bookmark_interval``: seconds between BOOKMARKs
    on watches that allow them; ``token``: required bearer token (None: no auth); ``watch_timeout``:
    stream length when the client sends no ``timeoutSeconds``; set ``port`` before ``start()`` to pick it.
    """

    def __init__(self, history: int = 1000, bookmark_interval: float = 1.0, token: str | None = None,
                 watch_timeout: float = 60.0, initial_rv: int = 100) -> None:
        self.token = token  # may be changed at any time (token rotation tests)
        self.bookmark_interval = bookmark_interval
        self.watch_timeout = watch_timeout
        self.port = 0
        self._lock = threading.RLock()
        self._rv = initial_rv
        self._floor = initial_rv  # watches from an RV below this get 410
        self._store: dict[str, dict[Key, Obj]] = {k: {} for k in KINDS}
        self._history: collections.deque[_HistoryEntry] = collections.deque(maxlen=history)
        self._snapshots: collections.OrderedDict[str, tuple[int, list[Obj]]] = collections.OrderedDict()
        self._watchers: set[_Watcher] = set()
        self._requests: list[tuple[str, str]] = []
        self._fail: tuple[int, int, float | None] = (0, 500, None)
        self._list_delay = 0.0
        self._stall_until = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # ------------------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("already running")
        loop = asyncio.new_event_loop()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.run_forever()
            # A client reconnecting while we stop may have been accepted after cleanup: abort
            # every transport still open so none outlives the loop (its __del__ would then fail).
            for transport in list(getattr(loop, "_transports", {}).values()):
                if transport is not None and not transport.is_closing():
                    transport.abort()
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(asyncio.sleep(0.01))  # connection_lost callbacks
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fake-k8s-api", daemon=True)
        self._thread.start()
        try:
            self.port = asyncio.run_coroutine_threadsafe(self._serve(), loop).result(timeout=10)
        except BaseException:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(10)
            self._thread = None
            raise
        with self._lock:
            self._loop = loop

    async def _serve(self) -> int:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        return int(self._runner.addresses[0][1])

    def stop(self) -> None:
        """Stop listening and end every connection; state (objects, RVs, history) is kept."""
        with self._lock:
            loop, self._loop = self._loop, None
            watchers = list(self._watchers)
        if loop is None or self._thread is None:
            return
        for w in watchers:
            w.closing = True
            loop.call_soon_threadsafe(w.dropped.set)
        runner = self._runner
        if runner is not None:
            # A client that connected just now must be accepted before cleanup closes the
            # connections; otherwise its socket outlives the loop (a ResourceWarning).
            time.sleep(0.05)
            asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=15)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(15)
        self._thread = None
        self._runner = None

    def restart(self) -> None:
        """stop() then start() on the same port, keeping all state (for API-outage tests)."""
        self.stop()
        self.start()

    # --------------------------------------------------------------------------- object store

    def apply(self, obj: Obj) -> Obj:
        """Create or update an object (matched by kind/namespace/name); emits ADDED or MODIFIED."""
        info = kind_info(obj["kind"])
        body = copy.deepcopy(obj)
        new: Obj = {"kind": info.kind, "apiVersion": info.api_version, "metadata": body.pop("metadata", {})}
        new.update((k, v) for k, v in body.items() if k not in ("kind", "apiVersion"))
        meta = new["metadata"]
        if info.namespaced:
            meta.setdefault("namespace", "default")
        else:
            meta.pop("namespace", None)
        key = (meta.get("namespace", ""), meta["name"])
        with self._lock:
            old = self._store[info.kind].get(key)
            if old is not None:
                meta["uid"] = old["metadata"]["uid"]
                meta["creationTimestamp"] = old["metadata"]["creationTimestamp"]
            else:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            self._rv += 1
            meta["resourceVersion"] = str(self._rv)
            self._store[info.kind][key] = new
            self._record(info, "ADDED" if old is None else "MODIFIED", new, old)
            return copy.deepcopy(new)

    def delete(self, kind: str, namespace: str, name: str) -> None:
        """Delete an object (KeyError if absent); emits DELETED carrying the last state at a new RV."""
        info = kind_info(kind)
        with self._lock:
            old = self._store[info.kind].pop((namespace if info.namespaced else "", name))
            self._rv += 1
            last = copy.deepcopy(old)
            last["metadata"]["resourceVersion"] = str(self._rv)
            self._record(info, "DELETED", last, old)

    def delete_silently(self, kind: str, namespace: str, name: str) -> None:
        """Remove an object with no event, then compact: only a relist (after a 410) can notice.

        Open watches are not told; pair with drop_watches() so that clients reconnect and get 410.
        """
        info = kind_info(kind)
        with self._lock:
            self._store[info.kind].pop((namespace if info.namespaced else "", name))
            self.compact()

    def compact(self) -> None:
        """Forget the watch history and the list snapshots: every RV seen so far now gets 410."""
        with self._lock:
            self._rv += 1  # a write nobody saw, so that even the latest RV handed out is too old
            self._floor = self._rv
            self._history.clear()
            self._snapshots.clear()

    def objects(self, kind: str) -> list[Obj]:
        with self._lock:
            return copy.deepcopy(list(self._store[kind_info(kind).kind].values()))

    @property
    def resource_version(self) -> int:
        with self._lock:
            return self._rv

    def _record(self, info: KindInfo, type_: str, obj: Obj, old: Obj | None) -> None:
        """Append to history and notify every watcher (all kinds: they track progress for bookmarks)."""
        entry = _HistoryEntry(self._rv, info, type_, copy.deepcopy(obj), copy.deepcopy(old))
        if self._history.maxlen is not None and len(self._history) == self._history.maxlen:
            self._floor = self._history[0].rv
        self._history.append(entry)
        loop = self._loop
        for w in self._watchers:
            ev = _filtered_event(entry, w.match) if w.info is info else None
            line = _event_line(*ev) if ev else None
            if loop is not None:
                loop.call_soon_threadsafe(w.queue.put_nowait, (entry.rv, line, None))

    # ------------------------------------------------------------------------ fault injection

    def drop_watches(self) -> None:
        """Abruptly close (TCP abort, no final chunk) every open watch connection."""
        self._for_watchers(lambda w: w.dropped.set())

    def stall_watches(self, seconds: float) -> None:
        """Open (and newly opened) watches send nothing at all, not even bookmarks, for ``seconds``."""
        with self._lock:
            self._stall_until = time.monotonic() + seconds

    def fail_next(self, n: int, status: int = 500, retry_after: float | None = None) -> None:
        """The next ``n`` requests (any path) get HTTP ``status`` with a Status body."""
        with self._lock:
            self._fail = (n, status, retry_after)

    def delay_list(self, seconds: float) -> None:
        with self._lock:
            self._list_delay = seconds

    def inject_raw_event(self, kind: str, line: str) -> None:
        """Push a raw line (a newline is added) into every open watch of ``kind``."""
        info = kind_info(kind)
        data = line.encode() + b"\n"
        self._for_watchers(lambda w: w.queue.put_nowait((None, data, None)), info)

    def _for_watchers(self, fn: Callable[[_Watcher], None], info: KindInfo | None = None) -> None:
        with self._lock:
            loop = self._loop
            targets = [w for w in self._watchers if info is None or w.info is info]
        for w in targets:
            if loop is not None:
                loop.call_soon_threadsafe(fn, w)

    @property
    def requests(self) -> list[tuple[str, str]]:
        """(method, path with query) of every request seen, in order."""
        with self._lock:
            return list(self._requests)

    def watch_count(self) -> int:
        with self._lock:
            return len(self._watchers)

    def write_kubeconfig(self, path: str | Path) -> str:
        user: Obj = {"token": self.token} if self.token else {}
        cfg = {
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake", "user": user}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}],
        }
        Path(path).write_text(json.dumps(cfg, indent=2))  # JSON is YAML
        return str(path)

    # --------------------------------------------------------------------------------- HTTP

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        with self._lock:
            self._requests.append((request.method, request.path_qs))
            n, code, retry_after = self._fail
            if n > 0:
                self._fail = (n - 1, code, retry_after)
        if n > 0:
            reason = {429: "TooManyRequests", 503: "ServiceUnavailable"}.get(code, "InternalError")
            headers = {"Retry-After": str(int(retry_after))} if retry_after is not None else None
            return _status_response(code, reason, f"injected failure ({code})", headers)
        if self.token and request.headers.get("Authorization") != f"Bearer {self.token}":
            return _status_response(401, "Unauthorized", "Unauthorized")
        return await handler(request)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/")
        if path in _DISCOVERY:
            return web.json_response(_DISCOVERY[path])
        parts = path.split("/")
        # /api/v1/... -> prefix has 3 parts ("", api, v1); /apis/group/version/... -> 4
        n = 3 if path.startswith("/api/") else 4
        prefix, rest = "/".join(parts[:n]), parts[n:]
        namespace, name = None, None
        if len(rest) in (3, 4) and rest[0] == "namespaces":
            namespace, rest = rest[1], rest[2:]
        elif len(rest) == 2 and rest[0] == "namespaces" and prefix == "/api/v1":
            rest, name = ["namespaces"], rest[1]  # GET one Namespace
        if len(rest) == 2:
            rest, name = rest[:1], rest[1]
        info = _BY_PATH.get((prefix, rest[0])) if len(rest) == 1 else None
        if info is None:
            return _status_response(404, "NotFound", f"the server could not find the requested resource ({path})")
        if name is not None:
            return self._get_one(info, namespace or "", name)
        q = request.query
        try:
            match = self._matcher(namespace, q.get("labelSelector", ""), q.get("fieldSelector", ""))
        except ValueError as e:
            return _status_response(400, "BadRequest", str(e))
        if q.get("watch") in ("1", "true", "True"):
            return await self._watch(request, info, match)
        return await self._list(info, match, q)

    def _get_one(self, info: KindInfo, namespace: str, name: str) -> web.Response:
        with self._lock:
            obj = self._store[info.kind].get((namespace if info.namespaced else "", name))
            if obj is None:
                return _status_response(404, "NotFound", f'{info.plural} "{name}" not found')
            return web.json_response(obj)

    @staticmethod
    def _matcher(namespace: str | None, labels: str, fields: str) -> Pred:
        preds: list[Pred] = []
        if namespace is not None:
            preds.append(lambda o: o["metadata"].get("namespace") == namespace)
        if labels:
            preds.append(parse_label_selector(labels))
        if fields:
            preds.append(parse_field_selector(fields))
        return lambda o: all(p(o) for p in preds)

    async def _list(self, info: KindInfo, match: Pred, q: Any) -> web.Response:
        with self._lock:
            delay = self._list_delay
        if delay:
            await asyncio.sleep(delay)
        limit = int(q.get("limit") or 0)
        with self._lock:
            if q.get("continue"):
                try:
                    tok = json.loads(base64.urlsafe_b64decode(q["continue"]))
                    snap_id, offset = str(tok["id"]), int(tok["offset"])
                    rv, items = self._snapshots[snap_id]
                except (ValueError, KeyError, TypeError):
                    return _status_response(410, "Expired", "The provided continue parameter is too old to "
                                            "display a consistent list result. You can start a new list "
                                            "without the continue parameter.")
            else:
                rv, offset, snap_id = self._rv, 0, uuid.uuid4().hex
                items = [_strip(o) for _, o in sorted(self._store[info.kind].items()) if match(o)]
            page = items[offset:offset + limit] if limit > 0 else items[offset:]
            meta: Obj = {"resourceVersion": str(rv)}
            if offset + len(page) < len(items):
                self._snapshots[snap_id] = (rv, items)
                while len(self._snapshots) > 64:
                    self._snapshots.popitem(last=False)
                token = json.dumps({"id": snap_id, "offset": offset + len(page), "rv": rv})
                meta["continue"] = base64.urlsafe_b64encode(token.encode()).decode()
                meta["remainingItemCount"] = len(items) - offset - len(page)
            body = {"kind": f"{info.kind}List", "apiVersion": info.api_version, "metadata": meta, "items": page}
            return web.json_response(copy.deepcopy(body))

    async def _watch(self, request: web.Request, info: KindInfo, match: Pred) -> web.StreamResponse:
        q = request.query
        rv_param = q.get("resourceVersion", "")
        if rv_param not in ("", "0") and not rv_param.isdigit():
            return _status_response(400, "BadRequest", f"invalid resource version {rv_param!r}")
        timeout = float(q.get("timeoutSeconds") or self.watch_timeout)
        bookmarks = q.get("allowWatchBookmarks") in ("1", "true", "True")
        initial_end = q.get("sendInitialEvents") in ("1", "true", "True")
        w = _Watcher(info, match, asyncio.Queue(), 0)
        with self._lock:
            too_old = rv_param not in ("", "0") and int(rv_param) < self._floor
            floor = self._floor
            if not too_old:
                if rv_param in ("", "0") or initial_end:
                    # "start at most recent / any": synthetic ADDED for the current state
                    for _, o in sorted(self._store[info.kind].items()):
                        if match(o):
                            w.queue.put_nowait((None, _event_line("ADDED", o), None))
                    w.progress = self._rv
                else:
                    w.progress = int(rv_param)
                    for e in self._history:
                        ev = _filtered_event(e, match) if e.rv > w.progress and e.info is info else None
                        if ev:
                            w.queue.put_nowait((e.rv, _event_line(*ev), None))
                    w.queue.put_nowait((self._rv, None, None))
                if initial_end:
                    w.queue.put_nowait((None, None, {"k8s.io/initial-events-end": "true"}))
                self._watchers.add(w)
        resp = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        try:
            await resp.prepare(request)
            if too_old:
                await resp.write(_event_line("ERROR", status(
                    410, "Expired", f"too old resource version: {rv_param} ({floor})")))
            else:
                await self._pump(request, resp, w, timeout, bookmarks)
            await resp.write_eof()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            with self._lock:
                self._watchers.discard(w)
        return resp

    async def _pump(self, request: web.Request, resp: web.StreamResponse, w: _Watcher,
                    timeout: float, bookmarks: bool) -> None:
        deadline = time.monotonic() + timeout
        next_bookmark = time.monotonic() + self.bookmark_interval
        while True:
            now = time.monotonic()
            with self._lock:
                stall = self._stall_until - now
            if not w.dropped.is_set() and stall > 0:
                await _wait(w.dropped, stall)
                continue
            if w.dropped.is_set():
                if w.closing:  # server shutdown: end the stream cleanly
                    return
                if request.transport is not None:
                    request.transport.abort()
                raise ConnectionResetError("dropped by test")
            if now >= deadline:
                return
            wake = min(deadline, next_bookmark) if bookmarks else deadline
            getter = asyncio.ensure_future(w.queue.get())
            dropper = asyncio.ensure_future(w.dropped.wait())
            done, _ = await asyncio.wait({getter, dropper}, timeout=max(0.0, wake - now),
                                         return_when=asyncio.FIRST_COMPLETED)
            dropper.cancel()
            if getter not in done:
                getter.cancel()
                if bookmarks and time.monotonic() >= next_bookmark:
                    await resp.write(_bookmark(w.info, w.progress))
                    next_bookmark = time.monotonic() + self.bookmark_interval
                continue
            rv, line, annotations = getter.result()
            if annotations is not None:
                await resp.write(_bookmark(w.info, w.progress, annotations))
                continue
            if line is not None:
                await resp.write(line)
            if rv is not None:
                w.progress = max(w.progress, rv)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except TimeoutError:
        pass


def _bookmark(info: KindInfo, rv: int, annotations: dict[str, str] | None = None) -> bytes:
    meta: Obj = {"resourceVersion": str(rv)}
    if annotations:
        meta["annotations"] = annotations
    return _event_line("BOOKMARK", {"kind": info.kind, "apiVersion": info.api_version, "metadata": meta})


def _strip(o: Obj) -> Obj:
    """List items carry no kind/apiVersion (as the real server's typed Lists)."""
    return {k: v for k, v in o.items() if k not in ("kind", "apiVersion")}


def _resources(group_version: str, infos: Iterable[KindInfo]) -> Obj:
    verbs = ["get", "list", "watch"]
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version,
            "resources": [{"name": k.plural, "singularName": k.kind.lower(), "namespaced": k.namespaced,
                           "kind": k.kind, "verbs": verbs} for k in infos]}


_DISCOVERY: dict[str, Obj] = {
    "/version": {"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake", "gitCommit": "0" * 40,
                 "gitTreeState": "clean", "buildDate": "2025-01-01T00:00:00Z", "goVersion": "go1.24.0",
                 "compiler": "gc", "platform": "linux/amd64"},
    "/api": {"kind": "APIVersions", "versions": ["v1"],
             "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1"}]},
    "/apis": {"kind": "APIGroupList", "apiVersion": "v1", "groups": [{
        "name": "discovery.k8s.io",
        "versions": [{"groupVersion": "discovery.k8s.io/v1", "version": "v1"}],
        "preferredVersion": {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}}]},
    "/api/v1": _resources("v1", (k for k in KINDS.values() if k.api_version == "v1")),
    "/apis/discovery.k8s.io/v1": _resources("discovery.k8s.io/v1", [KINDS["EndpointSlice"]]),
}
