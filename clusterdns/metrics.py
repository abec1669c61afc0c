"""Process-wide metrics, counted in plain Python structures on the hot path.

prometheus-client's own objects take a lock per update (1-2 µs); here an increment is a dict
update keyed by the label tuple (~0.2 µs). ``Collector`` exports everything at scrape time with
CoreDNS's names, labels and buckets, and ``exposition()`` renders it with prometheus-client.

Plugins declare their families at import (``REGISTRY.declare``) and count with ``inc``, ``set``,
``set_fn`` and ``observe``. The five per-query DNS families are special: one ``Meter`` per
(server, zone) counts each answered query with a single dict update keyed by everything the
families need, and ``Registry.fold`` sums those counts into the families when scraped.
"""

from __future__ import annotations

import logging
import platform
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from clusterdns import __version__
from clusterdns.wire import RCODE_NAMES

if TYPE_CHECKING:
    from clusterdns.plugin import Request, Response

log = logging.getLogger("clusterdns.metrics")

# CoreDNS's plugin.TimeBuckets: ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS = tuple(0.00025 * 2**i for i in range(16))
# plugin.SlimTimeBuckets: ExponentialBuckets(0.00025, 10, 5)
SLIM_TIME_BUCKETS = tuple(0.00025 * 10**i for i in range(5))
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
# The bucket of every possible message size (0-65535), so the hot path indexes instead of bisecting.
SIZE_BUCKET_OF = bytes(bisect_left(SIZE_BUCKETS, n) for n in range(65536))
PROGRAMMING_BUCKETS = tuple(0.001 * 2**i for i in range(20))

Labels = tuple[str, ...]


@dataclass(frozen=True)
class Family:
    """One metric family as CoreDNS exports it."""

    name: str
    kind: str  # "counter", "gauge" or "histogram"
    help: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


@dataclass
class Histogram:
    """Cumulative-at-export bucket counts, plus sum and count."""

    bounds: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1

    def add(self, bucket: int, n: int, total: float) -> None:
        """``n`` observations already sorted into ``bucket``, summing to ``total``."""
        self.counts[bucket] += n
        self.total += total
        self.n += n

    def copy(self) -> Histogram:
        return Histogram(self.bounds, list(self.counts), self.total, self.n)


class Registry:
    """Values by family name and label tuple; families must be declared first."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.values: dict[str, dict[Labels, float]] = {}
        self.histograms: dict[str, dict[Labels, Histogram]] = {}
        self.gauge_fns: dict[str, dict[Labels, Callable[[], float]]] = {}
        self.meters: dict[tuple[str, str], Meter] = {}

    def declare(self, family: Family) -> Family:
        self.families.setdefault(family.name, family)
        self.values.setdefault(family.name, {})
        self.histograms.setdefault(family.name, {})
        self.gauge_fns.setdefault(family.name, {})
        return family

    def inc(self, name: str, labels: Labels = (), n: float = 1) -> None:
        vals = self.values[name]
        vals[labels] = vals.get(labels, 0) + n

    def set(self, name: str, labels: Labels, value: float) -> None:
        self.values[name][labels] = value

    def set_fn(self, name: str, labels: Labels, fn: Callable[[], float]) -> None:
        """A gauge read at scrape time (e.g. cache entries)."""
        self.gauge_fns[name][labels] = fn

    def observe(self, name: str, labels: Labels, value: float) -> None:
        hists = self.histograms[name]
        h = hists.get(labels)
        if h is None:
            h = hists[labels] = Histogram(self.families[name].buckets)
        h.observe(value)

    def observe_programming(self, service_kind: str, seconds: float) -> None:
        """The kubernetes plugin's DNS programming latency (its Store calls this)."""
        self.observe(PROGRAMMING.name, (service_kind,), seconds)

    def meter(self, server: str, zone: str) -> Meter:
        """The counter of queries for ``zone`` on ``server``; the same one across reloads."""
        m = self.meters.get((server, zone))
        if m is None:
            m = self.meters[(server, zone)] = Meter(server, zone)
        return m

    def fold(self) -> tuple[dict[str, dict[Labels, float]], dict[str, dict[Labels, Histogram]]]:
        """Every family's samples: what was declared and counted, plus the meters summed in."""
        values = {name: dict(v) for name, v in self.values.items()}
        hists = {name: {k: h.copy() for k, h in hs.items()} for name, hs in self.histograms.items()}
        for m in self.meters.values():
            m.fold_into(values, hists)
        return values, hists


