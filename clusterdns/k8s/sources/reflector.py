"""One resource's list/watch loop, as client-go's reflector, over JSON and asyncio.

List (paginated, ``limit=500`` + ``continue``) into the Store, then watch from the list's
resourceVersion with bookmarks. A 410 (HTTP or an in-band ERROR event) means the history we need is
gone: list again and diff the snapshot in, so deletions made during the gap are removed. Anything
else (refused connections, resets, 5xx, 429, a silent stream) reconnects from the last
resourceVersion after a jittered exponential backoff; the Store keeps serving meanwhile.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from clusterdns.k8s.objects import Object, ObjectError, describe, from_dict, key_of
from clusterdns.k8s.resources import VERBS, Resource
from clusterdns.k8s.store import Key, Store

if TYPE_CHECKING:
    from clusterdns.k8s.sources.api import Client, Health, Response

log = logging.getLogger("clusterdns.kubernetes")

PAGE = 500
BATCH = 64  # objects handled between two yields to the event loop (~5 ms), so a relist never stalls DNS
MAX_LINE = 64 << 20
MAX_RETRY_AFTER = 60.0  # a Retry-After is obeyed even above the backoff cap, up to this


@dataclass(frozen=True)
class Watch:
    """A resource and the selectors its list and watch requests carry."""

    resource: Resource
    label_selector: str = ""
    field_selector: str = ""

    def query(self, **params: str) -> str:
        q = {k: v for k, v in (("labelSelector", self.label_selector), ("fieldSelector", self.field_selector)) if v}
        return f"{self.resource.path}?{urlencode({**q, **params})}"


class ApiError(Exception):
    """A failed request or an ERROR watch event, with the Status the server sent."""

    def __init__(self, code: int, reason: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {code} {reason}: {message}".rstrip(": "))
        self.code = code
        self.reason = reason
        self.message = message
        self.retry_after = retry_after


class Dropped(Exception):
    """A watch connection that broke after it was established."""


class Stalled(TimeoutError):
    """A watch that sent neither an event nor a bookmark for ``idle_timeout`` seconds."""


def _status_error(status: Any, code: int = 0, retry_after: float | None = None) -> ApiError:
    st = status if isinstance(status, dict) else {}
    code = int(st.get("code") or code)
    return ApiError(code, str(st.get("reason") or ""), str(st.get("message") or ""), retry_after)


async def _error_of(resp: Response) -> ApiError:
    """The ApiError for a non-200 response (its body is usually a Status)."""
    try:
        body: Any = json.loads(await resp.read())
    except (ValueError, OSError, TimeoutError, asyncio.IncompleteReadError):
        body = {"reason": resp.reason}
    retry = resp.headers.get("retry-after", "")
    return _status_error(body, resp.status, float(retry) if retry.isdigit() else None)


class Reflector:
    """Keeps one resource's objects in the Store; ``synced`` once its first list is in."""

    def __init__(self, client: Client, watch: Watch, health: Health, idle_timeout: float,
                 backoff: tuple[float, float]) -> None:
        self.client = client
        self.watch = watch
        self.kind = watch.resource.kind
        self.health = health
        self.idle_timeout = idle_timeout
        self.backoff = backoff
        self.synced = False
        self.rv = ""  # empty: list before watching
        self.failures = 0
        self._complained: set[tuple[int, str]] = set()

    @property
    def name(self) -> str:
        r = self.watch.resource
        return f"{r.plural}.{r.group}" if r.group else r.plural

    # --- the loop ----------------------------------------------------------------------------
    async def run(self, store: Store) -> None:
        while True:
            try:
                if not self.rv:
                    await self.list(store)
                if await self.stream(store):
                    continue  # the server ended a working watch (timeoutSeconds): renew it at once
                delay = self._delay()  # it ended before saying anything: do not spin
            except ApiError as e:
                if e.code == 410:
                    what = f"resourceVersion {self.rv}" if self.rv else "list continue token"
                    log.info("plugin/kubernetes: %s: %s expired; listing again", self.name, what)
                    self.rv = ""
                    if self.failures == 0:  # the first 410 after a working watch relists at once
                        self.failures = 1
                        continue
                else:
                    self._api_error(e)
                delay = self._delay(e.retry_after)
            except Dropped as e:  # a blip (apiserver restart, LB idle cut): reconnect, no warning yet
                log.debug("plugin/kubernetes: %s: watch dropped: %s", self.name, e)
                delay = self._delay()
            except Stalled as e:
                self.health.fail(self.name, str(e))
                delay = self._delay()
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                self.health.fail(self.name, _reason(e))
                delay = self._delay()
            except Exception:  # a bug must not end the watch: log it, back off, carry on
                log.exception("plugin/kubernetes: %s: unexpected error", self.name)
                delay = self._delay()
            await asyncio.sleep(delay)

    def _delay(self, retry_after: float | None = None) -> float:
        """Jittered exponential backoff (between half and all of base·2ⁿ, capped); Retry-After wins."""
        base, cap = self.backoff
        self.failures += 1
        delay = min(cap, base * 2 ** (self.failures - 1))
        delay = random.uniform(delay / 2, delay)
        return max(delay, min(retry_after, MAX_RETRY_AFTER)) if retry_after is not None else delay

    def _reachable(self) -> None:
        self._complained.clear()
        self.health.ok(self.name)

    def _api_error(self, e: ApiError) -> None:
        """401/403/4xx are configuration problems: say so once, with what to fix; 5xx/429 are outages."""
        if e.code >= 500 or e.code in (0, 429):
            self.health.fail(self.name, str(e))
            return
        verb = "watch" if self.rv else "list"
        if (e.code, verb) in self._complained:
            return
        self._complained.add((e.code, verb))
        r = self.watch.resource
        if e.code == 403:
            group = r.group or '"" (core)'
            log.error("plugin/kubernetes: cannot %s %s: RBAC needs %s on %s in apiGroup %s (%s)",
                      verb, self.name, ",".join(VERBS), r.plural, group, e.message)
        elif e.code == 401:
            log.error("plugin/kubernetes: cannot %s %s: the API server rejected the credentials (%s)",
                      verb, self.name, e.message or e.reason)
        else:
            log.error("plugin/kubernetes: cannot %s %s: %s", verb, self.name, e)

    # --- list --------------------------------------------------------------------------------
    async def list(self, store: Store) -> None:
        """List every page, then make the Store's objects of this kind exactly the result."""
        fresh: dict[Key, Object] = {}
        token = ""
        while True:
            params = {"limit": str(PAGE)}
            if token:
                params["continue"] = token
            page = await self._get_json(self.watch.query(**params))
            meta = page.get("metadata") or {}
            for i, raw in enumerate(page.get("items") or (), 1):
                obj = self._object(raw, store)
                if obj is not None:
                    fresh[key_of(obj)] = obj
                if i % BATCH == 0:
                    await asyncio.sleep(0)
            token = str(meta.get("continue") or "")
            if not token:
                break
        rv = str(meta.get("resourceVersion") or "")
        await self._replace(store, fresh)
        # The cluster just listed lives until it changes: move it out of the cyclic collector's
        # reach, or every full collection re-scans ~10 objects per Service (90 ms at 10k Services,
        # measured) while DNS waits. Only reference counting frees these objects, which is all they need.
        gc.freeze()
        self.rv = rv
        self.synced = True
        self._reachable()

    def _object(self, raw: Any, store: Store) -> Object | None:
        """A listed item as an Object; a malformed one keeps its last good version, if any."""
        if isinstance(raw, dict):
            raw.setdefault("kind", self.kind)  # list items carry no kind
        try:
            return from_dict(raw, self.kind, pod_names=store.opts.endpoint_pod_names)
        except ObjectError as e:
            log.warning("plugin/kubernetes: skipping %s", e)
            key = self._key(raw)
            return store.objects.get(key) if key is not None else None

    async def _get_json(self, path: str) -> dict[str, Any]:
        resp = await self.client.get(path)
        try:
            if resp.status != 200:
                raise await _error_of(resp)
            body = json.loads(await resp.read())
        finally:
            resp.close()
        if not isinstance(body, dict):
            raise ApiError(500, "BadResponse", f"a list of {self.name} that is not a JSON object")
        return body

    async def _replace(self, store: Store, fresh: dict[Key, Object]) -> None:
        """Store.replace's diff, applied in batches with a yield between them."""
        stale = [k for k in store.objects if k[0] == self.kind and k not in fresh]
        for i, key in enumerate(stale, 1):
            store.delete(key)
            if i % BATCH == 0:
                await asyncio.sleep(0)
        for i, obj in enumerate(fresh.values(), 1):
            store.upsert(obj)
            if i % BATCH == 0:
                await asyncio.sleep(0)

    # --- watch -------------------------------------------------------------------------------
    async def stream(self, store: Store) -> int:
        """Watch from ``self.rv`` until the server ends the stream; the number of events seen."""
        timeout = random.randint(300, 600)  # as client-go: renewals of the four watches spread out
        path = self.watch.query(watch="true", resourceVersion=self.rv, allowWatchBookmarks="true",
                                timeoutSeconds=str(timeout))
        resp = await self.client.get(path)
        chunks = resp.chunks(self.idle_timeout)
        seen = 0
        try:
            if resp.status != 200:
                raise await _error_of(resp)
            buf = b""
            while True:
                try:
                    data = await anext(chunks)
                except StopAsyncIteration:
                    return seen
                except TimeoutError:
                    raise Stalled(f"watch sent nothing, not even a bookmark, for {self.idle_timeout:g}s") from None
                except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                    raise Dropped(_reason(e)) from None
                buf += data
                if b"\n" not in buf:
                    if len(buf) > MAX_LINE:
                        raise ApiError(500, "BadResponse", "watch event larger than 64 MiB")
                    continue
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    if line.strip():
                        self._event(store, line)
                        seen += 1
                        if seen % BATCH == 0:  # a burst of events yields like a relist
                            await asyncio.sleep(0)
        finally:
            await chunks.aclose()
            resp.close()

    def _event(self, store: Store, line: bytes) -> None:
        """Apply one watch event; a malformed one is logged and skipped, nothing else is lost."""
        try:
            ev = json.loads(line)
        except ValueError:
            log.warning("plugin/kubernetes: %s: skipping a watch line that is not JSON: %.120r", self.name, line)
            return
        obj = ev.get("object") if isinstance(ev, dict) else None
        typ = ev.get("type") if isinstance(ev, dict) else None
        if not isinstance(obj, dict):
            log.warning("plugin/kubernetes: %s: skipping a watch event without an object: %.120r", self.name, line)
            return
        if typ == "ERROR":
            raise _status_error(obj)
        meta = obj.get("metadata")
        rv = meta.get("resourceVersion") if isinstance(meta, dict) else None
        if typ in ("ADDED", "MODIFIED", "DELETED"):
            try:
                if typ == "DELETED":
                    key = self._key(obj)
                    if key is not None:
                        store.delete(key)
                else:
                    store.upsert(from_dict(obj, self.kind, pod_names=store.opts.endpoint_pod_names))
            except ObjectError as e:
                log.warning("plugin/kubernetes: skipping %s", e)
            except Exception:  # one object must not stop the watch
                log.exception("plugin/kubernetes: %s: cannot apply %s %s", self.name, typ, describe(obj))
        elif typ != "BOOKMARK":
            log.warning("plugin/kubernetes: %s: skipping a watch event of type %r", self.name, typ)
        if isinstance(rv, str) and rv:
            self.rv = rv
        if self.failures or self.health.failing:
            self.failures = 0  # the watch works: the next failure starts the backoff afresh
            self._reachable()

    def _key(self, raw: Any) -> Key | None:
        """The Store key of a raw object, from its metadata alone (its body may be malformed)."""
        meta = raw.get("metadata") if isinstance(raw, dict) else None
        if not isinstance(meta, dict):
            return None
        slim = {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")}}
        try:
            return key_of(from_dict(slim, self.kind))
        except ObjectError:
            return None


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, asyncio.IncompleteReadError):
        return "connection closed mid-response"
    return str(e) or type(e).__name__
