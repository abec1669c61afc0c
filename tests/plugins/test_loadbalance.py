"""The loadbalance plugin: CoreDNS's round_robin order, a uniform shuffle, and messages that stay valid
whatever their compression pointers."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter

import dns.message
import dns.rdatatype
import dns.rrset
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterdns.corefile import CorefileError, parse
from clusterdns.plugin import NOERROR, NXDOMAIN, Request, Response, SiteConfig
from clusterdns.plugins import loadbalance
from clusterdns.plugins.loadbalance import LoadBalance, pointers, reorder, setup, shuffle_wire
from clusterdns.wire import QNAME_PTR, T_A, T_AAAA, T_CNAME, T_MX, T_TXT, parse_query, reply, rr, scan


def query(name: str = "web.example.org.", qtype: str = "A") -> Request:
    return parse_query(dns.message.make_query(name, qtype).to_wire(), "udp", ("127.0.0.1", 5300))


def message(answer: list[str], additional: tuple[str, ...] | list[str] = (), name: str = "web.example.org.") -> bytes:
    """A compressed response built by dnspython from presentation-format records."""
    q = dns.message.make_query(name, "A")
    r = dns.message.make_response(q)
    for section, lines in ((r.answer, answer), (r.additional, additional)):
        for line in lines:
            owner, ttl, _, rtype, *data = line.split()
            section.append(dns.rrset.from_text(owner, int(ttl), "IN", rtype, " ".join(data)))
    return r.to_wire()


def records(wire: bytes) -> list[list[tuple[str, str, str]]]:
    """Each section as (owner, type, rdata) in wire order; dnspython rejects any bad pointer."""
    msg = dns.message.from_wire(wire, one_rr_per_rrset=True)
    return [[(rs.name.to_text(), dns.rdatatype.to_text(rs.rdtype), rs[0].to_text()) for rs in section]
            for section in (msg.answer, msg.authority, msg.additional)]


# --- the order ------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "types, groups",
    [
        ([T_A, T_A, T_A], [[T_A, T_A, T_A]]),
        ([T_A, T_CNAME, T_A], [[T_CNAME], [T_A, T_A]]),
        ([T_MX, T_TXT, T_A, T_CNAME, T_AAAA, T_MX], [[T_CNAME], [T_TXT], [T_A, T_AAAA], [T_MX, T_MX]]),
    ],
)
def test_reorder_puts_cnames_then_others_then_addresses_then_mx(types: list[int], groups: list[list[int]]) -> None:
    items = list(enumerate(types))
    for seed in range(10):
        out = [t for _, t in reorder(items, lambda i: i[1], random.Random(seed))]
        for group in groups:
            assert sorted(out[: len(group)]) == sorted(group)
            out = out[len(group) :]


def test_reorder_keeps_unshuffled_records_in_their_order() -> None:
    items = [(0, T_TXT), (1, T_CNAME), (2, T_TXT), (3, T_CNAME), (4, T_A)]
    assert reorder(items, lambda i: i[1], random.Random(0)) == [(1, T_CNAME), (3, T_CNAME), (0, T_TXT), (2, T_TXT),
                                                                  (4, T_A)]


def test_shuffle_is_uniform() -> None:
    rng = random.Random(7)
    seen = Counter(tuple(reorder([1, 2, 3], lambda _: T_A, rng)) for _ in range(6000))
    assert set(seen) == set(itertools.permutations([1, 2, 3]))
    assert all(800 < n < 1200 for n in seen.values()), seen  # 1000 each expected


# --- the wire path -----------------------------------------------------------------------------------

def test_prepared_answers_with_qname_pointers_are_permuted_on_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    req = query()
    body = b"".join(rr(QNAME_PTR, T_A, 5, f"10.0.0.{i}") for i in range(1, 5))
    wire = reply(req, NOERROR, aa=True, body=body, counts=(4, 0, 0))
    monkeypatch.setattr(loadbalance, "_shuffle_parsed", None)  # must not be needed
    orders = set()
    for seed in range(30):
        out = shuffle_wire(wire, random.Random(seed))
        assert len(out) == len(wire) and out[:12] == wire[:12]
        got = records(out)[0]
        assert sorted(got) == sorted(records(wire)[0])
        orders.add(tuple(got))
    assert len(orders) > 10


def test_cname_chain_stays_in_front_and_pointers_into_it_stay_valid() -> None:
    wire = message([
        "web.example.org. 60 IN CNAME lb.example.net.",
        "lb.example.net. 60 IN A 10.0.0.1",
        "lb.example.net. 60 IN A 10.0.0.2",
        "lb.example.net. 60 IN A 10.0.0.3",
    ])
    targets = pointers(wire, scan(wire))
    assert targets and max(targets) < scan(wire)[1].start  # the A owners point into the CNAME
    seen = set()
    for seed in range(20):
        out = shuffle_wire(wire, random.Random(seed))
        assert len(out) == len(wire)  # the wire path: same bytes, other order
        answer = records(out)[0]
        assert answer[0][1] == "CNAME" and sorted(answer) == sorted(records(wire)[0])
        seen.add(tuple(answer))
    assert len(seen) > 1


def test_pointer_into_moving_records_falls_back_to_dnslib(monkeypatch: pytest.MonkeyPatch) -> None:
    wire = message(
        ["example.org. 60 IN MX 10 mx1.example.org.", "example.org. 60 IN MX 20 mx2.example.org."],
        ["mx1.example.org. 60 IN A 10.0.0.1", "mx2.example.org. 60 IN A 10.0.0.2"],
        name="example.org.",
    )
    calls: list[bytes] = []
    slow = loadbalance._shuffle_parsed

    def counted(msg: bytes, rng: random.Random) -> bytes:
        calls.append(msg)
        return slow(msg, rng)

    monkeypatch.setattr(loadbalance, "_shuffle_parsed", counted)
    orders = set()
    for seed in range(20):
        out = shuffle_wire(wire, random.Random(seed))
        got = records(out)
        assert [sorted(s) for s in got] == [sorted(s) for s in records(wire)]
        orders.add(tuple(got[0]))
    assert calls and len(orders) == 2


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.sampled_from(["A", "AAAA", "CNAME", "MX", "TXT"]), min_size=2, max_size=7),
    st.lists(st.sampled_from(["A", "AAAA", "MX"]), max_size=4),
    st.integers(0, 2**32),
)
def test_any_compressed_message_stays_valid_with_the_same_records(
    answer_types: list[str], extra_types: list[str], seed: int
) -> None:
    names = ["web.example.org.", "a.example.org.", "mx.web.example.org."]
    data = {"A": "10.1.2.{i}", "AAAA": "fd00::{i}", "CNAME": "{n}", "MX": "{i} {n}", "TXT": '"t{i}"'}

    def lines(types: list[str], off: int) -> list[str]:
        return [f"{names[(i + off) % 3]} 30 IN {t} " + data[t].format(i=i + 1, n=names[(i + 1 + off) % 3])
                for i, t in enumerate(types)]

    wire = message(lines(answer_types, 0), lines(extra_types, 1))
    out = shuffle_wire(wire, random.Random(seed))
    before, after = records(wire), records(out)
    assert [sorted(s) for s in after] == [sorted(s) for s in before]
    types = [t for _, t, _ in after[0]]
    n_cname = types.count("CNAME")
    assert types[:n_cname] == ["CNAME"] * n_cname


# --- the plugin ----------------------------------------------------------------------------------------

THREE_A = b"".join(rr(QNAME_PTR, T_A, 5, f"10.0.0.{i}") for i in range(1, 4))


def serve(lb: LoadBalance, req: Request, resp: Response) -> Response:
    async def downstream(_: Request) -> Response:
        return resp

    return asyncio.run(lb.serve(req, downstream))


def test_plugin_returns_a_new_response_and_leaves_the_downstream_one_alone() -> None:
    req = query()
    body = b"".join(rr(QNAME_PTR, T_A, 5, f"10.0.0.{i}") for i in range(1, 4))
    wire = reply(req, NOERROR, aa=True, body=body, counts=(3, 0, 0))
    original = Response(wire, NOERROR, "kubernetes")
    lb = LoadBalance(random.Random(3))
    outs = {serve(lb, req, original).wire for _ in range(30)}
    assert original.wire == wire and original.plugin == "kubernetes"
    assert len(outs) > 1 and all(sorted(records(o)[0]) == sorted(records(wire)[0]) for o in outs)
    assert serve(lb, req, original).plugin == "kubernetes"


def test_plan_is_worked_out_once_per_message_whatever_the_id() -> None:
    lb = LoadBalance(random.Random(4))
    for qid in range(20):
        q = dns.message.make_query("web.example.org.", "A")
        q.id = qid
        req = parse_query(q.to_wire(), "udp", ("127.0.0.1", 5300))
        wire = reply(req, NOERROR, body=THREE_A, counts=(3, 0, 0))
        out = serve(lb, req, Response(wire, NOERROR))
        assert out.wire[:2] == qid.to_bytes(2, "big") and sorted(records(out.wire)[0]) == sorted(records(wire)[0])
    assert len(lb.memo) == 1


@pytest.mark.parametrize(
    "resp",
    [
        Response(reply(query(), NXDOMAIN, body=THREE_A, counts=(3, 0, 0)), NXDOMAIN),  # only NOERROR is shuffled
        Response(reply(query(), NOERROR, body=rr(QNAME_PTR, T_A, 5, "10.0.0.1"), counts=(1, 0, 0)), NOERROR),
        Response(b"\x00\x01\x81\x80\x00\x01\x00\x05\x00\x00\x00\x00garbage", NOERROR),
    ],
    ids=["nxdomain", "one-record", "malformed"],
)
def test_plugin_passes_through_what_it_must_not_or_cannot_shuffle(resp: Response) -> None:
    assert serve(LoadBalance(), query(), resp) is resp


def test_aaaa_answers_are_shuffled_too() -> None:
    req = query(qtype="AAAA")
    body = b"".join(rr(QNAME_PTR, T_AAAA, 5, f"fd00::{i}") for i in range(1, 4))
    resp = Response(reply(req, NOERROR, body=body, counts=(3, 0, 0)), NOERROR)
    lb = LoadBalance(random.Random(5))
    assert len({serve(lb, req, resp).wire for _ in range(20)}) > 1


# --- the directive ------------------------------------------------------------------------------------

def directive(text: str) -> object:
    d = parse(f". {{\n{text}\n}}\n", "Corefile")[0].directives[0]
    return setup(d, SiteConfig(zones=["."], port=53, corefile="Corefile"))


@pytest.mark.parametrize("text", ["loadbalance", "loadbalance round_robin"])
def test_setup(text: str) -> None:
    assert isinstance(directive(text), LoadBalance)


@pytest.mark.parametrize(
    "text, message",
    [
        ("loadbalance weighted /etc/weights", "weighted policy is not supported"),
        ("loadbalance weighted", "weighted policy is not supported"),
        ("loadbalance random", "unknown policy: random"),
        ("loadbalance round_robin extra", "wrong argument count"),
        ("loadbalance {\n prefer 10.0.0.0/8\n}", "unknown property 'prefer'"),
    ],
)
def test_setup_errors(text: str, message: str) -> None:
    with pytest.raises(CorefileError) as e:
        directive(text)
    assert "Corefile:" in str(e.value) and "loadbalance: " in str(e.value) and message in str(e.value)
