"""The API watch end to end: the real clusterdns process, a fake API server on 127.0.0.1, real DNS queries.

Every change made on the API server must be answered within a second; failures of the API (410,
outage, 5xx/429, stalls, malformed objects, a slow first list) must never lose the last known state.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dns.rcode
import pytest

from tests.conftest import StartServer
from tests.k8sapi.server import FakeApiServer
from tests.procs import Server, answers

pytestmark = pytest.mark.e2e

COREFILE = """\
.:{port} {
    bind 127.0.0.1
    kubernetes cluster.local in-addr.arpa {
        kubeconfig kubeconfig
%s    }
}
"""
WEB = "web.default.svc.cluster.local."
BENCH = os.environ.get("CLUSTERDNS_WATCH_BENCH") == "1"


def svc(name: str, ip: str = "None", ns: str = "default") -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def eps(name: str, service: str, endpoints: list[tuple[str, bool]], ns: str = "default") -> dict[str, Any]:
    return {"kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": name, "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
            "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints],
            "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}


def pod(name: str, ip: str, phase: str = "Running", ns: str = "default") -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]}, "status": {"phase": phase, "podIP": ip}}


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval=0.5)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def serve(start_server: StartServer, api: FakeApiServer, tmp_path: Path) -> Callable[..., Server]:
    """``serve(options, ready=True, env=None)``: clusterdns with a kubeconfig pointing at ``api``."""
    def start(options: str = "", ready: bool = True, env: dict[str, str] | None = None) -> Server:
        kubeconfig = Path(api.write_kubeconfig(tmp_path / "kubeconfig.json")).read_text()
        opts = "".join(f"        {line.strip()}\n" for line in options.splitlines() if line.strip())
        return start_server(COREFILE % opts, files={"kubeconfig": kubeconfig}, ready=ready, env=env)

    return start


def eventually(check: Callable[[], bool], timeout: float = 1.0) -> float:
    """Seconds until ``check()`` holds, polling every 10 ms; fails after ``timeout``."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def a(srv: Server, name: str = WEB) -> set[str]:
    return answers(srv.query(name), "A")


def rcode(srv: Server, name: str, rdtype: str = "A") -> int:
    return int(srv.query(name, rdtype).rcode())


def watches(api: FakeApiServer, plural: str) -> int:
    return sum(1 for _, p in api.requests if f"/{plural}?" in p and "watch=true" in p)


# ------------------------------------------------------------------------------ changes show up

