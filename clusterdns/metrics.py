"""Process-wide metrics, counted in plain Python structures on the hot path.

prometheus-client's own objects take a lock per update (1-2 µs); here an increment is a dict
update keyed by the label tuple (~0.2 µs). The prometheus plugin exports these at scrape time
through a custom Collector, with CoreDNS's names, labels and buckets (see FAMILIES).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable
from dataclasses import dataclass, field

# CoreDNS's plugin.TimeBuckets: ExponentialBuckets(0.00025, 2, 16)
TIME_BUCKETS = tuple(0.00025 * 2**i for i in range(16))
# plugin.SlimTimeBuckets: ExponentialBuckets(0.00025, 10, 5)
SLIM_TIME_BUCKETS = tuple(0.00025 * 10**i for i in range(5))
SIZE_BUCKETS = (0, 100, 200, 300, 400, 511, 1023, 2047, 4095, 8291, 16e3, 32e3, 48e3, 64e3)
PROGRAMMING_BUCKETS = tuple(0.001 * 2**i for i in range(20))


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
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value
        self.n += 1


class Registry:
    """Values by family name and label tuple; families must be declared first."""

    def __init__(self) -> None:
        self.families: dict[str, Family] = {}
        self.values: dict[str, dict[tuple[str, ...], float]] = {}
        self.histograms: dict[str, dict[tuple[str, ...], Histogram]] = {}
        self.gauge_fns: dict[str, dict[tuple[str, ...], Callable[[], float]]] = {}

    def declare(self, family: Family) -> Family:
        self.families.setdefault(family.name, family)
        self.values.setdefault(family.name, {})
        self.histograms.setdefault(family.name, {})
        self.gauge_fns.setdefault(family.name, {})
        return family

    def inc(self, name: str, labels: tuple[str, ...] = (), n: float = 1) -> None:
        vals = self.values[name]
        vals[labels] = vals.get(labels, 0) + n

    def set(self, name: str, labels: tuple[str, ...], value: float) -> None:
        self.values[name][labels] = value

    def set_fn(self, name: str, labels: tuple[str, ...], fn: Callable[[], float]) -> None:
        """A gauge read at scrape time (e.g. cache entries)."""
        self.gauge_fns[name][labels] = fn

    def observe(self, name: str, labels: tuple[str, ...], value: float) -> None:
        hists = self.histograms[name]
        h = hists.get(labels)
        if h is None:
            h = hists[labels] = Histogram(self.families[name].buckets)
        h.observe(value)


REGISTRY = Registry()