REGISTRY = Registry()

# --- the families CoreDNS's server, health, reload and kubernetes plugins export ------------------
BUILD_INFO = REGISTRY.declare(Family(
    "coredns_build_info", "gauge",
    "A metric with a constant '1' value labeled by version, revision, and goversion from which CoreDNS was built.",
    ("version", "revision", "goversion")))
PANICS = REGISTRY.declare(Family("coredns_panics_total", "counter", "A metrics that counts the number of panics."))
PLUGIN_ENABLED = REGISTRY.declare(Family(
    "coredns_plugin_enabled", "gauge",
    "A metric that indicates whether a plugin is enabled on per server and zone basis.",
    ("server", "zone", "view", "name")))
REQUESTS = REGISTRY.declare(Family(
    "coredns_dns_requests_total", "counter", "Counter of DNS requests made per zone, protocol and family.",
    ("server", "zone", "view", "proto", "family", "type")))
DURATION = REGISTRY.declare(Family(
    "coredns_dns_request_duration_seconds", "histogram",
    "Histogram of the time (in seconds) each request took per zone.", ("server", "zone", "view"), TIME_BUCKETS))
REQUEST_SIZE = REGISTRY.declare(Family(
    "coredns_dns_request_size_bytes", "histogram",
    "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
    ("server", "zone", "view", "proto"), SIZE_BUCKETS))
DO_REQUESTS = REGISTRY.declare(Family(
    "coredns_dns_do_requests_total", "counter", "Counter of DNS requests with DO bit set per zone.",
    ("server", "zone", "view")))
RESPONSE_SIZE = REGISTRY.declare(Family(
    "coredns_dns_response_size_bytes", "histogram", "Size of the returned response in bytes.",
    ("server", "zone", "view", "proto"), SIZE_BUCKETS))
RESPONSES = REGISTRY.declare(Family(
    "coredns_dns_responses_total", "counter", "Counter of response status codes.",
    ("server", "zone", "view", "rcode", "plugin")))
HEALTH_DURATION = REGISTRY.declare(Family(
    "coredns_health_request_duration_seconds", "histogram", "Histogram of the time (in seconds) each request took.",
    (), SLIM_TIME_BUCKETS))
HEALTH_FAILURES = REGISTRY.declare(Family(
    "coredns_health_request_failures_total", "counter", "The number of times the health check failed."))
PROGRAMMING = REGISTRY.declare(Family(
    "coredns_kubernetes_dns_programming_duration_seconds", "histogram",
    "Histogram of the time (in seconds) it took to program a dns instance.", ("service_kind",), PROGRAMMING_BUCKETS))
RELOAD_FAILED = REGISTRY.declare(Family(
    "coredns_reload_failed_total", "counter", "Counter of the number of failed reload attempts."))
RELOAD_VERSION = REGISTRY.declare(Family(
    "coredns_reload_version_info", "gauge",
    "A metric with a constant '1' value labeled by hash, and value which type of hash generated.",
    ("hash", "value")))

REGISTRY.set(BUILD_INFO.name, (__version__, "", f"python{platform.python_version()}"), 1)

# The `type` label: CoreDNS's list of monitored query types, anything else is "other".
TYPE_LABELS = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 15: "MX", 16: "TXT", 28: "AAAA", 33: "SRV", 43: "DS",
    46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 64: "SVCB", 65: "HTTPS", 251: "IXFR", 252: "AXFR", 255: "ANY",
}
_OTHER = 0  # the qtype key under which every unlisted type is counted (bounds the key space)