def test_service_create_update_delete(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    srv = serve()
    assert rcode(srv, WEB) == dns.rcode.NXDOMAIN
    api.apply(svc("web", "10.0.0.10"))
    eventually(lambda: a(srv) == {"10.0.0.10"})
    api.apply(svc("web", "10.0.0.11"))
    eventually(lambda: a(srv) == {"10.0.0.11"})
    assert answers(srv.query("11.0.0.10.in-addr.arpa.", "PTR")) == {WEB}
    api.delete("Service", "default", "web")
    eventually(lambda: rcode(srv, WEB) == dns.rcode.NXDOMAIN)


def test_endpointslice_changes_and_not_ready_endpoints_drop_out(api: FakeApiServer,
                                                                 serve: Callable[..., Server]) -> None:
    api.apply(svc("db"))
    name = "db.default.svc.cluster.local."
    srv = serve()
    api.apply(eps("db-1", "db", [("10.1.0.1", True), ("10.1.0.2", True)]))
    eventually(lambda: a(srv, name) == {"10.1.0.1", "10.1.0.2"})
    api.apply(eps("db-1", "db", [("10.1.0.1", True), ("10.1.0.2", False)]))
    eventually(lambda: a(srv, name) == {"10.1.0.1"})
    api.apply(eps("db-2", "db", [("10.1.0.3", True)]))
    eventually(lambda: a(srv, name) == {"10.1.0.1", "10.1.0.3"})
    api.delete("EndpointSlice", "default", "db-1")
    eventually(lambda: a(srv, name) == {"10.1.0.3"})
    api.delete("EndpointSlice", "default", "db-2")
    eventually(lambda: rcode(srv, name) == dns.rcode.NXDOMAIN)  # headless, no ready endpoint left


def test_pods_verified_watches_live_pods(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    name = "10-2-0-7.default.pod.cluster.local."
    srv = serve("pods verified")
    api.apply(pod("p", "10.2.0.7", "Pending"))
    eventually(lambda: a(srv, name) == {"10.2.0.7"})
    api.apply(pod("p", "10.2.0.7", "Succeeded"))  # leaves the field selector: a DELETED event
    eventually(lambda: rcode(srv, name) == dns.rcode.NXDOMAIN)
    assert all("fieldSelector=status.phase%21%3DSucceeded%2Cstatus.phase%21%3DFailed%2Cstatus.phase%21%3DUnknown"
               in p for _, p in api.requests if "/pods?" in p)
    assert watches(api, "pods") == 1


def test_namespace_create_and_delete(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    name = "team.svc.cluster.local."
    srv = serve()
    assert rcode(srv, name) == dns.rcode.NXDOMAIN
    api.apply({"kind": "Namespace", "metadata": {"name": "team"}})
    eventually(lambda: rcode(srv, name) == dns.rcode.NOERROR)  # exists, no records: NODATA
    api.delete("Namespace", "", "team")
    eventually(lambda: rcode(srv, name) == dns.rcode.NXDOMAIN)


# ------------------------------------------------------------------------------ protocol

def test_410_relists_and_removes_deletions_made_in_the_gap(api: FakeApiServer,
                                                           serve: Callable[..., Server]) -> None:
    api.apply(svc("web", "10.0.0.10"))
    api.apply(svc("kept", "10.0.0.12"))
    srv = serve()
    assert a(srv) == {"10.0.0.10"}
    before = watches(api, "services")
    api.delete_silently("Service", "default", "web")
    api.drop_watches()
    eventually(lambda: watches(api, "services") > before, 2)  # back, with a resourceVersion now too old
    api.apply(svc("new", "10.0.0.13"))
    eventually(lambda: rcode(srv, WEB) == dns.rcode.NXDOMAIN)
    eventually(lambda: a(srv, "new.default.svc.cluster.local.") == {"10.0.0.13"})
    assert a(srv, "kept.default.svc.cluster.local.") == {"10.0.0.12"}
    srv.wait_for_line("services: resourceVersion")  # [INFO] ... services: resourceVersion N expired; listing again


def test_list_pagination_5000_services_in_pages_of_500(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    for i in range(5000):
        api.apply(svc(f"s{i}", f"10.3.{i // 250}.{i % 250 + 1}"))
    srv = serve()
    assert a(srv, "s0.default.svc.cluster.local.") == {"10.3.0.1"}
    assert a(srv, "s4999.default.svc.cluster.local.") == {"10.3.19.250"}
    lists = [p for _, p in api.requests if p.startswith("/api/v1/services?") and "watch=" not in p]
    assert len(lists) == 10 and all("limit=500" in p for p in lists)
    assert "continue=" not in lists[0] and all("continue=" in p for p in lists[1:])


def test_slow_first_list_answers_servfail_until_synced(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    api.apply(svc("web", "10.0.0.10"))
    api.delay_list(3)
    srv = serve("startup_timeout 1s")  # ready 1 s after the lists were sent, 2 s before they return
    srv.wait_for_line("starting server with unsynced Kubernetes API")
    assert rcode(srv, WEB) == dns.rcode.SERVFAIL
    assert rcode(srv, "nope.default.svc.cluster.local.") == dns.rcode.SERVFAIL  # not NXDOMAIN
    eventually(lambda: a(srv) == {"10.0.0.10"}, 5)
    # the Services list may land before the other kinds': synced (NXDOMAIN) follows shortly
    eventually(lambda: rcode(srv, "nope.default.svc.cluster.local.") == dns.rcode.NXDOMAIN, 3)


def test_malformed_objects_in_a_watch_are_logged_and_skipped(api: FakeApiServer,
                                                            serve: Callable[..., Server]) -> None:
    srv = serve()
    eventually(lambda: watches(api, "services") == 1, 2)
    api.inject_raw_event("Service", '{"type": "ADDED", "object": {"kind": "Serv')
    api.inject_raw_event("Service", '{"type": "ADDED", "object": {"kind": "Service", "metadata": '
                                    '{"name": "bad", "namespace": "default"}, "spec": {"clusterIP": "10.0.0.999"}}}')
    api.apply(svc("web", "10.0.0.10"))
    eventually(lambda: a(srv) == {"10.0.0.10"})
    assert "skipping Service default/bad" in srv.wait_for_line("skipping Service")
    srv.wait_for_line("skipping a watch line that is not JSON")
    assert rcode(srv, "bad.default.svc.cluster.local.") == dns.rcode.NXDOMAIN
    assert watches(api, "services") == 1  # the same stream carried on


# ------------------------------------------------------------------------------ failures

def test_api_outage_serves_the_last_known_state_then_catches_up(api: FakeApiServer,
                                                                 serve: Callable[..., Server]) -> None:
    api.apply(svc("web", "10.0.0.10"))
    api.apply(svc("old", "10.0.0.20"))
    srv = serve()
    api.stop()
    api.apply(svc("web", "10.0.0.11"))  # made while clusterdns cannot see the API
    api.delete("Service", "default", "old")
    api.apply(svc("new", "10.0.0.30"))
    until = time.monotonic() + 10
    while time.monotonic() < until:
        assert a(srv) == {"10.0.0.10"} and a(srv, "old.default.svc.cluster.local.") == {"10.0.0.20"}
        time.sleep(0.5)
    api.start()  # same port, same state and history
    eventually(lambda: a(srv) == {"10.0.0.11"}, 12)  # within the 10 s backoff cap
    assert rcode(srv, "old.default.svc.cluster.local.") == dns.rcode.NXDOMAIN
    assert a(srv, "new.default.svc.cluster.local.") == {"10.0.0.30"}
    srv.wait_for_line("reachable again")
    out = srv.output()
    assert out.count("API unreachable") == 1 and out.count("reachable again") == 1
    assert "[WARNING] plugin/kubernetes: Kubernetes API unreachable" in out


def test_500s_and_429_then_recovery(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    srv = serve("noendpoints")
    eventually(lambda: api.watch_count() == 2, 2)  # services and namespaces
    api.fail_next(4, 500)
    api.drop_watches()
    api.apply(svc("web", "10.0.0.10"))
    eventually(lambda: a(srv) == {"10.0.0.10"}, 5)
    line = srv.wait_for_line("API unreachable")
    assert "HTTP 500 InternalError: injected failure (500)" in line
    srv.wait_for_line("reachable again")
    api.fail_next(1, 429, retry_after=1)
    api.drop_watches()
    api.apply(svc("web", "10.0.0.11"))
    eventually(lambda: a(srv) == {"10.0.0.11"}, 3)
    srv.wait_for_line("HTTP 429 TooManyRequests")


def test_stalled_watch_is_detected_and_reconnected(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    srv = serve("noendpoints", env={"CLUSTERDNS_WATCH_IDLE_TIMEOUT": "1.5s"})
    eventually(lambda: watches(api, "services") == 1, 2)
    api.stall_watches(60)  # silent sockets, not even bookmarks; the old stream stays stuck for a minute
    api.apply(svc("web", "10.0.0.10"))
    srv.wait_for_line("not even a bookmark, for 1.5s", 4)
    eventually(lambda: watches(api, "services") >= 2)
    api.stall_watches(0)  # watches opened from now on work again
    eventually(lambda: a(srv) == {"10.0.0.10"}, 3)


# ------------------------------------------------------------------------------ measurements
# Run with CLUSTERDNS_WATCH_BENCH=1 (kept out of the default suite: they take a minute). The
# queries come from a separate process, so that the fake API server's work in this one (it shares
# the test's GIL) cannot inflate what is measured.

POLLER = """
import json, sys, time
import dns.message, dns.query
name, port, seconds, pause = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
seen, lat, last = [], [], None
end = time.monotonic() + seconds
while time.monotonic() < end:
    t = time.monotonic()
    r = dns.query.udp(dns.message.make_query(name, "A"), "127.0.0.1", port=port, timeout=2)
    now = time.monotonic()
    lat.append(now - t)
    ips = sorted(rd.to_text() for rrset in r.answer for rd in rrset)
    if ips != last:
        seen.append((now, ips))
        last = ips
    if pause:
        time.sleep(pause)
print(json.dumps({"seen": seen, "lat": lat}))
"""


def poll(srv: Server, name: str, seconds: float, pause: float = 0.0) -> subprocess.Popen[str]:
    """A process querying ``name`` for ``seconds``; its JSON report: answer changes and latencies."""
    return subprocess.Popen([sys.executable, "-c", POLLER, name, str(srv.port), str(seconds), str(pause)],
                            stdout=subprocess.PIPE, text=True)


def report(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=120)
    result: dict[str, Any] = json.loads(out)
    return result


def ms(values: list[float], q: float) -> str:
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(len(values) * q))] * 1e3:.2f} ms"


@pytest.mark.skipif(not BENCH, reason="set CLUSTERDNS_WATCH_BENCH=1 to measure")
def test_bench_event_to_answer_latency(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    api.apply(svc("web", "10.9.0.1"))
    srv = serve()
    n, gap = 1000, 0.02
    poller = poll(srv, WEB, n * gap * 1.5 + 2)  # applying takes time too
    time.sleep(0.5)
    sent = []
    for i in range(n):  # bounded: 1,000 updates, 20 ms apart (about 20 s)
        ip = f"10.9.{(i + 2) // 250}.{(i + 2) % 250 + 1}"
        sent.append((time.monotonic(), ip))
        api.apply(svc("web", ip))
        time.sleep(gap)
    first_seen = {ips[0]: t for t, ips in report(poller)["seen"] if len(ips) == 1}
    took = [first_seen[ip] - t for t, ip in sent if ip in first_seen]
    assert len(took) >= 0.99 * n, f"only {len(took)} of {n} updates were seen"
    print(f"\nevent->answer over {len(took)} updates: median {ms(took, 0.5)}, p99 {ms(took, 0.99)}, "
          f"max {ms(took, 1.0)}")


def _rss_kb(pid: int) -> int:
    m = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
    assert m
    return int(m[1])


@pytest.mark.skipif(not BENCH, reason="set CLUSTERDNS_WATCH_BENCH=1 to measure")
def test_bench_memory_10k_services_50k_endpoints(api: FakeApiServer, serve: Callable[..., Server]) -> None:
    srv = serve()
    base = _rss_kb(srv.proc.pid)
    for i in range(10_000):  # half ClusterIP, half headless; 5 endpoints each, 50 namespaces
        ns = f"ns{i % 50}"
        api.apply(svc(f"s{i}", f"10.64.{i // 250}.{i % 250 + 1}" if i % 2 else "None", ns))
        api.apply(eps(f"s{i}-x", f"s{i}", [(f"10.{128 + (i * 5 + k) // 62500}.{(i * 5 + k) // 250 % 250}."
                                             f"{(i * 5 + k) % 250 + 1}", True) for k in range(5)], ns))
    eventually(lambda: len(a(srv, "s9998.ns48.svc.cluster.local.")) == 5, 120)
    time.sleep(1)
    full = _rss_kb(srv.proc.pid)
    poller = poll(srv, "s1.ns1.svc.cluster.local.", 6, pause=0.002)
    time.sleep(0.5)
    api.compact()
    api.drop_watches()  # every kind gets 410: a relist of everything while the poller queries
    lat = report(poller)["lat"]
    relisted = _rss_kb(srv.proc.pid)
    print(f"\nRSS {base / 1024:.1f} MB empty -> {full / 1024:.1f} MB with 10k services + 50k endpoints "
          f"(+{(full - base) / 1024:.1f} MB), {relisted / 1024:.1f} MB after a full relist; "
          f"{len(lat)} queries during the relist: median {ms(lat, 0.5)}, p99 {ms(lat, 0.99)}, max {ms(lat, 1.0)}")
