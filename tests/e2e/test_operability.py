"""Operability against the real process: /health, /ready and /metrics over HTTP (urllib on
127.0.0.1), counters that move by exactly the queries sent, SIGTERM with lameduck, the reload
plugin and SIGUSR1 while a query loop runs, and a broken Corefile that changes nothing."""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rrset
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import StartServer
from tests.k8sapi.server import FakeApiServer
from tests.procs import Server, answers, free_port
from tests.upstreams import Upstream, dnsmasq

pytestmark = pytest.mark.e2e

CLUSTER = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.0.0.80, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-1
  namespace: default
  labels: {kubernetes.io/service-name: web}
  annotations: {endpoints.kubernetes.io/last-change-trigger-time: "2024-01-01T00:00:00Z"}
addressType: IPv4
endpoints:
- addresses: [10.1.0.5]
"""


def fill(text: str, **ports: int) -> str:
    """Put our HTTP (and upstream) ports into a Corefile; ``{port}`` is left to start_server."""
    for name, value in ports.items():
        text = text.replace("{" + name + "}", str(value))
    return text


def get(port: int, path: str, timeout: float = 3.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[Samples, dict[str, Any]]:
    """Every sample by (name, sorted labels), and the families by name."""
    status, text = get(port, "/metrics")
    assert status == 200
    fams = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams.values() for s in f.samples}
    return samples, fams


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much the samples of ``name`` matching ``labels`` grew."""
    def total(samples: Samples) -> float:
        return sum(v for (n, lbl), v in samples.items() if n == name and labels.items() <= dict(lbl).items())

    return total(after) - total(before)


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = dnsmasq({"www.example.org": ["192.0.2.10"]}, nxdomain=("nx.example.org",))
    yield up
    up.stop()


METRICS_COREFILE = """\
cluster.local:{port} {
    bind 127.0.0.1
    errors
    health 127.0.0.1:{hport}
    ready 127.0.0.1:{rport}
    prometheus 127.0.0.1:{mport}
    reload
    kubernetes {
        objects cluster.yaml
    }
}
example.org:{port} {
    bind 127.0.0.1
    prometheus 127.0.0.1:{mport}
    cache 30
    forward . 127.0.0.1:{up}
}
"""

# family -> the labels CoreDNS 1.14 gives it
LABELS = {
    "coredns_build_info": {"version", "revision", "goversion"},
    "coredns_panics_total": set(),
    "coredns_plugin_enabled": {"server", "zone", "view", "name"},
    "coredns_dns_requests_total": {"server", "zone", "view", "proto", "family", "type"},
    "coredns_dns_responses_total": {"server", "zone", "view", "rcode", "plugin"},
    "coredns_dns_request_duration_seconds_bucket": {"server", "zone", "view", "le"},
    "coredns_dns_request_size_bytes_bucket": {"server", "zone", "view", "proto", "le"},
    "coredns_dns_response_size_bytes_bucket": {"server", "zone", "view", "proto", "le"},
    "coredns_dns_do_requests_total": {"server", "zone", "view"},
    "coredns_cache_entries": {"server", "type", "zones", "view"},
    "coredns_cache_requests_total": {"server", "zones", "view"},
    "coredns_cache_hits_total": {"server", "type", "zones", "view"},
    "coredns_cache_misses_total": {"server", "zones", "view"},
    "coredns_proxy_request_duration_seconds_bucket": {"proxy_name", "to", "rcode", "le"},
    "coredns_health_request_duration_seconds_bucket": {"le"},
    "coredns_health_request_failures_total": set(),
    "coredns_kubernetes_dns_programming_duration_seconds_bucket": {"service_kind", "le"},
    "coredns_reload_failed_total": set(),
    "coredns_reload_version_info": {"hash", "value"},
    "process_resident_memory_bytes": set(),
    "process_cpu_seconds_total": set(),
}


