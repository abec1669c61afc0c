"""The ``cache`` plugin: positive and negative answers kept as wire bytes, served with counted-down TTLs.

Syntax (CoreDNS's)::

    cache [TTL] [ZONES...] {
        success CAPACITY [TTL] [MINTTL]
        denial CAPACITY [TTL] [MINTTL]
        prefetch AMOUNT [DURATION [PERCENTAGE%]]
        serve_stale [DURATION [immediate|verify]]
        servfail DURATION
        disable success|denial [ZONES...]
        keepttl
    }

An entry is the downstream answer split at its TTL fields; a hit joins the pieces with the
remaining TTL and splices in the client's ID, RD bit and question (its original case): a few
bytes operations, no DNS library. See docs/plugins/cache.md.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import math
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar

from cachetools import TLRUCache

from clusterdns.corefile import Directive
from clusterdns.duration import parse_duration
from clusterdns.metrics import REGISTRY, Family
from clusterdns.plugin import (
    NOERROR,
    NXDOMAIN,
    SERVFAIL,
    Next,
    Request,
    Response,
    Result,
    SiteConfig,
    register,
    resolve,
)
from clusterdns.wire import CD, RD, T_AXFR, T_IXFR, T_NS, T_OPT, T_SOA, TC, RRSpan, WireError, scan

log = logging.getLogger("clusterdns.cache")

Clock = Callable[[], float]

MAX_TTL, MAX_DENIAL_TTL, MIN_TTL = 3600, 1800, 5
DEFAULT_CAPACITY = 10000
MAX_SERVFAIL_TTL = 300.0

ENTRIES = REGISTRY.declare(Family(
    "coredns_cache_entries", "gauge", "The number of elements in the cache.", ("server", "type", "zones", "view")))
REQUESTS = REGISTRY.declare(Family(
    "coredns_cache_requests_total", "counter", "The count of cache requests.", ("server", "zones", "view")))
HITS = REGISTRY.declare(Family(
    "coredns_cache_hits_total", "counter", "The count of cache hits.", ("server", "type", "zones", "view")))
MISSES = REGISTRY.declare(Family(
    "coredns_cache_misses_total", "counter",
    "The count of cache misses. Deprecated, derive misses from cache hits/requests counters.",
    ("server", "zones", "view")))
PREFETCH = REGISTRY.declare(Family(
    "coredns_cache_prefetch_total", "counter", "The number of times the cache has prefetched a cached item.",
    ("server", "zones", "view")))
DROPS = REGISTRY.declare(Family(
    "coredns_cache_drops_total", "counter",
    "The number responses that are not cached, because the reply is malformed.", ("server", "zones", "view")))
STALE = REGISTRY.declare(Family(
    "coredns_cache_served_stale_total", "counter", "The number of requests served from stale cache entries.",
    ("server", "zones", "view")))
EVICTIONS = REGISTRY.declare(Family(
    "coredns_cache_evictions_total", "counter", "The count of cache evictions.", ("server", "type", "zones", "view")))

_FLAGS = struct.Struct(">H")
Key = tuple[str, int, int, bool, bool]  # (lower-cased qname, qtype, qclass, DO, CD)


@dataclass(slots=True)
class Entry:
    """One cached answer: the bytes after the question, split where the TTL fields sit."""

    kind: str  # "success" or "denial"
    rcode: int
    heads: tuple[bytes, bytes]  # flags + counts, with RD clear / set (the client's RD is echoed)
    parts: tuple[bytes, ...]  # joined by the 4-byte TTL to give everything after the question
    ttl: int  # the TTL it was stored with (capped), in seconds
    stored: float  # clock time it was stored
    hits: int = 0  # hits in the current run without a gap of the prefetch DURATION (CoreDNS's freq)
    last_hit: float = -math.inf
    refreshing: bool = False  # a background refresh is already in flight

    def build(self, req: Request, ttl: int) -> bytes:
        """The answer for ``req``: its ID, RD bit and question, every TTL set to ``ttl``."""
        return (req.data[:2] + self.heads[(req.flags >> 8) & 1] + req.question
                + ttl.to_bytes(4, "big").join(self.parts))


class _Store(TLRUCache):  # type: ignore[type-arg]
    """A TLRU cache that counts capacity evictions (expiry is not an eviction)."""

    def __init__(self, maxsize: int, ttu: Callable[[Key, Entry, float], float], timer: Clock,
                 on_evict: Callable[[], None]) -> None:
        super().__init__(maxsize, ttu, timer)
        self.on_evict = on_evict

    def popitem(self) -> tuple[Key, Entry]:
        item: tuple[Key, Entry] = super().popitem()
        self.on_evict()
        return item


@dataclass
class Config:
    """The parsed directive."""

    zones: list[str]
    success_cap: int = DEFAULT_CAPACITY
    success_ttl: int = MAX_TTL
    success_min: int = MIN_TTL
    denial_cap: int = DEFAULT_CAPACITY
    denial_ttl: int = MAX_DENIAL_TTL
    denial_min: int = MIN_TTL
    prefetch: int = 0  # 0: off
    prefetch_window: float = 60.0
    prefetch_percentage: int = 10
    stale: float = 0.0  # how long past expiry an entry may still be served; 0: off
    verify_stale: bool = False
    servfail_ttl: float = 0.0  # 0: SERVFAIL is not cached
    keepttl: bool = False
    no_success: list[str] = field(default_factory=list)
    no_denial: list[str] = field(default_factory=list)


def _under(qname: str, zones: list[str]) -> bool:
    """Whether ``qname`` is one of ``zones`` or below one (on a label boundary)."""
    return any(z == "." or qname == z or qname.endswith("." + z) for z in zones)


_OUTSIDE, _BYPASS, _CACHED = 0, 1, 2  # where a name stands with a cache (Cache._scope)
SCOPES = 10_000  # names whose scope is remembered


class _Zones:
    """``_under`` for a fixed zone list, as one C-level ``endswith`` on the hot path."""

    __slots__ = ("exact", "suffixes", "root")

    def __init__(self, zones: list[str]) -> None:
        self.root = "." in zones
        self.exact = frozenset(zones)
        self.suffixes = tuple("." + z for z in zones)

    def __contains__(self, qname: str) -> bool:
        return self.root or qname.endswith(self.suffixes) or qname in self.exact


class Cache:
    """The cache of one server block."""

    name: ClassVar[str] = "cache"

    def __init__(self, cfg: Config, server: str = "", clock: Clock = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        # Zones where nothing may be cached (kubeadm's `disable success|denial cluster.local`):
        # their queries go straight on, counted as requests and misses, with no lookup or scan.
        self.bypass = _Zones([z for z in cfg.no_success if _under(z, cfg.no_denial)])
        self.zones = _Zones(cfg.zones)
        self._scopes: dict[str, int] = {}  # qname -> _OUTSIDE, _BYPASS or _CACHED
        zones = ",".join(cfg.zones)
        self._lbl = (server, zones, "")
        self._lbl_type = {k: (server, k, zones, "") for k in ("success", "denial")}
        self._requests = self._counter(REQUESTS, self._lbl)
        self._misses = self._counter(MISSES, self._lbl)
        self._hits = {k: self._counter(HITS, lbl) for k, lbl in self._lbl_type.items()}
        self.success = self._store(cfg.success_cap, "success")
        self.denial = self._store(cfg.denial_cap, "denial")
        self._tasks: set[asyncio.Task[None]] = set()

    # --- set-up ----------------------------------------------------------------------------
    @staticmethod
    def _counter(family: Family, labels: tuple[str, ...]) -> dict[tuple[str, ...], float]:
        """The registry's value dict for ``family``, with ``labels`` present (the hot path adds to it)."""
        values = REGISTRY.values[family.name]
        values.setdefault(labels, 0)
        return values

    def _store(self, capacity: int, kind: str) -> _Store:
        labels = self._lbl_type[kind]
        stale = self.cfg.stale

        def ttu(_key: Key, entry: Entry, _now: float) -> float:
            return entry.stored + entry.ttl + stale

        store = _Store(capacity, ttu, self.clock, lambda: REGISTRY.inc(EVICTIONS.name, labels))
        REGISTRY.set_fn(ENTRIES.name, labels, lambda: self._size(store))
        return store

    @staticmethod
    def _size(store: _Store) -> float:
        store.expire()
        return float(len(store))

    async def close(self) -> None:
        """Cancel background refreshes still running (at shutdown or reload)."""
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- queries ---------------------------------------------------------------------------
    def serve(self, req: Request, call_next: Next) -> Result:
        scope = self._scopes.get(req.qname)
        if scope is None:
            scope = self._scope(req.qname)
        if scope == _OUTSIDE or req.qtype in (T_AXFR, T_IXFR):
            return call_next(req)
        self._requests[self._lbl] += 1
        if scope == _BYPASS:
            self._misses[self._lbl] += 1
            return call_next(req)
        key = (req.qname, req.qtype, req.qclass, req.do, bool(req.flags & CD))
        try:
            entry = self.success[key]
        except KeyError:
            entry = self.denial.get(key)
        if entry is None:
            self._misses[self._lbl] += 1
            res = call_next(req)
            return self._keep(req, key, res) if isinstance(res, Response) else self._keep_later(req, key, res)
        self._hits[entry.kind][self._lbl_type[entry.kind]] += 1
        now = self.clock()
        ttl = entry.ttl - int(now - entry.stored)
        if ttl > 0:
            if self.cfg.prefetch and self._popular(entry, now, ttl):
                REGISTRY.inc(PREFETCH.name, self._lbl)
                self._refresh(req, key, call_next, entry, prefetch=True)
            return Response(entry.build(req, entry.ttl if self.cfg.keepttl else ttl), entry.rcode, "cache")
        # Expired but kept for serve_stale (the store drops entries past their stale window).
        if self.cfg.verify_stale:
            return self._verified(req, key, call_next, entry)
        self._refresh(req, key, call_next, entry, prefetch=False)
        return self._stale(req, entry)

    def _stale(self, req: Request, entry: Entry) -> Response:
        REGISTRY.inc(STALE.name, self._lbl)
        return Response(entry.build(req, 0), entry.rcode, "cache")

    async def _verified(self, req: Request, key: Key, call_next: Next, entry: Entry) -> Response:
        """``verify_stale``: ask downstream first; the stale entry only if that fails."""
        try:
            resp = await resolve(call_next(req))
        except Exception as e:  # the stale answer is better than the failure (RFC 8767)
            log.debug("cache: refreshing %s failed, serving stale: %s", req.qname, e)
        else:
            if resp.rcode in (NOERROR, NXDOMAIN):
                return self._keep(req, key, resp)
        return self._stale(req, entry)

    def _scope(self, qname: str) -> int:
        """Whether ``qname`` is outside our zones, inside but never cached, or cached; remembered
        (clients ask the same names over and over), the memo cleared when it grows past SCOPES."""
        scope = _OUTSIDE if qname not in self.zones else _BYPASS if qname in self.bypass else _CACHED
        if len(self._scopes) >= SCOPES:
            self._scopes.clear()
        self._scopes[qname] = scope
        return scope

    def _popular(self, entry: Entry, now: float, ttl: int) -> bool:
        """Count the hit; popular = AMOUNT hits without a gap of DURATION, and the TTL runs low."""
        entry.hits = 1 if now - entry.last_hit > self.cfg.prefetch_window else entry.hits + 1
        entry.last_hit = now
        threshold = math.ceil(self.cfg.prefetch_percentage / 100 * entry.ttl)
        return entry.hits >= self.cfg.prefetch and ttl <= threshold and not entry.refreshing

    def _refresh(self, req: Request, key: Key, call_next: Next, entry: Entry, prefetch: bool) -> None:
        """Ask downstream again in the background; the client has its answer already."""
        if entry.refreshing:
            return
        entry.refreshing = True
        task = asyncio.get_running_loop().create_task(self._fetch(copy.copy(req), key, call_next, entry, prefetch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch(self, req: Request, key: Key, call_next: Next, old: Entry, prefetch: bool) -> None:
        try:
            resp = await resolve(call_next(req))
            # RFC 8767: only a real answer replaces what we have; a failure keeps the old entry.
            if resp.rcode in (NOERROR, NXDOMAIN):
                new = self.admit(req, key, resp)
                if new is not None and prefetch:  # keep the popularity gathered so far
                    new.hits, new.last_hit = old.hits, old.last_hit
        except Exception as e:
            log.debug("cache: background refresh of %s failed: %s", req.qname, e)
        finally:
            old.refreshing = False

    # --- storing ---------------------------------------------------------------------------
    async def _keep_later(self, req: Request, key: Key, pending: Awaitable[Response]) -> Response:
        return self._keep(req, key, await pending)

    def _keep(self, req: Request, key: Key, resp: Response) -> Response:
        """Store ``resp`` if it is cacheable and answer with the stored copy (its TTLs as hits will see them)."""
        entry = self.admit(req, key, resp)
        return resp if entry is None else Response(entry.build(req, entry.ttl), entry.rcode, resp.plugin)

    def admit(self, req: Request, key: Key, resp: Response) -> Entry | None:
        """Store ``resp`` when it is cacheable; the stored entry, or None."""
        wire = resp.wire
        if len(wire) < 12 or _FLAGS.unpack_from(wire, 2)[0] & TC:
            return None
        rcode = wire[3] & 0xF
        if rcode not in (NOERROR, NXDOMAIN) and not (rcode == SERVFAIL and self.cfg.servfail_ttl > 0):
            return None
        try:
            spans = scan(wire)
        except WireError:
            REGISTRY.inc(DROPS.name, self._lbl)
            return None
        qend = req.qend
        if wire[4:6] != b"\x00\x01" or wire[12 : qend - 4].lower() != req.data[12 : qend - 4].lower() \
                or wire[qend - 4 : qend] != req.data[qend - 4 : qend]:
            REGISTRY.inc(DROPS.name, self._lbl)  # an answer to some other question
            return None
        opts = [s for s in spans if s.rtype == T_OPT]
        if opts and (len(opts) > 1 or opts[0] is not spans[-1] or wire[opts[0].ttl_at]):
            return None  # OPT not last (cutting it would move records) or an extended RCODE
        records = spans[:-1] if opts else spans
        kind_ttl = self._classify(wire, rcode, records, req.qname)
        if kind_ttl is None:
            return None
        kind, ttl = kind_ttl
        if ttl <= 0:
            return None
        end = opts[0].start if opts else len(wire)
        counts = wire[4:10] + (int.from_bytes(wire[10:12], "big") - len(opts)).to_bytes(2, "big")
        flags = _FLAGS.unpack_from(wire, 2)[0]
        heads = (_FLAGS.pack(flags & ~RD) + counts, _FLAGS.pack(flags | RD) + counts)
        parts, pos = [], qend
        for s in records:
            parts.append(wire[pos : s.ttl_at])
            pos = s.ttl_at + 4
        parts.append(wire[pos:end])
        entry = Entry(kind, rcode, heads, tuple(parts), ttl, self.clock())
        store, other = (self.success, self.denial) if kind == "success" else (self.denial, self.success)
        other.pop(key, None)  # a key lives in one store only, so a lookup can stop at the first hit
        store[key] = entry
        return entry

    def _classify(self, wire: bytes, rcode: int, records: list[RRSpan], qname: str) -> tuple[str, int] | None:
        """("success" | "denial", TTL to cache for) as CoreDNS's response.Typify, or None."""
        cfg = self.cfg
        if rcode == SERVFAIL:
            kind, ttl = "denial", int(cfg.servfail_ttl)
        else:
            authority = {s.rtype for s in records if s.section == 1}
            if rcode == NOERROR and any(s.section == 0 for s in records):
                kind = "success"
            elif T_SOA in authority:
                kind = "denial"  # NXDOMAIN or NODATA with the zone's SOA (RFC 2308)
            elif rcode == NOERROR and T_NS in authority:
                kind = "success"  # a referral
            else:
                return None  # negative without SOA: not cacheable (RFC 2308 section 5)
            ttls = [_ttl_of(wire, s, kind == "denial") for s in records]
            if kind == "success":
                ttl = max(cfg.success_min, min(min(ttls), cfg.success_ttl))
            else:
                ttl = max(cfg.denial_min, min(min(ttls), cfg.denial_ttl))
        if _under(qname, cfg.no_success if kind == "success" else cfg.no_denial):
            return None
        return kind, ttl


def _ttl_of(wire: bytes, span: RRSpan, negative: bool) -> int:
    """A record's TTL; an SOA in a negative answer counts as min(TTL, MINIMUM) (RFC 2308 section 5)."""
    ttl: int = struct.unpack_from(">I", wire, span.ttl_at)[0]
    if negative and span.rtype == T_SOA and span.section == 1:
        ttl = min(ttl, struct.unpack_from(">I", wire, span.end - 4)[0])
    return ttl


# --- the directive ----------------------------------------------------------------------------

def _fqdn(zone: str) -> str:
    zone = zone.lower()
    return zone if zone.endswith(".") else zone + "."


def _int(opt: Directive, text: str, what: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise opt.error(f"{what} must be an integer, not {text!r}") from None
    if value < low:
        raise opt.error(f"{what} can not be {'zero or ' if low == 1 else ''}negative: {value}")
    return value


def _duration(opt: Directive, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise opt.error(str(e)) from None


def _capacities(opt: Directive) -> tuple[int, int | None, int | None]:
    """``CAPACITY [TTL [MINTTL]]`` of ``success`` and ``denial``."""
    a = opt.args
    if not 1 <= len(a) <= 3:
        raise opt.arg_error()
    cap = _int(opt, a[0], "capacity", 1)
    ttl = _int(opt, a[1], "cache TTL", 1) if len(a) > 1 else None
    minttl = _int(opt, a[2], "cache min TTL", 0) if len(a) > 2 else None
    return cap, ttl, minttl


def parse_config(d: Directive, site: SiteConfig) -> Config:
    """Read ``cache [TTL] [ZONES...] { ... }``; every error names file:line and the plugin."""
    args = list(d.args)
    ttl: int | None = None
    if args and args[0].lstrip("-").isdigit():
        ttl = _int(d, args.pop(0), "cache TTL", 1)
    cfg = Config(zones=[_fqdn(z) for z in args] or list(site.zones))
    if ttl is not None:
        cfg.success_ttl = cfg.denial_ttl = ttl
    for opt in d.options():
        a = opt.args
        match opt.name:
            case "success":
                cfg.success_cap, max_ttl, min_ttl = _capacities(opt)
                cfg.success_ttl = cfg.success_ttl if max_ttl is None else max_ttl
                cfg.success_min = cfg.success_min if min_ttl is None else min_ttl
            case "denial":
                cfg.denial_cap, max_ttl, min_ttl = _capacities(opt)
                cfg.denial_ttl = cfg.denial_ttl if max_ttl is None else max_ttl
                cfg.denial_min = cfg.denial_min if min_ttl is None else min_ttl
            case "prefetch":
                if not 1 <= len(a) <= 3:
                    raise opt.arg_error()
                cfg.prefetch = _int(opt, a[0], "prefetch amount", 0)
                if len(a) > 1:
                    cfg.prefetch_window = _duration(opt, a[1])
                if len(a) > 2:
                    if not a[2].endswith("%"):
                        raise opt.error(f"last character of percentage should be `%`, but is: {a[2][-1:]!r}")
                    pct = _int(opt, a[2][:-1], "percentage", 0)
                    if not 10 <= pct <= 90:
                        raise opt.error(f"percentage should fall in range [10, 90]: {pct}")
                    cfg.prefetch_percentage = pct
            case "serve_stale":
                if len(a) > 2:
                    raise opt.arg_error()
                cfg.stale = _duration(opt, a[0]) if a else 3600.0
                if cfg.stale <= 0:
                    raise opt.error("invalid duration for serve_stale")
                if len(a) > 1:
                    if a[1].lower() not in ("immediate", "verify"):
                        raise opt.error(f"invalid value for serve_stale refresh mode: {a[1]}")
                    cfg.verify_stale = a[1].lower() == "verify"
            case "servfail":
                if len(a) != 1:
                    raise opt.arg_error()
                cfg.servfail_ttl = _duration(opt, a[0])
                if cfg.servfail_ttl > MAX_SERVFAIL_TTL:
                    raise opt.error(f"caching SERVFAIL responses over {MAX_SERVFAIL_TTL:.0f}s is not permitted")
            case "disable":
                if not a or a[0] not in ("success", "denial"):
                    raise opt.error("disable takes success or denial, then optional zones")
                zones = [_fqdn(z) for z in a[1:]] or list(cfg.zones)
                (cfg.no_success if a[0] == "success" else cfg.no_denial).extend(zones)
            case "keepttl":
                if a:
                    raise opt.arg_error()
                cfg.keepttl = True
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    return cfg


@register("cache")
def setup(d: Directive, site: SiteConfig) -> Cache:
    cache = Cache(parse_config(d, site), site.server_label)
    site.on_shutdown.append(cache.close)
    return cache
