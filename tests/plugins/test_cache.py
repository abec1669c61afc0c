"""The cache plugin against a fake downstream that returns prepared wire answers, on a fake clock."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import pytest
from dnslib import EDNS0, RR, DNSRecord

from clusterdns.corefile import CorefileError, parse
from clusterdns.metrics import REGISTRY
from clusterdns.plugin import NOERROR, NXDOMAIN, REFUSED, SERVFAIL, Request, Response, SiteConfig, resolve
from clusterdns.plugins import cache as cache_plugin
from clusterdns.plugins.cache import Cache, Config, parse_config
from clusterdns.wire import finalize, parse_query

_servers = itertools.count()


class Clock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def query(name: str, qtype: str = "A", *, do: bool = False, cd: bool = False, rd: bool = True,
          qid: int = 4242) -> Request:
    q = dns.message.make_query(name, qtype, want_dnssec=do, use_edns=0 if do else False)
    q.id = qid
    if cd:
        q.flags |= dns.flags.CD
    if not rd:
        q.flags &= ~dns.flags.RD
    return parse_query(q.to_wire(), "udp", ("127.0.0.1", 5300))


def answer(req: Request, rcode: int = NOERROR, an: tuple[str, ...] = (), ns: tuple[str, ...] = (),
           ar: tuple[str, ...] = (), *, tc: bool = False, opt: bool = False) -> bytes:
    """A downstream answer to ``req`` built from zone-file lines."""
    rec = DNSRecord.parse(req.data).reply()
    rec.header.rcode = rcode
    rec.header.tc = int(tc)
    for line in an:
        rec.add_answer(*RR.fromZone(line))
    for line in ns:
        rec.add_auth(*RR.fromZone(line))
    for line in ar:
        rec.add_ar(*RR.fromZone(line))
    if opt:
        rec.add_ar(EDNS0(udp_len=1232))
    return bytes(rec.pack())


Make = Callable[[Request], bytes]


class Downstream:
    """The rest of the chain: answers with ``make(req)``, counting calls."""

    def __init__(self, make: Make | None = None, plugin: str = "forward") -> None:
        self.make = make or (lambda r: answer(r, an=(f"{r.qname} 300 IN A 10.0.0.1",)))
        self.plugin = plugin
        self.calls = 0
        self.gate: asyncio.Event | None = None  # when set, answers wait for it (a slow upstream)

    async def __call__(self, req: Request) -> Response:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        wire = self.make(req)
        return Response(wire, wire[3] & 0xF, self.plugin, b"\x00\x00\x29" in wire[-11:])


def failing(req: Request) -> bytes:
    raise OSError("upstream unreachable")


def make_cache(text: str = "cache", zones: tuple[str, ...] = (".",)) -> tuple[Cache, Clock]:
    clock = Clock()
    d = parse(f". {{\n{text}\n}}\n", "Corefile")[0].directives[0]
    cfg = parse_config(d, SiteConfig(zones=list(zones), port=53, corefile="Corefile"))
    return Cache(cfg, f"dns://test-{next(_servers)}:53", clock), clock


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    return asyncio.run(coro)


async def ask(cache: Cache, down: Downstream | Callable[[Request], Awaitable[Response]],
              req: Request) -> dns.message.Message:
    resp = await resolve(cache.serve(req, down))
    msg = dns.message.from_wire(finalize(resp.wire, req, resp.has_opt))
    msg.plugin = resp.plugin  # type: ignore[attr-defined]
    return msg


def serve(cache: Cache, down: Downstream, req: Request) -> dns.message.Message:
    return run(ask(cache, down, req))  # type: ignore[no-any-return]


def ttls(msg: dns.message.Message) -> list[int]:
    return [rrset.ttl for section in (msg.answer, msg.authority, msg.additional) for rrset in section]


def metric(cache: Cache, family: str, kind: str | None = None) -> float:
    server, _, zones, view = cache._lbl_type["success"]
    labels = (server, zones, view) if kind is None else (server, kind, zones, view)
    if family == "coredns_cache_entries":
        return REGISTRY.gauge_fns[family][labels]()
    return REGISTRY.values[family].get(labels, 0)


# --- keys and hits ---------------------------------------------------------------------------

def test_second_query_is_a_hit_with_client_id_and_case() -> None:
    cache, _ = make_cache()
    down = Downstream()
    first = serve(cache, down, query("www.example.org.", qid=1))
    second = serve(cache, down, query("WWW.Example.ORG.", qid=2))
    assert down.calls == 1
    assert second.id == 2 and second.question[0].name.to_text() == "WWW.Example.ORG."
    assert first.plugin == "forward" and second.plugin == "cache"  # type: ignore[attr-defined]
    assert [r.to_text() for r in second.answer[0]] == ["10.0.0.1"]
    assert metric(cache, "coredns_cache_requests_total") == 2
    assert metric(cache, "coredns_cache_misses_total") == 1
    assert metric(cache, "coredns_cache_hits_total", "success") == 1
    assert metric(cache, "coredns_cache_entries", "success") == 1


@pytest.mark.parametrize(
    "other",
    [
        query("www.example.org.", "AAAA"),
        query("www.example.org.", do=True),
        query("www.example.org.", cd=True),
        query("ww.example.org."),
    ],
    ids=["qtype", "do", "cd", "name"],
)
def test_key_separates_type_do_cd_and_name(other: Request) -> None:
    cache, _ = make_cache()
    down = Downstream()
    serve(cache, down, query("www.example.org."))
    serve(cache, down, other)
    serve(cache, down, other)
    assert down.calls == 2


def test_rd_bit_is_the_clients() -> None:
    cache, _ = make_cache()
    down = Downstream()
    serve(cache, down, query("www.example.org."))
    hit = serve(cache, down, query("www.example.org.", rd=False))
    assert down.calls == 1 and not hit.flags & dns.flags.RD


def test_ttl_counts_down_on_every_record() -> None:
    cache, clock = make_cache()
    down = Downstream(lambda r: answer(r, an=(f"{r.qname} 300 IN A 10.0.0.1", f"{r.qname} 100 IN A 10.0.0.2")))
    first = serve(cache, down, query("a.example.org."))
    assert ttls(first) == [100]  # one RRset; every record gets the smallest TTL, as CoreDNS
    clock.now += 10.7
    assert ttls(serve(cache, down, query("a.example.org."))) == [90]
    clock.now += 89.2  # 99.9 s after storing
    assert ttls(serve(cache, down, query("a.example.org."))) == [1]
    clock.now += 0.1  # 100 s: expired
    serve(cache, down, query("a.example.org."))
    assert down.calls == 2


@pytest.mark.parametrize(
    "text, upstream_ttl, cached",
    [("cache", 300, 300), ("cache 30", 300, 30), ("cache", 1, 5), ("cache", 7200, 3600),
     ("cache {\n success 100 60 20\n}", 10, 20), ("cache {\n success 100 60 20\n}", 90, 60)],
)
def test_success_ttl_is_capped_and_floored(text: str, upstream_ttl: int, cached: int) -> None:
    cache, clock = make_cache(text)
    down = Downstream(lambda r: answer(r, an=(f"{r.qname} {upstream_ttl} IN A 10.0.0.1",)))
    assert ttls(serve(cache, down, query("a.example.org."))) == [cached]
    clock.now += cached - 0.01
    serve(cache, down, query("a.example.org."))
    assert down.calls == 1
    clock.now += 0.02
    serve(cache, down, query("a.example.org."))
    assert down.calls == 2


def test_keepttl_serves_the_stored_ttl() -> None:
    cache, clock = make_cache("cache {\n keepttl\n}")
    down = Downstream()
    serve(cache, down, query("a.example.org."))
    clock.now += 200
    assert ttls(serve(cache, down, query("a.example.org."))) == [300] and down.calls == 1


# --- negative answers ----------------------------------------------------------------------------

SOA = "example.org. {ttl} IN SOA ns.example.org. host.example.org. 1 7200 1800 86400 {minimum}"


@pytest.mark.parametrize(
    "text, rcode, soa_ttl, minimum, cached",
    [
        ("cache", NXDOMAIN, 60, 10, 10),  # RFC 2308: min(SOA TTL, SOA MINIMUM)
        ("cache", NXDOMAIN, 8, 100, 8),
        ("cache", NOERROR, 60, 20, 20),  # NODATA
        ("cache 30", NXDOMAIN, 3600, 3600, 30),  # capped by the denial TTL
        ("cache", NXDOMAIN, 7200, 7200, 1800),  # default denial max
        ("cache {\n denial 10 1000 3\n}", NXDOMAIN, 1, 1, 3),  # floored by MINTTL
    ],
)
def test_negative_ttl(text: str, rcode: int, soa_ttl: int, minimum: int, cached: int) -> None:
    cache, clock = make_cache(text)
    down = Downstream(lambda r: answer(r, rcode, ns=(SOA.format(ttl=soa_ttl, minimum=minimum),)))
    first = serve(cache, down, query("nope.example.org."))
    assert first.rcode() == rcode and ttls(first) == [cached]
    clock.now += cached - 0.5
    hit = serve(cache, down, query("nope.example.org."))
    assert hit.rcode() == rcode and ttls(hit) == [1] and down.calls == 1
    assert metric(cache, "coredns_cache_hits_total", "denial") == 1
    assert metric(cache, "coredns_cache_entries", "denial") == 1
    assert metric(cache, "coredns_cache_entries", "success") == 0
    clock.now += 0.5
    serve(cache, down, query("nope.example.org."))
    assert down.calls == 2


@pytest.mark.parametrize(
    "make",
    [
        lambda r: answer(r, NXDOMAIN),  # NXDOMAIN without SOA
        lambda r: answer(r, NOERROR),  # NODATA without SOA
        lambda r: answer(r, SERVFAIL),
        lambda r: answer(r, REFUSED),
        lambda r: answer(r, an=(f"{r.qname} 300 IN A 10.0.0.1",), tc=True),
        lambda r: answer(query("other.example.org."), an=("other.example.org. 300 IN A 10.0.0.1",)),
    ],
    ids=["nxdomain-no-soa", "nodata-no-soa", "servfail", "refused", "truncated", "other-question"],
)
def test_not_cached(make: Make) -> None:
    cache, _ = make_cache()
    down = Downstream(make)
    for _ in range(2):
        serve(cache, down, query("a.example.org."))
    assert down.calls == 2
    assert metric(cache, "coredns_cache_entries", "success") == metric(cache, "coredns_cache_entries", "denial") == 0


def test_other_question_counts_as_a_drop() -> None:
    cache, _ = make_cache()
    down = Downstream(lambda r: answer(query("other.example.org."), an=("other.example.org. 300 IN A 10.0.0.1",)))
    serve(cache, down, query("a.example.org."))
    assert metric(cache, "coredns_cache_drops_total") == 1


def test_servfail_cached_only_when_asked() -> None:
    cache, clock = make_cache("cache {\n servfail 2s\n}")
    down = Downstream(lambda r: answer(r, SERVFAIL))
    serve(cache, down, query("a.example.org."))
    assert serve(cache, down, query("a.example.org.")).rcode() == SERVFAIL and down.calls == 1
    clock.now += 2
    serve(cache, down, query("a.example.org."))
    assert down.calls == 2


def test_a_key_lives_in_one_store_only() -> None:
    cache, clock = make_cache("cache {\n serve_stale 1h verify\n}")
    positive = Downstream(lambda r: answer(r, an=(f"{r.qname} 10 IN A 10.0.0.9",)))
    negative = Downstream(lambda r: answer(r, NXDOMAIN, ns=(SOA.format(ttl=10, minimum=10),)))
    serve(cache, positive, query("a.example.org."))
    clock.now += 11  # stale: verify asks again and gets NXDOMAIN
    assert serve(cache, negative, query("a.example.org.")).rcode() == NXDOMAIN
    assert serve(cache, negative, query("a.example.org.")).rcode() == NXDOMAIN  # not the stale positive
    assert negative.calls == 1
    assert metric(cache, "coredns_cache_entries", "success") == 0
    assert metric(cache, "coredns_cache_entries", "denial") == 1


# --- EDNS -----------------------------------------------------------------------------------------

def test_upstream_opt_is_not_stored_and_the_clients_edns_is_answered() -> None:
    cache, _ = make_cache()
    down = Downstream(lambda r: answer(r, an=(f"{r.qname} 300 IN A 10.0.0.1",), opt=True))
    first_req = query("a.example.org.", do=True)
    resp = run(cache.serve(first_req, down))
    assert not resp.has_opt and resp.wire[10:12] == b"\x00\x00"  # the upstream's OPT was cut
    hit = serve(cache, down, query("a.example.org.", do=True))
    assert down.calls == 1 and hit.edns == 0 and hit.ednsflags & dns.flags.DO
    plain = query("a.example.org.")
    serve(cache, down, plain)
    assert down.calls == 2  # DO is part of the key


# --- zones ------------------------------------------------------------------------------------------

def test_only_the_cache_zones_are_cached() -> None:
    cache, _ = make_cache("cache example.org")
    down = Downstream()
    for name in ("a.example.org.", "a.example.org.", "a.other.net.", "a.other.net.", "aexample.org.", "aexample.org."):
        serve(cache, down, query(name))
    assert down.calls == 5
    assert metric(cache, "coredns_cache_requests_total") == 2  # other zones are not even looked up


def test_default_zones_are_the_server_blocks() -> None:
    cache, _ = make_cache("cache", zones=("cluster.local.",))
    assert cache.cfg.zones == ["cluster.local."]


def test_disable_success_and_denial_per_zone() -> None:
    cache, _ = make_cache("cache 30 {\n disable success cluster.local\n}")
    positive = Downstream(lambda r: answer(r, an=(f"{r.qname} 5 IN A 10.0.0.1",)))
    negative = Downstream(lambda r: answer(r, NXDOMAIN, ns=(SOA.format(ttl=5, minimum=5),)))
    for _ in range(2):
        serve(cache, positive, query("svc.ns.svc.cluster.local."))
        serve(cache, negative, query("gone.ns.svc.cluster.local."))
        serve(cache, positive, query("www.example.org."))
    assert positive.calls == 3 and negative.calls == 1

    cache, _ = make_cache("cache {\n disable denial\n}")  # no zones: all of the cache's zones
    for _ in range(2):
        serve(cache, negative, query("gone.example.org."))
    assert negative.calls == 3


def test_zone_disabled_for_both_kinds_is_passed_through_without_lookup() -> None:
    cache, _ = make_cache("cache 30 {\n disable success cluster.local\n disable denial cluster.local\n}")
    positive = Downstream(lambda r: answer(r, an=(f"{r.qname} 5 IN A 10.0.0.1",)))
    for _ in range(3):
        assert serve(cache, positive, query("svc.ns.svc.cluster.local.")).answer
    assert positive.calls == 3 and len(cache.success) == 0 and len(cache.denial) == 0
    assert metric(cache, "coredns_cache_requests_total") == 3 and metric(cache, "coredns_cache_misses_total") == 3
    serve(cache, positive, query("www.example.org."))
    serve(cache, positive, query("www.example.org."))
    assert positive.calls == 4  # other zones are still cached


def test_where_names_stand_is_remembered_within_a_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache_plugin, "SCOPES", 8)
    cache, _ = make_cache("cache 30 {\n disable success cluster.local\n disable denial cluster.local\n}")
    down = Downstream()
    for i in range(40):
        serve(cache, down, query(f"s{i}.ns.svc.cluster.local."))
        serve(cache, down, query(f"w{i}.example.org."))
        serve(cache, down, query(f"w{i}.example.org."))
        assert len(cache._scopes) <= 8
    assert down.calls == 80  # every cluster name went on, every other name was asked once
    assert metric(cache, "coredns_cache_misses_total") == 80


# --- capacity ----------------------------------------------------------------------------------------

def test_capacity_evicts_least_recently_used() -> None:
    cache, _ = make_cache("cache {\n success 2\n}")
    down = Downstream()
    for name in ("a.example.org.", "b.example.org.", "a.example.org.", "c.example.org."):
        serve(cache, down, query(name))
    assert down.calls == 3
    assert metric(cache, "coredns_cache_entries", "success") == 2
    assert metric(cache, "coredns_cache_evictions_total", "success") == 1
    serve(cache, down, query("a.example.org."))  # a was used last: it stayed
    assert down.calls == 3
    serve(cache, down, query("b.example.org."))  # b was evicted
    assert down.calls == 4


def test_expiry_is_not_an_eviction() -> None:
    cache, clock = make_cache("cache {\n success 2\n}")
    down = Downstream()
    serve(cache, down, query("a.example.org."))
    clock.now += 301
    serve(cache, down, query("b.example.org."))
    serve(cache, down, query("c.example.org."))
    assert metric(cache, "coredns_cache_evictions_total", "success") == 0
    assert metric(cache, "coredns_cache_entries", "success") == 2


# --- prefetch ------------------------------------------------------------------------------------------

def test_prefetch_refreshes_a_popular_entry_in_the_background() -> None:
    async def scenario() -> None:
        cache, clock = make_cache("cache {\n prefetch 2 1m 50%\n}")
        serial = itertools.count(1)
        down = Downstream(lambda r: answer(r, an=(f"{r.qname} 10 IN A 10.0.0.{next(serial)}",)))
        await ask(cache, down, query("a.example.org."))
        clock.now += 1
        await ask(cache, down, query("a.example.org."))  # 1st hit, TTL 9: not yet
        clock.now += 5
        down.gate = asyncio.Event()  # the refresh must not hold up the client
        hit = await ask(cache, down, query("a.example.org."))  # 2nd hit, TTL 4 <= 50 % of 10
        assert hit.plugin == "cache" and [r.to_text() for r in hit.answer[0]] == ["10.0.0.1"]  # type: ignore
        assert ttls(hit) == [4]
        await asyncio.sleep(0)
        assert down.calls == 2 and metric(cache, "coredns_cache_prefetch_total") == 1
        again = await ask(cache, down, query("a.example.org."))  # refresh in flight: no second one
        assert down.calls == 2 and ttls(again) == [4] and metric(cache, "coredns_cache_prefetch_total") == 1
        down.gate.set()
        for _ in range(5):
            await asyncio.sleep(0)
        refreshed = await ask(cache, down, query("a.example.org."))
        assert [r.to_text() for r in refreshed.answer[0]] == ["10.0.0.2"] and ttls(refreshed) == [10]
        assert down.calls == 2

    run(scenario())


def test_no_prefetch_for_entries_hit_rarely() -> None:
    async def scenario() -> None:
        cache, clock = make_cache("cache {\n prefetch 2 2s\n}")
        down = Downstream(lambda r: answer(r, an=(f"{r.qname} 20 IN A 10.0.0.1",)))
        await ask(cache, down, query("a.example.org."))
        for _ in range(6):  # hits 3 s apart: never two within the 2 s window
            clock.now += 3
            await ask(cache, down, query("a.example.org."))
            await asyncio.sleep(0)
        assert down.calls == 1

    run(scenario())


# --- serve_stale ------------------------------------------------------------------------------------------

def test_serve_stale_immediate_answers_ttl_0_and_refreshes_in_background() -> None:
    async def scenario() -> None:
        cache, clock = make_cache("cache {\n serve_stale 1h\n}")
        ok = Downstream(lambda r: answer(r, an=(f"{r.qname} 10 IN A 10.0.0.1",)))
        await ask(cache, ok, query("a.example.org."))
        clock.now += 10  # remaining TTL 0: stale already
        broken = Downstream(failing)
        stale = await ask(cache, broken, query("a.example.org."))
        assert stale.rcode() == NOERROR and ttls(stale) == [0] and stale.plugin == "cache"  # type: ignore
        await asyncio.sleep(0)
        assert broken.calls == 1  # the background refresh failed; the entry stays
        assert metric(cache, "coredns_cache_served_stale_total") == 1
        assert ttls(await ask(cache, broken, query("a.example.org."))) == [0]
        await asyncio.sleep(0)
        fixed = Downstream(lambda r: answer(r, an=(f"{r.qname} 10 IN A 10.0.0.2",)))
        await ask(cache, fixed, query("a.example.org."))  # still stale, refresh succeeds behind it
        await asyncio.sleep(0)
        fresh = await ask(cache, fixed, query("a.example.org."))
        assert [r.to_text() for r in fresh.answer[0]] == ["10.0.0.2"] and ttls(fresh) == [10]

    run(scenario())


@pytest.mark.parametrize("make", [failing, lambda r: answer(r, SERVFAIL)], ids=["raises", "servfail"])
def test_serve_stale_verify_asks_first_and_falls_back(make: Make) -> None:
    cache, clock = make_cache("cache {\n serve_stale 10m verify\n}")
    serve(cache, Downstream(lambda r: answer(r, an=(f"{r.qname} 10 IN A 10.0.0.1",))), query("a.example.org."))
    clock.now += 60
    down = Downstream(make)
    stale = serve(cache, down, query("a.example.org."))
    assert down.calls == 1 and stale.rcode() == NOERROR and ttls(stale) == [0]
    fixed = Downstream(lambda r: answer(r, an=(f"{r.qname} 10 IN A 10.0.0.2",)))
    fresh = serve(cache, fixed, query("a.example.org."))
    assert [r.to_text() for r in fresh.answer[0]] == ["10.0.0.2"] and ttls(fresh) == [10]


def test_serve_stale_window_ends() -> None:
    cache, clock = make_cache("cache {\n serve_stale 1m verify\n}")
    serve(cache, Downstream(), query("a.example.org."))
    clock.now += 300 + 60
    with pytest.raises(OSError):
        serve(cache, Downstream(failing), query("a.example.org."))


def test_without_serve_stale_an_expired_entry_is_a_miss() -> None:
    cache, clock = make_cache()
    serve(cache, Downstream(), query("a.example.org."))
    clock.now += 300
    with pytest.raises(OSError):
        serve(cache, Downstream(failing), query("a.example.org."))


def test_close_cancels_background_refreshes() -> None:
    async def scenario() -> None:
        cache, clock = make_cache("cache {\n serve_stale\n}")
        down = Downstream()
        await ask(cache, down, query("a.example.org."))
        clock.now += 400
        down.gate = asyncio.Event()
        await ask(cache, down, query("a.example.org."))
        await asyncio.sleep(0)
        assert len(cache._tasks) == 1
        await cache.close()
        assert not cache._tasks

    run(scenario())


# --- the directive ------------------------------------------------------------------------------------------

def config(text: str, zones: tuple[str, ...] = ("example.org.",)) -> Config:
    d = parse(f"example.org {{\n{text}\n}}\n", "Corefile")[0].directives[0]
    return parse_config(d, SiteConfig(zones=list(zones), port=53, corefile="Corefile"))


@pytest.mark.parametrize(
    "text, expected",
    [
        ("cache", dict(zones=["example.org."], success_ttl=3600, denial_ttl=1800, success_min=5, denial_min=5,
                       success_cap=10000, denial_cap=10000, prefetch=0, stale=0.0, servfail_ttl=0.0)),
        ("cache 30", dict(success_ttl=30, denial_ttl=30)),
        ("cache 30 Sub.Example.org a.org.", dict(zones=["sub.example.org.", "a.org."], success_ttl=30)),
        ("cache other.net", dict(zones=["other.net."], success_ttl=3600)),
        ("cache 30 {\n success 5000 60 10\n denial 2500\n}",
         dict(success_cap=5000, success_ttl=60, success_min=10, denial_cap=2500, denial_ttl=30)),
        ("cache {\n prefetch 10\n}", dict(prefetch=10, prefetch_window=60.0, prefetch_percentage=10)),
        ("cache {\n prefetch 3 30s 50%\n}", dict(prefetch=3, prefetch_window=30.0, prefetch_percentage=50)),
        ("cache {\n serve_stale\n}", dict(stale=3600.0, verify_stale=False)),
        ("cache {\n serve_stale 10m verify\n}", dict(stale=600.0, verify_stale=True)),
        ("cache {\n serve_stale 1h immediate\n}", dict(stale=3600.0, verify_stale=False)),
        ("cache {\n servfail 10s\n}", dict(servfail_ttl=10.0)),
        ("cache {\n keepttl\n}", dict(keepttl=True)),
        ("cache 30 {\n disable success cluster.local\n disable denial cluster.local\n}",
         dict(no_success=["cluster.local."], no_denial=["cluster.local."])),
        ("cache {\n disable denial\n}", dict(no_denial=["example.org."])),
    ],
)
def test_config(text: str, expected: dict[str, object]) -> None:
    cfg = config(text)
    for name, value in expected.items():
        assert getattr(cfg, name) == value, name


@pytest.mark.parametrize(
    "text, message",
    [
        ("cache 0", "cache TTL can not be zero or negative: 0"),
        ("cache -5", "cache TTL can not be zero or negative: -5"),
        ("cache {\n success\n}", "wrong argument count"),
        ("cache {\n success 0\n}", "capacity can not be zero or negative"),
        ("cache {\n success many\n}", "capacity must be an integer"),
        ("cache {\n denial 10 0\n}", "cache TTL can not be zero or negative"),
        ("cache {\n denial 10 20 -1\n}", "cache min TTL can not be negative"),
        ("cache {\n prefetch\n}", "wrong argument count"),
        ("cache {\n prefetch 1 1m 5%\n}", "percentage should fall in range [10, 90]: 5"),
        ("cache {\n prefetch 1 1m 50\n}", "last character of percentage"),
        ("cache {\n prefetch 1 soon\n}", "invalid duration"),
        ("cache {\n serve_stale 1h sometimes\n}", "invalid value for serve_stale refresh mode"),
        ("cache {\n serve_stale 1h verify now\n}", "wrong argument count"),
        ("cache {\n servfail 10m\n}", "not permitted"),
        ("cache {\n disable everything\n}", "disable takes success or denial"),
        ("cache {\n keepttl 5\n}", "wrong argument count"),
        ("cache {\n bogus\n}", "unknown property 'bogus'"),
    ],
)
def test_config_errors_name_file_line_and_plugin(text: str, message: str) -> None:
    with pytest.raises(CorefileError) as e:
        config(text)
    assert str(e.value).startswith("Corefile:2: cache: ") or str(e.value).startswith("Corefile:3: cache: ")
    assert message in str(e.value)


def test_registered_and_in_the_chain_order() -> None:
    from clusterdns.plugin import ORDER, load_all

    assert "cache" in load_all() and ORDER.index("loadbalance") < ORDER.index("cache") < ORDER.index("forward")
