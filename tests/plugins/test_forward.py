"""The forward plugin's logic against fake upstreams: configuration, zone matching, policies,
failover, health checks, the attempt and time bounds, truncation retry and max_concurrent."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar, cast

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from clusterdns.corefile import CorefileError, parse
from clusterdns.metrics import REGISTRY
from clusterdns.plugin import NOERROR, REFUSED, SERVFAIL, Request, Response, SiteConfig, resolve
from clusterdns.plugins import forward as fw
from clusterdns.plugins.forward import (
    Config,
    Forward,
    NoHealthy,
    Proxy,
    host_port,
    parse_config,
    parse_to,
    resolv_conf,
)
from clusterdns.server.dispatch import Dispatcher
from clusterdns.upstream import UpstreamError
from clusterdns.wire import parse_query

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def query(name: str = "www.example.org.", proto: str = "udp", *, edns: int | None = None, qid: int = 4242) -> Request:
    q = dns.message.make_query(name, "A", use_edns=0 if edns else False, payload=edns or 1232)
    q.id = qid
    return parse_query(q.to_wire(), proto, ("127.0.0.1", 5300))


class Fake:
    """An upstream that answers with one A record, or fails, or hangs, as the test says."""

    def __init__(self, label: str, *, ip: str = "192.0.2.1", rcode: int = NOERROR, tc_over_udp: bool = False) -> None:
        self.label = label
        self.ip = ip
        self.rcode = rcode
        self.tc_over_udp = tc_over_udp
        self.mode = "ok"  # ok | fail | hang
        self.calls: list[tuple[str, float]] = []  # (proto, timeout) of every exchange, probes too
        self.probes = 0
        self.closed = False

    async def exchange(self, query: bytes, proto: str, timeout: float) -> bytes:
        self.calls.append((proto, timeout))
        q = dns.message.from_wire(query)
        if q.question[0].rdtype == 2:  # the health check's ". NS"
            self.probes += 1
        if self.mode == "fail":
            raise UpstreamError(f"read udp 127.0.0.1:40000->{self.label}: read: connection refused")
        if self.mode == "hang":
            await asyncio.sleep(timeout)
            raise UpstreamError(f"read udp 127.0.0.1:40000->{self.label}: i/o timeout")
        r = dns.message.make_response(q)
        r.set_rcode(dns.rcode.Rcode(self.rcode))
        if proto == "udp" and self.tc_over_udp:
            r.flags |= dns.flags.TC
        else:
            r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", self.ip))
        wire = r.to_wire()
        return query[:2] + wire[2:]

    def close(self) -> None:
        self.closed = True

    def queries(self) -> int:
        return len(self.calls) - self.probes


def make(fakes: list[Fake], **kw: Any) -> Forward:
    cfg = Config(zone=kw.pop("zone", "."), to=[("127.0.0.1", 53)] * len(fakes), **kw)
    return Forward(cfg, [Proxy(f, cfg) for f in fakes])


async def end(req: Request) -> Response:
    """The end of the chain: what `call_next` answers in these tests."""
    from clusterdns.wire import reply

    return Response(reply(req, SERVFAIL), SERVFAIL, "end")


def ip_of(resp: Response) -> str:
    return dns.message.from_wire(resp.wire).answer[0][0].to_text()  # type: ignore[no-any-return]


# --- configuration ----------------------------------------------------------------------------

def site(tmp_path: Path) -> SiteConfig:
    return SiteConfig(zones=["."], port=53, corefile=str(tmp_path / "Corefile"))


def cfg_of(text: str, tmp_path: Path) -> Config:
    d = parse(f". {{\n{text}\n}}\n", str(tmp_path / "Corefile"))[0].directives[0]
    return parse_config(d, site(tmp_path))


def test_defaults_as_coredns(tmp_path: Path) -> None:
    c = cfg_of("forward . 10.0.0.10", tmp_path)
    assert (c.zone, c.to, c.excepts) == (".", [("10.0.0.10", 53)], [])
    assert (c.expire, c.max_fails, c.hc_interval, c.read_timeout, c.policy) == (10.0, 2, 0.5, 2.0, "random")
    assert (c.hc_recursion, c.hc_domain, c.force_tcp, c.prefer_udp, c.max_concurrent) == (True, ".", False, False, 0)


def test_every_option(tmp_path: Path) -> None:
    c = cfg_of("""forward Example.ORG dns://10.0.0.1:5353 [2001:db8::1]:53 2001:db8::2 {
        except internal.example.org Corp.Example.org
        force_tcp
        prefer_udp
        expire 30s
        max_fails 0
        max_idle_conns 4
        read_timeout 500ms
        health_check 1s no_rec domain probe.example.
        policy sequential
        max_concurrent 1000
        max_connect_attempts 3
        next NXDOMAIN servfail
        failover REFUSED
        failfast_all_unhealthy_upstreams
    }""", tmp_path)
    assert c.zone == "example.org."
    assert c.to == [("10.0.0.1", 5353), ("2001:db8::1", 53), ("2001:db8::2", 53)]
    assert c.excepts == ["internal.example.org.", "corp.example.org."]
    assert c.force_tcp and c.prefer_udp and c.failfast
    assert (c.expire, c.max_fails, c.max_idle_conns, c.read_timeout) == (30.0, 0, 4, 0.5)
    assert (c.hc_interval, c.hc_recursion, c.hc_domain) == (1.0, False, "probe.example.")
    assert (c.policy, c.max_concurrent, c.max_connect_attempts) == ("sequential", 1000, 3)
    assert c.next_rcodes == {dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL}
    assert c.failover_rcodes == {dns.rcode.REFUSED}


@pytest.mark.parametrize(("text", "message"), [
    ("forward .", "wrong argument count"),
    ("forward . example.com", "not an IP address or file: 'example.com'"),
    ("forward . tls://1.1.1.1", "'tls' is not supported as a destination protocol"),
    ("forward . 10.0.0.1:99999", "invalid port"),
    ("forward . " + " ".join(f"10.0.0.{i}" for i in range(16)), "more than 15 TOs configured: 16"),
    ("forward 10.0.0.0/8 10.0.0.1", "CIDR as FROM is not supported"),
    ("forward . 10.0.0.1 {\n tls cert key ca\n}", "tls is not supported"),
    ("forward . 10.0.0.1 {\n bogus\n}", "unknown property 'bogus'"),
    ("forward . 10.0.0.1 {\n policy fastest\n}", "unknown policy 'fastest'"),
    ("forward . 10.0.0.1 {\n max_fails -1\n}", "max_fails must be a non-negative integer"),
    ("forward . 10.0.0.1 {\n expire soon\n}", "invalid duration"),
    ("forward . 10.0.0.1 {\n health_check 1s deep\n}", "health_check: unknown option deep"),
    ("forward . 10.0.0.1 {\n next NOPE\n}", "unknown rcode 'NOPE'"),
    ("forward . 10.0.0.1 {\n except\n}", "wrong argument count"),
    ("forward . 10.0.0.1 {\n force_tcp yes\n}", "wrong argument count"),
    ("forward . 10.0.0.1 {\n read_timeout 0s\n}", "read_timeout must be positive"),
])
def test_errors_name_file_line_and_plugin(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CorefileError) as e:
        cfg_of(text, tmp_path)
    assert message in str(e.value)
    assert "Corefile:" in str(e.value) and "forward:" in str(e.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("10.0.0.1", ("10.0.0.1", 53)),
    ("10.0.0.1:5300", ("10.0.0.1", 5300)),
    ("::1", ("::1", 53)),
    ("[::1]", ("::1", 53)),
    ("[::1]:5300", ("::1", 5300)),
    ("fe80::1%eth0", ("fe80::1%eth0", 53)),
    ("resolv.conf", None),
    ("example.com:53", None),
])
def test_host_port(text: str, expected: tuple[str, int] | None) -> None:
    assert host_port(text) == expected


def test_resolv_conf_nameservers_in_order(tmp_path: Path) -> None:
    (tmp_path / "resolv.conf").write_text(
        "# generated\nsearch default.svc.cluster.local svc.cluster.local\n"
        "nameserver 10.0.0.53\n; comment\nnameserver   2001:db8::53  \nnameserver not-an-ip\n"
        "options ndots:5\nnameserver\nnameserver 10.0.0.54 # trailing\n")
    assert resolv_conf(str(tmp_path / "resolv.conf")) == [("10.0.0.53", 53), ("2001:db8::53", 53), ("10.0.0.54", 53)]


def test_resolv_conf_relative_to_the_corefile(tmp_path: Path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "resolv.conf").write_text("nameserver 10.0.0.53\n")
    c = cfg_of("forward . conf/resolv.conf 10.0.0.1", tmp_path)
    assert c.to == [("10.0.0.53", 53), ("10.0.0.1", 53)]
    (tmp_path / "empty.conf").write_text("search local\n")
    with pytest.raises(ValueError, match="no nameservers found"):
        parse_to("empty.conf", str(tmp_path))


def test_a_second_forward_enables_next(tmp_path: Path) -> None:
    s = site(tmp_path)
    blocks = parse(". {\n forward example.org 10.0.0.1 {\n next NXDOMAIN\n }\n forward . 10.0.0.2\n}\n", "Corefile")
    first = cast(Forward, fw.setup(blocks[0].directives[0], s))
    s.plugins["forward"] = first
    second = cast(Forward, fw.setup(blocks[0].directives[1], s))
    assert first.next_forward and not second.next_forward
    assert len(s.on_shutdown) == 2


# --- which names are forwarded -----------------------------------------------------------------

@pytest.mark.parametrize(("name", "forwarded"), [
    ("example.org.", True),
    ("www.example.org.", True),
    ("internal.example.org.", False),
    ("a.b.internal.example.org.", False),
    ("xinternal.example.org.", True),
    ("notexample.org.", False),
    ("example.com.", False),
])
def test_from_and_except(name: str, forwarded: bool) -> None:
    f = make([Fake("a")], zone="example.org.", excepts=["internal.example.org."])
    assert f.matches(name) is forwarded


def test_from_itself_is_forwarded_even_when_excepted() -> None:
    f = make([Fake("a")], zone="example.org.", excepts=["example.org."])
    assert f.matches("example.org.") and not f.matches("www.example.org.")


def test_not_matching_goes_to_the_next_plugin() -> None:
    a = Fake("a")
    f = make([a], zone="example.org.", excepts=["internal.example.org."])
    for name in ("example.com.", "x.internal.example.org."):
        assert run(f.serve(query(name), end)).plugin == "end"
    assert a.calls == []


# --- answers -----------------------------------------------------------------------------------

def test_answer_keeps_the_client_id_and_reports_opt() -> None:
    a = Fake("a")
    f = make([a])
    plain = run(f.serve(query(qid=777), end))
    assert (plain.rcode, plain.plugin, plain.has_opt) == (NOERROR, "forward", False)
    assert plain.wire[:2] == (777).to_bytes(2, "big") and ip_of(plain) == "192.0.2.1"
    with_edns = run(f.serve(query(edns=4096, qid=778), end))
    assert with_edns.has_opt and with_edns.wire[:2] == (778).to_bytes(2, "big")


def test_upstream_transport_follows_client_unless_forced() -> None:
    for opts, client, expected in [
        ({}, "udp", "udp"), ({}, "tcp", "tcp"),
        ({"force_tcp": True}, "udp", "tcp"), ({"prefer_udp": True}, "tcp", "udp"),
        ({"force_tcp": True, "prefer_udp": True}, "udp", "tcp"),
    ]:
        a = Fake("a")
        run(make([a], **opts).serve(query(proto=client), end))
        assert a.calls[0][0] == expected, (opts, client)


@pytest.mark.parametrize(("client", "edns", "opts", "retried"), [
    ("udp", None, {}, False),  # the client takes 512 bytes: the upstream's TC answer is all it can use
    ("udp", 4096, {}, True),  # the upstream capped a larger buffer: get it all over TCP
    ("tcp", None, {"prefer_udp": True}, True),
])
def test_truncated_udp_answer_retried_over_tcp(client: str, edns: int | None, opts: dict[str, bool],
                                               retried: bool) -> None:
    a = Fake("a", tc_over_udp=True)
    resp = run(make([a], **opts).serve(query(proto=client, edns=edns), end))
    assert [p for p, _ in a.calls] == (["udp", "tcp"] if retried else ["udp"])
    assert bool(resp.wire[2] & 0x02) is not retried


def test_failover_to_the_next_upstream_in_sequence() -> None:
    a, b = Fake("a", ip="192.0.2.1"), Fake("b", ip="192.0.2.2")
    f = make([a, b], policy="sequential")
    assert ip_of(run(f.serve(query(), end))) == "192.0.2.1"
    a.mode = "fail"
    assert ip_of(run(f.serve(query(), end))) == "192.0.2.2"
    assert a.queries() == 2 and b.queries() == 1


def test_failover_rcodes() -> None:
    a, b = Fake("a", rcode=dns.rcode.SERVFAIL), Fake("b", ip="192.0.2.2")
    f = make([a, b], policy="sequential", failover_rcodes=frozenset({SERVFAIL}))
    assert ip_of(run(f.serve(query(), end))) == "192.0.2.2"
    only = make([Fake("c", rcode=dns.rcode.SERVFAIL)], failover_rcodes=frozenset({SERVFAIL}))
    assert run(only.serve(query(), end)).rcode == SERVFAIL  # nobody else to ask: its answer stands


def test_next_hands_the_query_on_only_to_a_following_forward() -> None:
    a = Fake("a", rcode=dns.rcode.NXDOMAIN)
    f = make([a], next_rcodes=frozenset({dns.rcode.NXDOMAIN}))
    assert run(f.serve(query(), end)).plugin == "forward"
    f.next_forward = True
    assert run(f.serve(query(), end)).plugin == "end"


@pytest.mark.parametrize("policy", ["random", "round_robin", "sequential"])
def test_policies(policy: str) -> None:
    fakes = [Fake(f"u{i}", ip=f"192.0.2.{i}") for i in range(3)]
    f = make(fakes, policy=policy)
    firsts = [ip_of(run(f.serve(query(), end))) for _ in range(60)]
    seen = {ip: firsts.count(ip) for ip in set(firsts)}
    if policy == "sequential":
        assert seen == {"192.0.2.0": 60}
    elif policy == "round_robin":
        assert all(n == 20 for n in seen.values()) and len(seen) == 3
        assert firsts[0] != firsts[1] != firsts[2]
    else:
        assert len(seen) == 3  # each has 1/3 per query: missing one in 60 tries is ~1e-10


# --- failures, health and bounds --------------------------------------------------------------

def test_every_upstream_failing_raises_the_last_error_after_bounded_attempts() -> None:
    a, b = Fake("a"), Fake("b")
    a.mode = b.mode = "fail"
    f = make([a, b], max_fails=0)
    with pytest.raises(UpstreamError, match="connection refused"):
        run(f.serve(query(), end))
    assert a.queries() + b.queries() == 4  # twice the number of upstreams, as CoreDNS
    one = make([Fake("c")], max_fails=0, max_connect_attempts=5)
    one.proxies[0].upstream.mode = "fail"  # type: ignore[attr-defined]
    with pytest.raises(UpstreamError):
        run(one.serve(query(), end))
    assert one.proxies[0].upstream.queries() == 5  # type: ignore[attr-defined]


def test_deadline_bounds_a_query_and_caps_each_try(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fw, "TIMEOUT", 0.3)
    a = Fake("a")
    a.mode = "hang"
    f = make([a], read_timeout=0.2, max_fails=0, max_connect_attempts=10)

    async def timed() -> float:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(UpstreamError, match="i/o timeout"):
            await resolve(f.serve(query(), end))
        return loop.time() - start

    took = run(timed())
    assert 0.28 < took < 0.5
    assert [round(t, 1) for _, t in a.calls] == [0.2, 0.1]  # the second try only gets what is left


def test_failed_upstream_is_probed_marked_down_skipped_and_recovers() -> None:
    async def scenario() -> None:
        a, b = Fake("a", ip="192.0.2.1"), Fake("b", ip="192.0.2.2")
        f = make([a, b], policy="sequential", hc_interval=0.01)
        before = REGISTRY.values[fw.HC_FAILURES.name].get(("forward", "a"), 0)
        a.mode = "fail"
        assert ip_of(await resolve(f.serve(query(), end))) == "192.0.2.2"  # failed over, and a probe started
        for _ in range(100):
            if f.proxies[0].down(2):
                break
            await asyncio.sleep(0.01)
        assert f.proxies[0].fails >= 2 and a.probes >= 2
        assert REGISTRY.values[fw.HC_FAILURES.name][("forward", "a")] - before == f.proxies[0].fails
        sent = a.queries()
        assert ip_of(await resolve(f.serve(query(), end))) == "192.0.2.2"
        assert a.queries() == sent  # down: not even tried
        a.mode = "ok"
        for _ in range(100):
            if not f.proxies[0].down(2):
                break
            await asyncio.sleep(0.01)
        assert f.proxies[0].fails == 0
        assert ip_of(await resolve(f.serve(query(), end))) == "192.0.2.1"
        await f.stop()
        assert a.closed and b.closed

    run(scenario())


def test_max_fails_zero_never_probes_nor_marks_down() -> None:
    async def scenario() -> None:
        a, b = Fake("a"), Fake("b", ip="192.0.2.2")
        f = make([a, b], policy="sequential", max_fails=0, hc_interval=0.01)
        a.mode = "fail"
        for _ in range(3):
            assert ip_of(await resolve(f.serve(query(), end))) == "192.0.2.2"
            await asyncio.sleep(0.03)
        assert a.probes == 0 and a.queries() == 3

    run(scenario())


def test_all_down_picks_one_anyway_or_fails_fast() -> None:
    broken = REGISTRY.values[fw.HC_BROKEN.name].get((), 0)
    a, b = Fake("a"), Fake("b")
    f = make([a, b])
    for p in f.proxies:
        p.fails = 5
    assert run(f.serve(query(), end)).rcode == NOERROR
    assert a.queries() + b.queries() == 1
    assert REGISTRY.values[fw.HC_BROKEN.name][()] == broken + 1
    a.mode = b.mode = "fail"
    with pytest.raises(UpstreamError):
        run(f.serve(query(), end))
    assert a.queries() + b.queries() == 2  # the one pick failed too: give up at once, as CoreDNS
    fast = make([Fake("c"), Fake("d")], failfast=True)
    for p in fast.proxies:
        p.fails = 5
    with pytest.raises(NoHealthy, match="no healthy proxies"):
        run(fast.serve(query(), end))
    assert all(p.upstream.queries() == 0 for p in fast.proxies)  # type: ignore[attr-defined]


def test_max_concurrent_refuses_over_the_limit() -> None:
    async def scenario() -> None:
        a = Fake("a")
        a.mode = "hang"
        f = make([a], max_concurrent=2, read_timeout=0.2, max_fails=0, max_connect_attempts=1)
        rejects = REGISTRY.values[fw.REJECTS.name].get((), 0)
        waiting = [asyncio.ensure_future(f.serve(query(), end)) for _ in range(2)]
        await asyncio.sleep(0.01)
        refused = await resolve(f.serve(query(), end))
        assert (refused.rcode, refused.plugin) == (REFUSED, "forward")
        assert REGISTRY.values[fw.REJECTS.name][()] == rejects + 1
        for w in waiting:
            with pytest.raises(UpstreamError):
                await w
        assert f.concurrent == 0
        a.mode = "ok"
        assert (await resolve(f.serve(query(), end))).rcode == NOERROR

    run(scenario())


def test_duration_metric_per_upstream_and_rcode() -> None:
    label = "203.0.113.9:53"
    hists = REGISTRY.histograms[fw.DURATION.name]
    before = hists[("forward", label, "NXDOMAIN")].n if ("forward", label, "NXDOMAIN") in hists else 0
    run(make([Fake(label, rcode=dns.rcode.NXDOMAIN)]).serve(query(), end))
    assert hists[("forward", label, "NXDOMAIN")].n == before + 1


def test_works_when_the_dispatcher_drives_the_chain_by_hand() -> None:
    """No Task per query: the dispatcher resumes the coroutine from the future's callback."""

    class Later(Fake):
        async def exchange(self, query: bytes, proto: str, timeout: float) -> bytes:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_later(0.01, fut.set_result, None)
            await fut
            return await super().exchange(query, proto, timeout)

    async def scenario() -> list[bytes]:
        f = make([Later("a")])
        disp = Dispatcher()
        disp.add(".", lambda req: f.serve(req, end), "dns://:53")
        sent: list[bytes] = []
        disp.handle(query(qid=99).data, "udp", ("127.0.0.1", 5300), lambda wire, _addr: sent.append(wire))
        assert sent == [] and disp.inflight == 1
        for _ in range(100):
            if sent:
                break
            await asyncio.sleep(0.005)
        return sent

    sent = run(scenario())
    assert len(sent) == 1 and sent[0][:2] == (99).to_bytes(2, "big")
    assert dns.message.from_wire(sent[0]).answer[0][0].to_text() == "192.0.2.1"