class Meter:
    """Counts the answered queries of one (server, zone) for the five per-query DNS families.

    ``record`` is the whole hot-path cost of metrics: two table lookups, one bisect and one dict update keyed by
    (proto, family, qtype, DO, rcode, plugin, request-size bucket, response-size bucket, duration
    bucket), whose value holds the count and the sums the histograms need.
    """

    __slots__ = ("server", "zone", "counts")

    def __init__(self, server: str, zone: str) -> None:
        self.server = server
        self.zone = zone
        self.counts: dict[tuple[Any, ...], list[float]] = {}

    def record(self, req: Request, resp: Response, size: int, seconds: float) -> None:
        qtype = req.qtype if req.qtype in TYPE_LABELS else _OTHER
        qsize = len(req.data)
        key = (req.proto, req.family, qtype, req.do, resp.rcode, resp.plugin, SIZE_BUCKET_OF[qsize],
               SIZE_BUCKET_OF[size], bisect_left(TIME_BUCKETS, seconds))
        v = self.counts.get(key)
        if v is None:
            v = self.counts[key] = [0, 0, 0, 0.0]
        v[0] += 1
        v[1] += qsize
        v[2] += size
        v[3] += seconds

    def fold_into(self, values: dict[str, dict[Labels, float]], hists: dict[str, dict[Labels, Histogram]]) -> None:
        """Add this meter's counts to the families' samples."""
        base = (self.server, self.zone, "")  # view: "" (no view plugin)
        requests, responses, do = values[REQUESTS.name], values[RESPONSES.name], values[DO_REQUESTS.name]
        for (proto, fam, qtype, dobit, rcode, plugin, qb, rb, tb), (n, qbytes, rbytes, secs) in self.counts.items():
            count = int(n)
            rk = (*base, proto, str(fam), TYPE_LABELS.get(qtype, "other"))
            requests[rk] = requests.get(rk, 0) + count
            ck = (*base, RCODE_NAMES.get(rcode, f"RCODE{rcode}"), plugin)
            responses[ck] = responses.get(ck, 0) + count
            if dobit:
                do[base] = do.get(base, 0) + count
            _hist(hists[DURATION.name], base, TIME_BUCKETS).add(tb, count, secs)
            _hist(hists[REQUEST_SIZE.name], (*base, proto), SIZE_BUCKETS).add(qb, count, qbytes)
            _hist(hists[RESPONSE_SIZE.name], (*base, proto), SIZE_BUCKETS).add(rb, count, rbytes)


def _hist(hists: dict[Labels, Histogram], labels: Labels, bounds: tuple[float, ...]) -> Histogram:
    h = hists.get(labels)
    if h is None:
        h = hists[labels] = Histogram(bounds)
    return h


def go_float(x: float) -> str:
    """A bucket bound as Go's client writes it (``16000``, not ``16000.0``)."""
    return str(int(x)) if x == int(x) and abs(x) < 1e21 else repr(float(x))


class Collector:
    """prometheus-client's view of a Registry: metric families built at scrape time."""

    def __init__(self, registry: Registry = REGISTRY) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        values, hists = self.registry.fold()
        for fam in self.registry.families.values():
            labels = list(fam.labels)
            if fam.kind == "histogram":
                hf = HistogramMetricFamily(fam.name, fam.help, labels=labels)
                samples = hists[fam.name] or ({(): Histogram(fam.buckets)} if not fam.labels else {})
                for key, h in samples.items():
                    cumulative, buckets = 0, []
                    for bound, c in zip((*map(go_float, h.bounds), "+Inf"), h.counts, strict=True):
                        cumulative += c
                        buckets.append((bound, cumulative))
                    hf.add_metric(list(key), buckets, h.total)
                yield hf
                continue
            vals = values[fam.name]
            if fam.kind == "counter":
                cf = CounterMetricFamily(fam.name, fam.help, labels=labels)
                for key, v in (vals or ({(): 0} if not fam.labels else {})).items():
                    cf.add_metric(list(key), v)
                yield cf
                continue
            gf = GaugeMetricFamily(fam.name, fam.help, labels=labels)
            for key, v in vals.items():
                gf.add_metric(list(key), v)
            for key, fn in self.registry.gauge_fns[fam.name].items():
                try:
                    gf.add_metric(list(key), fn())
                except Exception as e:  # one broken gauge must not fail the scrape
                    log.debug("metrics: gauge %s%s: %s", fam.name, key, e)
            yield gf


_exposition: Any = None  # the prometheus-client CollectorRegistry, built on first scrape


def exposition() -> tuple[bytes, str]:
    """The text exposition (coredns_* families, process_*, python_*) and its content type."""
    global _exposition
    from prometheus_client import (
        CollectorRegistry,
        GCCollector,
        PlatformCollector,
        ProcessCollector,
        disable_created_metrics,
        generate_latest,
    )
    from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

    if _exposition is None:
        disable_created_metrics()  # type: ignore[no-untyped-call]
        reg = CollectorRegistry()
        reg.register(Collector())
        ProcessCollector(registry=reg)
        PlatformCollector(registry=reg)
        GCCollector(registry=reg)
        _exposition = reg
    return generate_latest(_exposition), CONTENT_TYPE_PLAIN_0_0_4
