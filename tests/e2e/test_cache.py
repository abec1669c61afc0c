"""The cache plugin in the real process, in front of a real upstream (unbound) reached through forward,
and in front of the kubernetes plugin (kubeadm's ``disable success|denial cluster.local``)."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import StartServer
from tests.procs import Server, answers, free_port
from tests.upstreams import Upstream, unbound

pytestmark = pytest.mark.e2e

ZONE = "example.test."
LOCAL_DATA = [
    f"{ZONE} 3600 IN SOA ns.{ZONE} host.{ZONE} 1 3600 900 86400 {{minimum}}",
    *(f"{n}.{ZONE} 300 IN A 10.1.0.{i}" for i, n in enumerate(("a", "b", "c", "d", "ttl"), 1)),
    f"short.{ZONE} 1 IN A 10.1.1.1",
    f"pop.{ZONE} 10 IN A 10.1.2.1",
]




def start_unbound(tmp_path: Path, minimum: int = 2) -> Upstream:
    return unbound([d.format(minimum=minimum) for d in LOCAL_DATA], ZONE, tmp_path)


@pytest.fixture
def upstream(tmp_path: Path) -> Iterator[Upstream]:
    up = start_unbound(tmp_path)
    yield up
    up.stop()


def cached(start_server: StartServer, upstream: Upstream, cache: str) -> Server:
    """clusterdns forwarding everything to ``upstream`` with ``cache`` configured."""
    return start_server(f".:{{port}} {{\n bind 127.0.0.1\n errors\n forward . 127.0.0.1:{upstream.port}\n"
                        f" {cache}\n}}\n")


def wait_for(condition: object, timeout: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.05)
    return False


def test_second_query_never_reaches_the_upstream(start_server: StartServer, upstream: Upstream) -> None:
    srv = cached(start_server, upstream, "cache")
    first = srv.query(f"a.{ZONE}")
    second = srv.query("A.Example.TEST.")
    assert answers(first) == answers(second) == {"10.1.0.1"}
    assert second.question[0].name.to_text() == "A.Example.TEST."
    assert upstream.queries(f"a.{ZONE}") == 1
    assert srv.query(f"a.{ZONE}", "AAAA").rcode() == dns.rcode.NOERROR  # another key: asked upstream
    assert upstream.queries(f"a.{ZONE}") == 2


def test_ttl_counts_down(start_server: StartServer, upstream: Upstream) -> None:
    srv = cached(start_server, upstream, "cache")
    first = srv.query(f"ttl.{ZONE}").answer[0].ttl
    time.sleep(2.05)
    second = srv.query(f"ttl.{ZONE}").answer[0].ttl
    assert first == 300 and second in (298, 297)
    assert upstream.queries(f"ttl.{ZONE}") == 1


def test_cache_ttl_caps_what_the_upstream_says(start_server: StartServer, upstream: Upstream) -> None:
    srv = cached(start_server, upstream, "cache 30")
    assert srv.query(f"b.{ZONE}").answer[0].ttl == 30
    assert srv.query(f"b.{ZONE}").answer[0].ttl in (30, 29) and upstream.queries(f"b.{ZONE}") == 1


@pytest.mark.parametrize(
    "minimum, cache, seconds",
    [
        (2, "cache {\n  denial 100 30 0\n }", 2),  # RFC 2308: the SOA's MINIMUM (unbound sends min(TTL, MINIMUM))
        (3600, "cache {\n  denial 100 2 0\n }", 2),  # bounded by the denial TTL
    ],
    ids=["soa-minimum", "denial-ttl"],
)
def test_nxdomain_cached_per_rfc2308(start_server: StartServer, tmp_path: Path, minimum: int, cache: str,
                                     seconds: int) -> None:
    up = start_unbound(tmp_path, minimum)
    try:
        srv = cached(start_server, up, cache)
        first = srv.query(f"nope.{ZONE}")
        assert first.rcode() == dns.rcode.NXDOMAIN and first.authority[0].ttl == seconds
        hit = srv.query(f"nope.{ZONE}")
        assert hit.rcode() == dns.rcode.NXDOMAIN and hit.authority[0].ttl <= seconds
        assert up.queries(f"nope.{ZONE}") == 1
        time.sleep(seconds + 0.1)
        assert srv.query(f"nope.{ZONE}").rcode() == dns.rcode.NXDOMAIN
        assert up.queries(f"nope.{ZONE}") == 2
    finally:
        up.stop()


def test_capacity_evicts_the_least_recently_used(start_server: StartServer, upstream: Upstream) -> None:
    srv = cached(start_server, upstream, "cache {\n  success 2\n }")
    for name in ("a", "b", "a", "c", "a", "b"):
        srv.query(f"{name}.{ZONE}")
    # a stayed (used last before c arrived), b was evicted by c and asked again.
    assert [upstream.queries(f"{n}.{ZONE}") for n in ("a", "b", "c")] == [1, 2, 1]


def test_serve_stale_answers_after_the_upstream_is_gone(start_server: StartServer, upstream: Upstream) -> None:
    srv = cached(start_server, upstream, "cache {\n  success 100 30 0\n  serve_stale 1h\n }")
    assert srv.query(f"short.{ZONE}").answer[0].ttl == 1
    upstream.stop()
    time.sleep(1.1)
    stale = srv.query(f"short.{ZONE}")
    assert stale.rcode() == dns.rcode.NOERROR and answers(stale) == {"10.1.1.1"} and stale.answer[0].ttl == 0


def test_prefetch_refreshes_a_popular_entry_before_it_expires(start_server: StartServer, upstream: Upstream) -> None:
    srv = cached(start_server, upstream, "cache {\n  prefetch 2 1m 90%\n }")
    started = time.monotonic()
    assert srv.query(f"pop.{ZONE}").answer[0].ttl == 10
    srv.query(f"pop.{ZONE}")  # first hit
    time.sleep(1.05)
    low = srv.query(f"pop.{ZONE}")  # second hit with 9 s of 10 left: at 90 %, refresh
    assert low.answer[0].ttl == 9
    # The refreshed entry is back at the full TTL, well before the old one would have expired.
    assert wait_for(lambda: srv.query(f"pop.{ZONE}").answer[0].ttl == 10)
    assert upstream.queries(f"pop.{ZONE}") == 2 and time.monotonic() - started < 5


SERVICE = """\
apiVersion: v1
kind: Namespace
metadata: {{name: default}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
"""
NEW_SERVICE = """\
---
apiVersion: v1
kind: Service
metadata: {name: fresh, namespace: default}
spec: {clusterIP: 10.0.9.9, ports: [{name: http, port: 80}]}
"""
KUBEADM = """\
.:{port} {
    bind 127.0.0.1
    errors
    kubernetes cluster.local {
        objects objects.yaml
        ttl 30
    }
    cache 30 {
        disable success cluster.local
        disable denial cluster.local
    }
}
"""


def test_kubeadm_disable_does_not_hide_cluster_changes(start_server: StartServer) -> None:
    files = {"objects.yaml": SERVICE.format(ip="10.0.9.1")}
    kubeadm = start_server(KUBEADM, files)
    control = start_server(KUBEADM.replace("disable", "# disable"), files)  # caches cluster.local for 30 s
    web, fresh = "web.default.svc.cluster.local.", "fresh.default.svc.cluster.local."
    for srv in (kubeadm, control):
        assert answers(srv.query(web)) == {"10.0.9.1"}
        assert srv.query(fresh).rcode() == dns.rcode.NXDOMAIN
    for srv in (kubeadm, control):
        (srv.corefile.parent / "objects.yaml").write_text(SERVICE.format(ip="10.0.9.2") + NEW_SERVICE)

    assert wait_for(lambda: answers(kubeadm.query(web)) == {"10.0.9.2"}, timeout=5)
    assert wait_for(lambda: answers(kubeadm.query(fresh)) == {"10.0.9.9"}, timeout=5)
    # Without `disable`, the same process still serves what it cached (the test's own control),
    # although it has re-read its objects by now (they are polled every second).
    time.sleep(1.2)
    assert answers(control.query(web)) == {"10.0.9.1"} and control.query(fresh).rcode() == dns.rcode.NXDOMAIN


def sample(text: str, name: str, **labels: str) -> float:
    """The value of the one sample of ``name`` carrying ``labels`` in a /metrics page."""
    found = [line for line in text.splitlines() if line.startswith(name + "{")
             and all(f'{k}="{v}"' in line for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return float(found[0].rsplit(" ", 1)[1])


def test_metrics_with_coredns_names(start_server: StartServer, upstream: Upstream) -> None:
    mport = free_port()
    srv = cached(start_server, upstream, f"cache 30 example.test {{\n  success 1\n }}\n prometheus 127.0.0.1:{mport}")
    for name in ("a", "a", "b", "nope", "nope"):
        srv.query(f"{name}.{ZONE}")
    srv.query("not.cached.invalid.")  # outside the cache's zones: not counted
    with urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=5) as r:
        text = r.read().decode()
    common = {"server": f"dns://127.0.0.1:{srv.port}", "zones": ZONE, "view": ""}
    assert sample(text, "coredns_cache_requests_total", **common) == 5
    assert sample(text, "coredns_cache_misses_total", **common) == 3
    assert sample(text, "coredns_cache_hits_total", type="success", **common) == 1
    assert sample(text, "coredns_cache_hits_total", type="denial", **common) == 1
    assert sample(text, "coredns_cache_entries", type="success", **common) == 1
    assert sample(text, "coredns_cache_entries", type="denial", **common) == 1
    assert sample(text, "coredns_cache_evictions_total", type="success", **common) == 1  # b pushed a out
    assert sample(text, "coredns_dns_responses_total", plugin="cache", rcode="NOERROR") == 1
    assert sample(text, "coredns_dns_responses_total", plugin="cache", rcode="NXDOMAIN") == 1
