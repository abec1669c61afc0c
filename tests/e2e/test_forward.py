"""forward and loop in the real process, in front of real upstreams (dnsmasq, unbound) and of
loopback ports that swallow queries: byte-identical answers, UDP/TCP, truncation, failover,
health checks and recovery, the per-query deadline, except, resolv.conf, max_concurrent, kubernetes
zones staying local, and a forwarding loop stopping the process."""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest

from tests.conftest import StartServer
from tests.procs import Server, answers, free_port
from tests.upstreams import Blackhole, Upstream, dnsmasq, unbound

pytestmark = pytest.mark.e2e

BIG = [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(100)]  # 100 A records: ~1.6 kB over TCP


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = dnsmasq({"www.example": ["10.0.0.1"], "big.example": BIG}, nxdomain=("gone.example",))
    yield up
    up.stop()


def forwarding(start_server: StartServer, to: str, block: str = "", extra: str = "") -> Server:
    body = f" {{\n{block}\n }}" if block else ""
    return start_server(f".:{{port}} {{\n bind 127.0.0.1\n errors\n forward . {to}{body}\n{extra}\n}}\n")


def ask(port: int, name: str, *, tcp: bool = False, edns: bool = False, qid: int = 4711,
        timeout: float = 3.0) -> bytes:
    """The raw answer of 127.0.0.1:port to one query with a fixed ID."""
    q = dns.message.make_query(name, "A", use_edns=0 if edns else False, payload=4096)
    q.id = qid
    if tcp:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            wire = q.to_wire()
            s.sendall(len(wire).to_bytes(2, "big") + wire)
            size = int.from_bytes(_read(s, 2), "big")
            return _read(s, size)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(q.to_wire(), ("127.0.0.1", port))
        return s.recv(65535)


