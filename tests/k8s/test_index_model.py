"""The index against a naive model: random owners' contributions, colliding on a small universe of
names, and queries in between; after every step existence, records, answers (prepared or not),
size, owners and generation must be what the model says.

Answers are compared with those of a fresh Index built from the model's current state: a prepared
answer the index kept across a change that should have dropped it shows up as a difference.
"""

from __future__ import annotations

import struct

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from clusterdns.k8s.index import Index, Prepared
from clusterdns.k8s.records import Records, reverse_name
from clusterdns.wire import T_A, T_AAAA, T_PTR, T_SRV

ZONES = ["cluster.local.", "in-addr.arpa.", "ip6.arpa."]
OWNERS = ["svc/ns/a", "svc/ns/b", "ns/ns", "pod/ns/p"]
V4 = ["10.0.0.1", "10.0.0.2", "10.0.1.1"]
V6 = ["fd00::1", "fd00::2", "fd00::1:1"]
FORWARD = [
    "a.ns.svc.cluster.local.",
    "x.a.ns.svc.cluster.local.",
    "_http._tcp.a.ns.svc.cluster.local.",
    "b.ns.svc.cluster.local.",
    "ns.svc.cluster.local.",  # a namespace: also an ENT above the others
    "y.b.other.svc.cluster.local.",
]
# full reverse names (kept under their address), and a partial one that is also their ENT
REVERSE = [reverse_name(ip) for ip in V4 + V6] + ["0.0.10.in-addr.arpa."]
NAMES = FORWARD + REVERSE
NEVER = [
    "cluster.local.",  # the apex is the plugin's business
    "nope.ns.svc.cluster.local.",
    "z.x.a.ns.svc.cluster.local.",
    "9.9.9.9.in-addr.arpa.",
    "01.0.0.10.in-addr.arpa.",  # not canonical: not the address 10.0.0.1
    reverse_name("fd00::3"),
]
QTYPES = [T_A, T_AAAA, T_PTR, T_SRV]


def zone_of(name: str) -> str:
    return next(z for z in ZONES if name.endswith("." + z))


def ancestors(name: str) -> list[str]:
    """The proper ancestors of ``name`` below its zone apex."""
    zone, out = zone_of(name), []
    while True:
        name = name.split(".", 1)[1]
        if name == zone:
            return out
        out.append(name)


ANCESTORS = {n: ancestors(n) for n in NAMES}
CHECKED = sorted({*NAMES, *(a for n in NAMES for a in ANCESTORS[n]), *NEVER})

RECORD = st.one_of(
    st.tuples(st.just(T_A), st.sampled_from(V4)),
    st.tuples(st.just(T_AAAA), st.sampled_from(V6)),
    st.tuples(st.just(T_PTR), st.sampled_from(FORWARD)),
    st.tuples(st.just(T_SRV), st.sampled_from(FORWARD).map(lambda t: (0, 100, 80, t))),
)
CONTRIBUTION = st.dictionaries(st.sampled_from(NAMES), st.lists(RECORD, max_size=3, unique=True), max_size=5)


def split_rrs(body: bytes, count: int, off: int = 0) -> tuple[list[bytes], int]:
    """``count`` records from ``body`` at ``off``, each as its bytes."""
    out = []
    for _ in range(count):
        start = off
        while body[off] and body[off] < 0xC0:  # labels up to the root or a compression pointer
            off += 1 + body[off]
        off += 1 if body[off] == 0 else 2
        (rdlength,) = struct.unpack_from(">H", body, off + 8)
        off += 10 + rdlength
        out.append(body[start:off])
    return out, off


def comparable(p: Prepared | None) -> tuple[object, ...] | None:
    """A prepared answer with its records as sorted lists: where several owners contribute one
    name, the index merges them in the order they came to that name, which the model does not keep."""
    if p is None:
        return None
    answer, off = split_rrs(p.body, p.ancount)
    extra, end = split_rrs(p.body, p.arcount, off)
    assert end == len(p.body)
    return (p.rcode, p.ancount, p.arcount, sorted(answer), sorted(extra), p.negative, p.target)


class IndexModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = Index(list(ZONES), 30)
        self.model: dict[str, Records] = {}  # owner -> {name: [(type, value), ...]}, as set
        self.generation = self.index.generation

    def names(self) -> set[str]:
        return {n for recs in self.model.values() for n in recs}

    def existing(self) -> set[str]:
        """The names that exist: those contributed and their ancestors below the apex (the ENTs)."""
        names = self.names()
        return names | {a for n in names for a in ANCESTORS[n]}

    def records(self, name: str) -> set[tuple[int, object]]:
        return {r for recs in self.model.values() for r in recs.get(name, [])}

    def fresh(self) -> Index:
        idx = Index(list(ZONES), 30)
        for owner, recs in self.model.items():
            idx.set(owner, recs)
        return idx

    @rule(owner=st.sampled_from(OWNERS), records=CONTRIBUTION)
    def set(self, owner: str, records: Records) -> None:
        before = self.model.get(owner, {})
        # fresh lists and strings: the index must not depend on the caller keeping them alive or unchanged
        changed = self.index.set("".join(owner), {"".join(n): list(r) for n, r in records.items()})
        assert changed == (records != before)
        if records:
            self.model[owner] = records
        else:
            self.model.pop(owner, None)
        assert self.index.generation == self.generation + changed
        self.generation = self.index.generation

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def remove(self, data: st.DataObject) -> None:
        self.set(data.draw(st.sampled_from(sorted(self.model))), {})

    @precondition(lambda self: self.model)
    @rule(data=st.data())
    def resend(self, data: st.DataObject) -> None:
        """An owner derived again with the same records (a no-op), or with one name's records reordered."""
        owner = data.draw(st.sampled_from(sorted(self.model)))
        recs = {n: list(r) for n, r in self.model[owner].items()}
        if data.draw(st.booleans()):
            name = data.draw(st.sampled_from(sorted(recs)))
            recs[name].reverse()
        self.set(owner, recs)

    @rule(name=st.sampled_from(CHECKED), qtype=st.sampled_from(QTYPES))
    def answer(self, name: str, qtype: int) -> None:
        got = self.index.answer(name, qtype)
        assert (got is None) == (name not in self.existing())

    @invariant()
    def matches_model(self) -> None:
        names, existing, fresh = self.names(), self.existing(), self.fresh()
        for name in CHECKED:
            assert self.index.exists(name) == (name in existing), name
            assert set(self.index.records(name)) == self.records(name), name
            for qtype in QTYPES:
                want = comparable(fresh.answer(name, qtype)) if name in existing else None
                served = self.index.prepared.get(name, {}).get(qtype)  # what the plugin serves as is
                if served is not None:
                    assert comparable(served) == want, (name, qtype)
                assert comparable(self.index.answer(name, qtype)) == want, (name, qtype)
        assert len(self.index) == len(names)
        assert self.index.owners() == set(self.model)
        assert set(self.index._ents) == {a for n in names for a in ANCESTORS[n]}  # no count left behind
        assert set(self.index.prepared) <= existing


IndexModel.TestCase.settings = settings(
    max_examples=200,
    stateful_step_count=30,
    deadline=None,
    report_multiple_bugs=False,  # one bug, shrunk in seconds rather than several in minutes
    suppress_health_check=[HealthCheck.too_slow],
)
test_index_model = IndexModel.TestCase


def test_srv_glue_follows_its_target() -> None:
    """The model's first find: a prepared SRV answer carries its target's A/AAAA as glue, so a
    change to the target's records must drop it, though the SRV record itself did not change
    (a headless Service's named port, its hostnamed endpoint restarted with a new IP)."""
    idx = Index(list(ZONES), 30)
    base, web = "h.ns.svc.cluster.local.", "web-0.h.ns.svc.cluster.local."
    srv = "_http._tcp." + base

    def records(ip: str) -> Records:
        return {base: [(T_A, ip), (T_SRV, (0, 100, 80, web))], srv: [(T_SRV, (0, 100, 80, web))], web: [(T_A, ip)]}

    idx.set("svc/ns/h", records("10.0.0.1"))
    first = idx.answer(srv, T_SRV)
    assert first is not None and first.body.endswith(bytes([10, 0, 0, 1]))
    idx.set("svc/ns/h", records("10.0.0.2"))
    second = idx.answer(srv, T_SRV)
    assert second is not None and second.body.endswith(bytes([10, 0, 0, 2]))
    idx.set("svc/ns/other", {web: [(T_AAAA, "fd00::1")]})  # another owner's records are glue too
    third = idx.answer(srv, T_SRV)
    assert third is not None and third.arcount == 2