def test_endpoints_and_metrics_count_exactly_what_was_sent(start_server: StartServer, upstream: Upstream) -> None:
    hport, rport, mport = free_port(), free_port(), free_port()
    srv = start_server(fill(METRICS_COREFILE, hport=hport, rport=rport, mport=mport, up=upstream.port),
                       files={"cluster.yaml": CLUSTER})
    assert get(hport, "/health") == (200, "OK")
    assert get(rport, "/ready") == (200, "OK")
    time.sleep(1.2)  # one health self-check
    before, _ = scrape(mport)
    server = {"server": f"dns://127.0.0.1:{srv.port}", "view": ""}
    cluster, org, dropped = {**server, "zone": "cluster.local."}, {**server, "zone": "example.org."}, \
        {**server, "zone": "dropped"}

    for _ in range(5):
        assert answers(srv.query("web.default.svc.cluster.local.")) == {"10.0.0.80"}
    for _ in range(3):
        assert srv.query("nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    for _ in range(2):
        assert answers(srv.query("web.default.svc.cluster.local.", tcp=True)) == {"10.0.0.80"}
    assert srv.query("web.default.svc.cluster.local.", "AAAA").rcode() == dns.rcode.NOERROR
    assert srv.query("web.default.svc.cluster.local.", "NAPTR").rcode() == dns.rcode.NOERROR
    for _ in range(2):
        assert srv.query("web.default.svc.cluster.local.", use_edns=0, want_dnssec=True).rcode() == 0
    for _ in range(3):  # one miss that goes upstream, then two cache hits
        assert answers(srv.query("www.example.org.")) == {"192.0.2.10"}
    assert srv.query("nx.example.org.").rcode() == dns.rcode.NXDOMAIN
    for _ in range(4):
        assert srv.query("example.net.").rcode() == dns.rcode.REFUSED

    after, fams = scrape(mport)
    for name, labels in LABELS.items():
        found = [dict(lbl) for (n, lbl) in after if n == name]
        assert found, f"{name} missing"
        assert all(set(lbl) == labels for lbl in found), (name, found)

    def d(name: str, **labels: str) -> float:
        return delta(before, after, name, **labels)

    assert d("coredns_dns_requests_total", **cluster) == 14
    assert d("coredns_dns_requests_total", **cluster, proto="udp", family="1", type="A") == 10
    assert d("coredns_dns_requests_total", **cluster, proto="tcp", type="A") == 2
    assert d("coredns_dns_requests_total", **cluster, type="AAAA") == 1
    assert d("coredns_dns_requests_total", **cluster, type="other") == 1  # NAPTR is not in CoreDNS's list
    assert d("coredns_dns_responses_total", **cluster, rcode="NOERROR", plugin="kubernetes") == 11
    assert d("coredns_dns_responses_total", **cluster, rcode="NXDOMAIN", plugin="kubernetes") == 3
    assert d("coredns_dns_do_requests_total", **cluster) == 2
    assert d("coredns_dns_request_duration_seconds_count", **cluster) == 14
    assert d("coredns_dns_request_size_bytes_count", **cluster, proto="udp") == 12
    assert d("coredns_dns_response_size_bytes_count", **cluster, proto="tcp") == 2
    assert d("coredns_dns_response_size_bytes_bucket", **cluster, proto="tcp", le="100") == 2

    assert d("coredns_dns_requests_total", **org) == 4
    assert d("coredns_dns_responses_total", **org, rcode="NOERROR", plugin="forward") == 1
    assert d("coredns_dns_responses_total", **org, rcode="NOERROR", plugin="cache") == 2
    assert d("coredns_dns_responses_total", **org, rcode="NXDOMAIN", plugin="forward") == 1
    assert d("coredns_cache_hits_total", server=server["server"], type="success") == 2
    assert d("coredns_cache_requests_total", server=server["server"]) == 4
    to = f"127.0.0.1:{upstream.port}"
    assert d("coredns_proxy_request_duration_seconds_count", proxy_name="forward", to=to) == 2

    assert d("coredns_dns_requests_total", **dropped) == 4
    assert d("coredns_dns_responses_total", **dropped, rcode="REFUSED", plugin="") == 4

    assert after[("coredns_plugin_enabled", tuple(sorted({**cluster, "name": "kubernetes"}.items())))] == 1
    assert ("coredns_plugin_enabled", tuple(sorted({**cluster, "name": "health"}.items()))) not in after
    assert d("coredns_panics_total") == 0
    assert after[("coredns_health_request_duration_seconds_count", ())] >= 1
    assert after[("coredns_health_request_failures_total", ())] == 0
    assert after[("coredns_kubernetes_dns_programming_duration_seconds_count", (("service_kind", "cluster_ip"),))] == 1
    assert after[("coredns_reload_failed_total", ())] == 0
    assert not any(n.endswith("_created") for n, _ in after)
    assert fams["coredns_dns_request_duration_seconds"].type == "histogram"


def test_a_listener_serves_only_the_paths_configured_on_it(start_server: StartServer) -> None:
    hport = free_port()
    srv = start_server(fill(".:{port} {\n    bind 127.0.0.1\n    health 127.0.0.1:{hport}\n}\n", hport=hport))
    assert get(hport, "/ready")[0] == 404
    assert get(hport, "/health") == (200, "OK")
    assert srv.proc.poll() is None


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    """A fake API server; requested before start_server, so it outlives the servers using it."""
    srv = FakeApiServer()
    srv.start()
    yield srv
    srv.stop()


def test_ready_waits_for_the_first_list_from_the_api(api: FakeApiServer, start_server: StartServer,
                                                     tmp_path: Path) -> None:
    pytest.importorskip("clusterdns.k8s.sources.api")
    api.delay_list(3.0)  # longer than ready's first "Still waiting on" line (2 s)
    kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
    rport = free_port()
    srv = start_server(fill(".:{port} {\n    bind 127.0.0.1\n    ready 127.0.0.1:{rport}\n"
                            "    kubernetes cluster.local {\n        kubeconfig {kc}\n    }\n}\n",
                            rport=rport).replace("{kc}", kubeconfig), ready=False)
    wait_for(lambda: _status(rport) is not None, 5)
    start = time.monotonic()
    assert get(rport, "/ready") == (503, "kubernetes")
    wait_for(lambda: get(rport, "/ready") == (200, "OK"), 6)
    assert time.monotonic() - start > 0.5  # it really waited for the delayed list
    srv.wait_ready()
    srv.wait_for_line('plugin/ready: Still waiting on: "kubernetes"', timeout=1)


def _status(port: int) -> int | None:
    try:
        return get(port, "/ready", timeout=1)[0]
    except OSError:
        return None


LAMEDUCK_COREFILE = """\
.:{port} {
    bind 127.0.0.1
    health 127.0.0.1:{hport} {
        lameduck 1s
    }
    ready 127.0.0.1:{rport}
    kubernetes cluster.local {
        objects cluster.yaml
    }
}
"""


def test_sigterm_lameduck(start_server: StartServer) -> None:
    hport, rport = free_port(), free_port()
    srv = start_server(fill(LAMEDUCK_COREFILE, hport=hport, rport=rport), files={"cluster.yaml": CLUSTER})
    assert get(rport, "/ready") == (200, "OK")
    # a kept-alive connection made before the signal must see the 503 too (coredns/coredns#4099)
    import http.client

    kept = http.client.HTTPConnection("127.0.0.1", rport, timeout=3)
    kept.request("GET", "/ready")
    assert kept.getresponse().read() == b"OK"

    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    while get(rport, "/ready", timeout=1)[0] != 503:
        assert time.monotonic() - start < 0.1, "/ready still 200 100 ms after SIGTERM"
        time.sleep(0.005)
    kept.request("GET", "/ready")
    resp = kept.getresponse()
    assert (resp.status, resp.read()) == (503, b"Shutting down")
    kept.close()
    # lameduck: DNS and /health keep serving
    served = 0
    while time.monotonic() - start < 0.8:
        assert answers(srv.query("web.default.svc.cluster.local.", timeout=1)) == {"10.0.0.80"}
        assert get(hport, "/health") == (200, "OK")
        served += 1
        time.sleep(0.05)
    assert served >= 5
    assert srv.proc.wait(1.0 + 2.0) == 0
    elapsed = time.monotonic() - start
    assert 1.0 <= elapsed < 3.0
    with pytest.raises(ConnectionRefusedError):  # closed after the lameduck
        dns.query.tcp(dns.message.make_query("web.default.svc.cluster.local.", "A"), "127.0.0.1", port=srv.port,
                      timeout=1)
    output = srv.output()
    assert "[INFO] SIGTERM: Shutting down servers then terminating" in output
    assert "[INFO] plugin/health: Going into lameduck mode for 1s" in output


def test_sigterm_without_lameduck_exits_at_once(start_server: StartServer) -> None:
    srv = start_server(".:{port} {\n    bind 127.0.0.1\n}\n")
    start = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(2.0) == 0
    assert time.monotonic() - start < 2.0


class SlowUpstream(threading.Thread):
    """A loopback UDP resolver that answers every query with 192.0.2.7 after ``delay`` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__(daemon=True)
        self.delay = delay
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(10)
        self.port = self.sock.getsockname()[1]
        self.asked = threading.Semaphore(0)

    def run(self) -> None:
        for _ in range(2):  # bounded: the two queries of the test
            try:
                data, addr = self.sock.recvfrom(4096)
            except OSError:
                return
            self.asked.release()
            reply = dns.message.make_response(dns.message.from_wire(data))
            reply.answer.append(dns.rrset.from_text(reply.question[0].name, 60, "IN", "A", "192.0.2.7"))
            threading.Timer(self.delay, self.sock.sendto, (reply.to_wire(), addr)).start()


def test_sigterm_answers_the_queries_in_flight_over_udp_and_tcp(start_server: StartServer) -> None:
    """Queries waiting on an upstream when SIGTERM arrives are answered before the exit, over TCP
    as over UDP: the listeners stop reading but keep their sockets until the answers are out."""
    upstream = SlowUpstream(delay=0.5)
    upstream.start()
    # prefer_udp: the query that came over TCP goes to the upstream over UDP too
    srv = start_server(f".:{{port}} {{\n    bind 127.0.0.1\n    forward . 127.0.0.1:{upstream.port} {{\n"
                       "        prefer_udp\n    }\n}\n")
    results: dict[str, Any] = {}

    def ask(proto: str) -> None:
        q = dns.message.make_query(f"{proto}.example.", "A")
        send = dns.query.tcp if proto == "tcp" else dns.query.udp
        try:
            results[proto] = send(q, "127.0.0.1", port=srv.port, timeout=5)
        except Exception as e:  # reported by the assertion below
            results[proto] = e

    clients = [threading.Thread(target=ask, args=(p,), daemon=True) for p in ("udp", "tcp")]
    for c in clients:
        c.start()
    for _ in clients:
        assert upstream.asked.acquire(timeout=5), "the queries never reached the upstream"
    srv.proc.send_signal(signal.SIGTERM)
    for c in clients:
        c.join(6)
    for proto in ("udp", "tcp"):
        r = results.get(proto)
        assert isinstance(r, dns.message.Message), f"{proto}: {r!r}"
        assert answers(r) == {"192.0.2.7"}, f"{proto}: {r}"
    assert srv.proc.wait(3) == 0
    upstream.sock.close()


class QueryLoop(threading.Thread):
    """``count`` queries over ``seconds`` (bounded); every one must be answered."""

    def __init__(self, srv: Server, name: str, count: int = 400, seconds: float = 4.0) -> None:
        super().__init__(daemon=True)
        self.srv, self.name, self.count, self.gap = srv, name, count, seconds / count
        self.answered = 0
        self.failures: list[str] = []

    def run(self) -> None:
        deadline = time.monotonic() + 30
        for _ in range(self.count):
            if time.monotonic() > deadline:
                break
            try:
                r = self.srv.query(self.name, timeout=2)
                if r.rcode() == dns.rcode.NOERROR and r.answer:
                    self.answered += 1
                else:
                    self.failures.append(dns.rcode.to_text(r.rcode()))
            except Exception as e:
                self.failures.append(repr(e))
            time.sleep(self.gap)


RELOAD_COREFILE = """\
.:{port} {
    bind 127.0.0.1
    errors
    prometheus 127.0.0.1:{mport}
    reload 2s 1s
    kubernetes cluster.local {
        objects cluster.yaml
        ttl TTL
    }
}
"""


def rewrite(srv: Server, text: str) -> None:
    """Replace the Corefile the way an editor or kubelet would: write aside, then rename."""
    tmp = srv.corefile.with_suffix(".new")
    tmp.write_text(text.replace("{port}", str(srv.port)))
    os.replace(tmp, srv.corefile)


def wait_for(cond: Any, timeout: float) -> float:
    start = time.monotonic()
    while not cond():
        assert time.monotonic() - start < timeout, "condition not met in time"
        time.sleep(0.05)
    return time.monotonic() - start


def test_reload_on_change_without_losing_a_query(start_server: StartServer) -> None:
    mport = free_port()
    text = fill(RELOAD_COREFILE, mport=mport)
    srv = start_server(text.replace("TTL", "5"), files={"cluster.yaml": CLUSTER})
    assert srv.query("web.default.svc.cluster.local.").answer[0].ttl == 5
    loop = QueryLoop(srv, "web.default.svc.cluster.local.")
    loop.start()
    time.sleep(0.5)
    rewrite(srv, text.replace("TTL", "30"))
    took = wait_for(lambda: srv.query("web.default.svc.cluster.local.").answer[0].ttl == 30, 2.5 + 1.5)
    loop.join(40)
    assert not loop.is_alive()
    assert loop.failures == [] and loop.answered == 400
    assert took <= 3.5
    assert srv.output().count("plugin/reload: Running configuration SHA512 = ") == 2
    samples, _ = scrape(mport)
    assert samples[("coredns_reload_failed_total", ())] == 0

    # a comment-only edit is not a change
    rewrite(srv, "# just a comment\n" + text.replace("TTL", "30"))
    time.sleep(3.0)
    assert srv.output().count("Running configuration SHA512") == 2


def test_broken_corefile_keeps_the_old_configuration(start_server: StartServer) -> None:
    mport = free_port()
    text = fill(RELOAD_COREFILE, mport=mport)
    srv = start_server(text.replace("TTL", "5"), files={"cluster.yaml": CLUSTER})
    rewrite(srv, text.replace("TTL", "forever"))
    line = srv.wait_for_line("plugin/reload: Corefile changed but reload failed", timeout=4)
    assert f"{srv.corefile}:8: kubernetes: ttl must be an integer" in line
    assert line.startswith("[ERROR] ")
    samples, _ = scrape(mport)
    assert samples[("coredns_reload_failed_total", ())] == 1
    assert srv.query("web.default.svc.cluster.local.").answer[0].ttl == 5  # still the old one
    time.sleep(2.6)  # the same broken content is not tried again
    assert srv.output().count("reload failed") == 1
    rewrite(srv, text.replace("TTL", "7"))
    wait_for(lambda: srv.query("web.default.svc.cluster.local.").answer[0].ttl == 7, 4)


def test_sigusr1_reloads(start_server: StartServer) -> None:
    text = ".:{port} {\n    bind 127.0.0.1\n    kubernetes cluster.local {\n        objects cluster.yaml\n" \
           "        ttl TTL\n    }\n}\n"
    srv = start_server(text.replace("TTL", "5"), files={"cluster.yaml": CLUSTER})
    rewrite(srv, text.replace("TTL", "9"))
    time.sleep(0.3)
    assert srv.query("web.default.svc.cluster.local.").answer[0].ttl == 5  # no reload plugin: no check
    srv.proc.send_signal(signal.SIGUSR1)
    wait_for(lambda: srv.query("web.default.svc.cluster.local.").answer[0].ttl == 9, 3)
    assert "[INFO] SIGUSR1: Reloading" in srv.output()
    assert srv.proc.poll() is None
