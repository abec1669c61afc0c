"""The in-process scale test: build the Store/Index for a big cluster, time single changes, weigh it.

Run once per size in a fresh interpreter (``python -m bench.scale --services N``) so the RSS it
reports belongs to that size alone; it prints one JSON object. The run compares the memory with
CoreDNS's published formula, MB = (Pods + Services) x 0.000858 + 49.1, counting endpoints as Pods.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import statistics
import time
from dataclasses import replace
from typing import Any

from bench.gen import Cluster, documents, service_doc
from bench.measure import percentile, rss_kib
from clusterdns.k8s.index import Index
from clusterdns.k8s.objects import KINDS, EndpointSlice, from_dict
from clusterdns.k8s.records import Options
from clusterdns.k8s.store import Store
from clusterdns.wire import T_A

ZONES = ["cluster.local.", "in-addr.arpa.", "ip6.arpa."]


def coredns_mb(services: int, pods: int) -> float:
    """CoreDNS's memory formula (coredns/deployment Scaling_CoreDNS.md, without autopath)."""
    return (pods + services) * 0.000858 + 49.1


def _stats(samples: list[float]) -> dict[str, float]:
    return {"median_us": statistics.median(samples) * 1e6, "p90_us": percentile(samples, 90) * 1e6,
            "max_us": max(samples) * 1e6}


def run(services: int, endpoints_per_service: int, updates: int, seed: int = 1) -> dict[str, Any]:
    """Build, warm and update one cluster of ``services``; the numbers as a dict."""
    c = Cluster(services, endpoints_per_service)
    rng = random.Random(seed)
    # which Services the updates pick from (made before the freeze below, like everything long-lived)
    cluster_ip = [i for i in range(services) if not c.headless(i)]
    headless = [i for i in range(services) if c.headless(i)]
    gc.collect()
    rss0 = rss_kib()
    index = Index(ZONES, 30)
    opts = Options(("cluster.local.",))  # the default Corefile's: no endpoint_pod_names
    store = Store(index, opts)
    t0 = time.perf_counter()
    store.replace(KINDS, (from_dict(d, pod_names=opts.endpoint_pod_names) for d in documents(c)))
    build_s = time.perf_counter() - t0
    gc.collect()
    gc.freeze()  # as the API source does after every list: a full collection would rescan the cluster
    rss_built = rss_kib()
    t0 = time.perf_counter()
    for i in range(services):  # what the first query for each name pays, once per change
        index.answer(c.fqdn(i), T_A)
    warm_s = time.perf_counter() - t0
    gc.collect()
    rss_warm = rss_kib()

    # A ClusterIP Service moved to another IP and back: one Service's records re-derived.
    moved: dict[int, bool] = {}
    svc_times = []
    for _ in range(updates):
        i = rng.choice(cluster_ip)
        moved[i] = not moved.get(i, False)
        obj = from_dict(service_doc(c, i, moved[i]))
        t0 = time.perf_counter()
        store.upsert(obj)
        svc_times.append(time.perf_counter() - t0)
        if index.answer(c.fqdn(i), T_A) is None:
            raise AssertionError(f"{c.fqdn(i)} vanished after an update")
    # A headless Service's first endpoint flips readiness: its slice, hence its records, change.
    slice_times = []
    for _ in range(updates if headless and endpoints_per_service else 0):
        i = rng.choice(headless)
        key = ("EndpointSlice", c.namespace(i), f"svc-{i}-x7k2p")
        sl = store.objects[key]
        assert isinstance(sl, EndpointSlice)
        first = sl.endpoints[0]
        obj = replace(sl, endpoints=(replace(first, ready=not first.ready), *sl.endpoints[1:]))
        t0 = time.perf_counter()
        store.upsert(obj)
        slice_times.append(time.perf_counter() - t0)

    pods = c.endpoints
    return {
        "services": services, "endpoints": pods, "names": len(index),
        "build_s": build_s, "warm_s": warm_s,
        "rss_base_mb": rss0 / 1024, "rss_delta_mb": (rss_built - rss0) / 1024,
        "rss_warm_delta_mb": (rss_warm - rss0) / 1024, "rss_total_mb": rss_warm / 1024,
        "coredns_formula_mb": coredns_mb(services, pods),
        "service_update": _stats(svc_times),
        "slice_update": _stats(slice_times) if slice_times else {},
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="clusterdns in-process scale test (one size per process)")
    p.add_argument("--services", type=int, required=True)
    p.add_argument("--endpoints-per-service", type=int, default=5)
    p.add_argument("--updates", type=int, default=200)
    a = p.parse_args(argv)
    print(json.dumps(run(a.services, a.endpoints_per_service, a.updates)))


if __name__ == "__main__":
    main()