def _read(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed early")
        buf += chunk
    return buf


def ip(srv: Server, name: str = "www.example.") -> str:
    got = answers(srv.query(name))
    assert len(got) == 1, got
    return got.pop()


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()  # type: ignore[no-any-return]


def sample(text: str, name: str, **labels: str) -> float:
    found = [line for line in text.splitlines() if line.startswith(name)
             and all(f'{k}="{v}"' in line for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return float(found[0].rsplit(" ", 1)[1])


# --- answers -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("tcp", "edns"), [(False, False), (False, True), (True, False), (True, True)])
def test_answers_are_the_upstreams_byte_for_byte(start_server: StartServer, upstream: Upstream, tmp_path: Path,
                                                tcp: bool, edns: bool) -> None:
    ub = unbound(['example.test. 3600 IN SOA ns.example.test. host.example.test. 1 3600 900 86400 60',
                  'www.example.test. 300 IN A 10.2.0.1'], "example.test.", tmp_path)
    try:
        for up, names in ((upstream, ["www.example.", "gone.example."]),
                          (ub, ["www.example.test.", "nope.example.test."])):
            srv = forwarding(start_server, f"127.0.0.1:{up.port}")
            for name in names:
                direct = ask(up.port, name, tcp=tcp, edns=edns)
                assert ask(srv.port, name, tcp=tcp, edns=edns) == direct
                assert ask(srv.port, name, tcp=tcp, edns=edns, qid=999)[2:] == direct[2:]
    finally:
        ub.stop()


def test_truncation(start_server: StartServer, upstream: Upstream) -> None:
    srv = forwarding(start_server, f"127.0.0.1:{upstream.port}")
    # no EDNS: the client takes 512 bytes, the upstream's own truncated answer is what it gets
    small = dns.message.from_wire(ask(srv.port, "big.example."))
    assert small.flags & dns.flags.TC and 0 < len(small.answer[0]) < 100  # dnsmasq keeps what fits
    assert {r.to_text() for r in small.answer[0]} <= set(BIG)
    assert upstream.queries("big.example") == 1
    # EDNS 4096: dnsmasq caps UDP at 1232 bytes and truncates; forward asks again over TCP
    assert dns.message.from_wire(ask(upstream.port, "big.example.", edns=True)).flags & dns.flags.TC
    before = upstream.queries("big.example")
    full = dns.message.from_wire(ask(srv.port, "big.example.", edns=True))
    assert not full.flags & dns.flags.TC and len(full.answer[0]) == 100
    assert upstream.queries("big.example") - before == 2
    # over TCP: TCP upstream, all of it at once
    before = upstream.queries("big.example")
    assert len(srv.query("big.example.", tcp=True).answer[0]) == 100
    assert upstream.queries("big.example") - before == 1


def test_prefer_udp_retries_truncated_answers_over_tcp(start_server: StartServer, upstream: Upstream) -> None:
    srv = forwarding(start_server, f"127.0.0.1:{upstream.port}", "  prefer_udp")
    assert len(srv.query("big.example.", tcp=True).answer[0]) == 100
    assert upstream.queries("big.example") == 2  # UDP (truncated), then TCP


def test_force_tcp_needs_no_udp_upstream(start_server: StartServer, upstream: Upstream) -> None:
    """A port where only TCP answers (dnsmasq's UDP socket replaced by a silent one) still works."""
    tcp_only = upstream.port
    upstream.stop()
    back = dnsmasq({"www.example": ["10.0.0.1"]})
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mute:
        mute.bind(("127.0.0.1", tcp_only))
        proxy = subprocess.Popen([sys.executable, "-c", TCP_RELAY, str(tcp_only), str(back.port)],
                                 stdout=subprocess.PIPE, text=True)
        try:
            assert proxy.stdout is not None and proxy.stdout.readline().strip() == "ready"
            srv = forwarding(start_server, f"127.0.0.1:{tcp_only}", "  force_tcp")
            start = time.monotonic()
            assert ip(srv) == "10.0.0.1" and time.monotonic() - start < 1
            assert back.queries("www.example") == 1
        finally:
            back.stop()
            proxy.terminate()
            proxy.wait(5)
            if proxy.stdout is not None:
                proxy.stdout.close()


# A TCP-only relay: accepts on 127.0.0.1:argv[1], pipes each connection to 127.0.0.1:argv[2].
TCP_RELAY = """
import socket, sys, threading
def pipe(a, b):
    try:
        while (data := a.recv(65535)):
            b.sendall(data)
    except OSError:
        pass
    finally:
        a.close(); b.close()
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1]))); srv.listen(16); print("ready", flush=True)
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", int(sys.argv[2])))
    for a, b in ((c, u), (u, c)):
        threading.Thread(target=pipe, args=(a, b), daemon=True).start()
"""


# --- failures ----------------------------------------------------------------------------------

@pytest.fixture
def two() -> Iterator[tuple[Upstream, Upstream]]:
    a, b = dnsmasq({"www.example": ["10.0.0.1"]}), dnsmasq({"www.example": ["10.0.0.2"]})
    yield a, b
    a.stop()
    b.stop()


def test_sequential_failover_and_recovery_on_restart(start_server: StartServer,
                                                      two: tuple[Upstream, Upstream]) -> None:
    a, b = two
    mport = free_port()
    srv = forwarding(start_server, f"127.0.0.1:{a.port} 127.0.0.1:{b.port}", "  policy sequential",
                     f" prometheus 127.0.0.1:{mport}")
    assert {ip(srv) for _ in range(5)} == {"10.0.0.1"}
    a.stop()
    start = time.monotonic()
    assert {ip(srv) for _ in range(10)} == {"10.0.0.2"}  # refused at once: straight to the next
    assert time.monotonic() - start < 2
    text = metrics(mport)
    assert sample(text, "coredns_proxy_healthcheck_failures_total", proxy_name="forward", to=f"127.0.0.1:{a.port}") >= 1
    assert sample(text, "coredns_proxy_request_duration_seconds_count", proxy_name="forward",
                  to=f"127.0.0.1:{a.port}", rcode="NOERROR") == 5
    a.start()  # the same port again: a health check finds it and it is first again
    deadline = time.monotonic() + 5
    while ip(srv) != "10.0.0.1":
        assert time.monotonic() < deadline, "the restarted upstream was never used again"
        time.sleep(0.1)


def test_random_policy_spreads_and_survives_a_stopped_upstream(start_server: StartServer,
                                                                 two: tuple[Upstream, Upstream]) -> None:
    a, b = two
    srv = forwarding(start_server, f"127.0.0.1:{a.port} 127.0.0.1:{b.port}")
    assert {ip(srv) for _ in range(40)} == {"10.0.0.1", "10.0.0.2"}
    b.stop()
    assert {ip(srv) for _ in range(20)} == {"10.0.0.1"}


def test_a_silent_upstream_is_marked_down_skipped_then_recovers(start_server: StartServer) -> None:
    hole = Blackhole()
    b = dnsmasq({"www.example": ["10.0.0.2"]})
    a: Upstream | None = None
    try:
        srv = forwarding(start_server, f"127.0.0.1:{hole.port} 127.0.0.1:{b.port}",
                         "  policy sequential\n  health_check 100ms")
        start = time.monotonic()
        assert ip(srv) == "10.0.0.2"
        assert 1.9 < time.monotonic() - start < 3  # 2 s read timeout on the silent one, then the next
        time.sleep(2.5)  # two health checks (1 s timeout each) fail: down
        start = time.monotonic()
        assert ip(srv) == "10.0.0.2" and time.monotonic() - start < 0.5  # skipped without waiting
        hole.close()
        a = dnsmasq({"www.example": ["10.0.0.1"]}, port=hole.port)
        deadline = time.monotonic() + 5
        while ip(srv) != "10.0.0.1":
            assert time.monotonic() < deadline, "the upstream was never used again"
            time.sleep(0.1)
    finally:
        hole.close()
        b.stop()
        if a is not None:
            a.stop()


def test_servfail_within_the_deadline_when_every_upstream_is_gone(start_server: StartServer) -> None:
    holes = [Blackhole(), Blackhole()]
    try:
        srv = forwarding(start_server, " ".join(f"127.0.0.1:{h.port}" for h in holes))
        start = time.monotonic()
        r = srv.query("www.example.", timeout=10)
        took = time.monotonic() - start
        assert r.rcode() == dns.rcode.SERVFAIL
        assert 4.5 < took < 6
        line = srv.wait_for_line("plugin/errors")
        assert re.search(r"\[ERROR\] plugin/errors: 2 www\.example\. A: read udp 127\.0\.0\.1:\d+->127\.0\.0\.1:\d+: "
                         r"i/o timeout$", line), line
    finally:
        for h in holes:
            h.close()


def test_max_concurrent_refuses_the_rest(start_server: StartServer) -> None:
    hole = Blackhole()
    mport = free_port()
    try:
        srv = forwarding(start_server, f"127.0.0.1:{hole.port}", "  max_concurrent 2",
                         f" prometheus 127.0.0.1:{mport}")

        def one(i: int) -> int | None:
            try:
                return dns.message.from_wire(ask(srv.port, f"q{i}.example.", qid=i, timeout=1)).rcode()
            except TimeoutError:
                return None  # one of the two waiting on the silent upstream

        with ThreadPoolExecutor(8) as pool:
            first = [pool.submit(one, i) for i in range(2)]
            time.sleep(0.3)
            rest = list(pool.map(one, range(2, 8)))
            assert [f.result() for f in first] == [None, None]
        assert rest == [dns.rcode.REFUSED] * 6
        assert sample(metrics(mport), "coredns_forward_max_concurrent_rejects_total") == 6
    finally:
        hole.close()


# --- which names go upstream -------------------------------------------------------------------

def test_except_domains_stay_here(start_server: StartServer, upstream: Upstream) -> None:
    srv = forwarding(start_server, f"127.0.0.1:{upstream.port}", "  except Internal.Example corp.example")
    assert ip(srv) == "10.0.0.1"
    for name in ("internal.example.", "x.internal.example.", "a.b.corp.example."):
        assert srv.query(name).rcode() == dns.rcode.SERVFAIL  # nobody after forward answers
        assert upstream.queries(name) == 0
    assert upstream.queries("www.example") == 1


def test_from_zone_only(start_server: StartServer, upstream: Upstream) -> None:
    srv = start_server(f".:{{port}} {{\n bind 127.0.0.1\n forward example 127.0.0.1:{upstream.port}\n}}\n")
    assert ip(srv) == "10.0.0.1"
    assert srv.query("www.example.org.").rcode() == dns.rcode.SERVFAIL
    assert upstream.queries("www.example.org") == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="a resolv.conf names port 53: binding it needs root")
def test_resolv_conf_beside_the_corefile(start_server: StartServer) -> None:
    addr = f"127.53.{random.randrange(1, 255)}.{random.randrange(1, 255)}"
    up = dnsmasq({"www.example": ["10.0.0.9"]}, port=53, host=addr)
    try:
        srv = start_server(".:{port} {\n bind 127.0.0.1\n forward . etc/resolv.conf\n}\n",
                           files={"etc/resolv.conf": f"search svc.cluster.local\nnameserver {addr}\noptions ndots:5\n"})
        assert ip(srv) == "10.0.0.9"
        assert up.queries("www.example") == 1
    finally:
        up.stop()


SERVICE = """---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 80}]}
"""


@pytest.mark.parametrize("fallthrough", [False, True])
def test_kubernetes_zone_never_reaches_the_upstream(start_server: StartServer, upstream: Upstream,
                                                    fallthrough: bool) -> None:
    block = " {\n  objects svc.yaml\n  fallthrough\n }" if fallthrough else " {\n  objects svc.yaml\n }"
    srv = start_server(f".:{{port}} {{\n bind 127.0.0.1\n kubernetes cluster.local{block}\n"
                       f" forward . 127.0.0.1:{upstream.port}\n}}\n", files={"svc.yaml": SERVICE})
    assert ip(srv, "web.default.svc.cluster.local.") == "10.96.0.20"
    missing = srv.query("nope.default.svc.cluster.local.")
    assert ip(srv) == "10.0.0.1"
    assert upstream.queries("web.default.svc.cluster.local") == 0
    if fallthrough:  # NXDOMAIN in the zone goes on to forward (dnsmasq: REFUSED, it knows no such name)
        assert upstream.queries("nope.default.svc.cluster.local") == 1
    else:
        assert missing.rcode() == dns.rcode.NXDOMAIN
        assert upstream.queries("nope.default.svc.cluster.local") == 0


# --- loop ----------------------------------------------------------------------------------------

def test_forwarding_to_ourselves_is_a_fatal_loop(start_server: StartServer) -> None:
    srv = start_server(".:{port} {\n forward . 127.0.0.1:{port}\n loop\n}\n", ready=False)
    assert srv.proc.wait(10) == 1
    line = srv.wait_for_line("plugin/loop")
    assert re.fullmatch(rf'\[FATAL\] plugin/loop: Loop \(127\.0\.0\.1:\d+ -> 127\.0\.0\.1:{srv.port}\) detected for '
                        r'zone "\.", see https://coredns\.io/plugins/loop#troubleshooting\. '
                        r'Query: "HINFO \d+\.\d+\."', line), line


def test_no_loop_probes_once_and_keeps_serving(start_server: StartServer, upstream: Upstream) -> None:
    srv = forwarding(start_server, f"127.0.0.1:{upstream.port}", extra=" loop")
    deadline = time.monotonic() + 5
    while not any("query[HINFO]" in ln for ln in list(upstream.lines)):
        assert time.monotonic() < deadline, "no probe reached the upstream"
        time.sleep(0.05)
    time.sleep(0.5)
    assert srv.proc.poll() is None and ip(srv) == "10.0.0.1"
    probes = [ln for ln in upstream.lines if "query[HINFO]" in ln]
    assert len(probes) == 1 and re.search(r"query\[HINFO\] \d+\.\d+ from 127\.0\.0\.1", probes[0]), probes


def test_several_forwards_in_one_block_split_by_zone(start_server: StartServer) -> None:
    inner, outer = dnsmasq({"db.corp.example": ["10.9.0.1"]}), dnsmasq({"www.example": ["10.0.0.1"]})
    try:
        srv = start_server(
            ".:{port} {\n  bind 127.0.0.1\n  errors\n"
            f"  forward corp.example 127.0.0.1:{inner.port}\n  forward . 127.0.0.1:{outer.port}\n}}\n")
        assert answers(srv.query("db.corp.example.")) == {"10.9.0.1"}
        assert answers(srv.query("www.example.")) == {"10.0.0.1"}
        assert inner.queries("www.example") == 0 and outer.queries("db.corp.example") == 0
    finally:
        inner.stop()
        outer.stop()
