"""The ``loadbalance`` plugin: shuffle A, AAAA and MX records of every NOERROR answer.

Syntax: ``loadbalance [round_robin]`` (``weighted`` is refused as not supported).

As CoreDNS's round_robin, in each section: a run of only A or only AAAA records is shuffled as is;
otherwise CNAMEs go first, then other records in their order, then the shuffled addresses, then the
shuffled MX records. The shuffle is uniform (``random.shuffle``).

It works on the wire: records are located with ``wire.scan`` and their byte ranges permuted, after a
plan worked out once per distinct message (answers repeat: the plan is memoized by the bytes after
the ID). Moving bytes is only safe when no compression pointer in the message points into them;
when one does, the message goes through a dnslib parse, reorder and pack instead.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, TypeVar

from clusterdns.corefile import Directive
from clusterdns.plugin import NOERROR, Next, Request, Response, Result, SiteConfig, register
from clusterdns.wire import T_A, T_AAAA, T_AXFR, T_CNAME, T_IXFR, T_MX, RRSpan, scan

T = TypeVar("T")

# Where names sit in the rdata of the types whose names may be compressed (RFC 1035, RFC 3597
# section 4): type -> (offset of the first name, number of consecutive names).
NAME_RDATA = {
    2: (0, 1), 3: (0, 1), 4: (0, 1), 5: (0, 1), 6: (0, 2), 7: (0, 1), 8: (0, 1), 9: (0, 1), 12: (0, 1),
    14: (0, 2), 15: (2, 1), 17: (0, 2), 18: (2, 1), 21: (2, 1), 26: (2, 2), 33: (6, 1), 36: (2, 1), 39: (0, 1),
}
OPAQUE_NAMES = frozenset({24, 30, 35})  # SIG, NXT, NAPTR: names behind fields we do not walk
MEMO_SIZE = 4096  # plans remembered per plugin; the memo starts over when full


def arrange(records: list[T], rtype: Callable[[T], int]) -> list[tuple[bool, list[T]]]:
    """CoreDNS's round_robin order of one section, as runs of (shuffle this run?, records)."""
    if len(records) < 2:
        return [(False, records)]
    types = [rtype(r) for r in records]
    if types[0] in (T_A, T_AAAA) and types.count(types[0]) == len(types):
        return [(True, records)]
    pairs = list(zip(records, types, strict=True))
    cname = [r for r, t in pairs if t == T_CNAME]
    rest = [r for r, t in pairs if t not in (T_CNAME, T_A, T_AAAA, T_MX)]
    address = [r for r, t in pairs if t in (T_A, T_AAAA)]
    mx = [r for r, t in pairs if t == T_MX]
    return [(False, cname + rest), (True, address), (True, mx)]


def reorder(records: list[T], rtype: Callable[[T], int], rng: random.Random) -> list[T]:
    """One section in round_robin order, each run to shuffle shuffled uniformly."""
    out: list[T] = []
    for shuffle, run in arrange(records, rtype):
        if shuffle:
            run = run[:]
            rng.shuffle(run)
        out += run
    return out


def _rtype(span: RRSpan) -> int:
    return span.rtype


def _pointer(msg: bytes, off: int) -> int | None:
    """The compression pointer ending the name at ``off``, if it has one."""
    while True:
        ln = msg[off]
        if ln == 0:
            return None
        if ln & 0xC0 == 0xC0:
            return (ln & 0x3F) << 8 | msg[off + 1]
        off += 1 + ln


def _skip(msg: bytes, off: int) -> int:
    while True:
        ln = msg[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            return off + 2
        off += 1 + ln


def pointers(msg: bytes, spans: list[RRSpan]) -> list[int] | None:
    """Every compression pointer target in the records' names; None if some names cannot be found."""
    found = []
    for s in spans:
        if s.rtype in OPAQUE_NAMES:
            return None
        names = [s.start]
        first, count = NAME_RDATA.get(s.rtype, (0, 0))
        off = s.ttl_at + 6 + first  # TTL, RDLENGTH, then the rdata
        for _ in range(count):
            names.append(off)
            off = _skip(msg, off)
        found += [p for p in (_pointer(msg, o) for o in names) if p is not None]
    return found


Run = tuple[int, int] | list[tuple[int, int]]  # a record's byte range kept in place, or ranges to shuffle


@dataclass(frozen=True, slots=True)
class Plan:
    """How to reorder every message whose bytes after the ID are these: [lo, hi) is rebuilt from runs."""

    lo: int
    hi: int
    runs: tuple[Run, ...]


FALLBACK = Plan(0, 0, ())  # compression pointers into moving bytes: dnslib has to do it


def plan(msg: bytes) -> Plan | None:
    """The reordering of ``msg`` (None: nothing moves), worked out once per distinct message."""
    spans = scan(msg)
    out: list[tuple[RRSpan, int]] = []  # (record, number of its shuffled run, or -1 when it stays put)
    for section in range(3):
        for n, (shuffle, run) in enumerate(arrange([s for s in spans if s.section == section], _rtype)):
            out += [(s, 3 * section + n if shuffle and len(run) > 1 else -1) for s in run]
    # Records that keep their place at either end stay out of the rebuilt range.
    i, j = 0, len(spans)
    while i < j and out[i][0] is spans[i] and out[i][1] < 0:
        i += 1
    while j > i and out[j - 1][0] is spans[j - 1] and out[j - 1][1] < 0:
        j -= 1
    if i == j:
        return None
    lo, hi = spans[i].start, spans[j - 1].end
    targets = pointers(msg, spans)
    if targets is None or any(lo <= t < hi for t in targets):
        return FALLBACK
    runs: list[Run] = []
    for group, items in itertools.groupby(out[i:j], key=lambda x: x[1]):
        ranges = [(s.start, s.end) for s, _ in items]
        runs += [ranges] if group >= 0 else ranges
    return Plan(lo, hi, tuple(runs))


def shuffle_wire(msg: bytes, rng: random.Random, memo: dict[bytes, Plan | None] | None = None) -> bytes:
    """``msg`` with each section reordered; a new bytes object (``msg`` itself is never changed)."""
    memo = {} if memo is None else memo
    key = msg[2:]
    try:
        p = memo[key]
    except KeyError:
        p = plan(msg)
        if len(memo) >= MEMO_SIZE:
            memo.clear()
        memo[key] = p
    if p is None:
        return msg
    if p is FALLBACK:
        return _shuffle_parsed(msg, rng)
    parts = [msg[: p.lo]]
    for run in p.runs:
        if isinstance(run, list):
            ranges = run[:]
            rng.shuffle(ranges)
            parts += [msg[a:b] for a, b in ranges]
        else:
            parts.append(msg[run[0] : run[1]])
    parts.append(msg[p.hi :])
    return b"".join(parts)


def _shuffle_parsed(msg: bytes, rng: random.Random) -> bytes:
    """The slow path: dnslib parses, the sections are reordered, dnslib packs (and re-compresses)."""
    from dnslib import DNSRecord

    rec = DNSRecord.parse(msg)
    rec.rr = reorder(rec.rr, lambda r: r.rtype, rng)
    rec.auth = reorder(rec.auth, lambda r: r.rtype, rng)
    rec.ar = reorder(rec.ar, lambda r: r.rtype, rng)
    return bytes(rec.pack())


class LoadBalance:
    """Shuffles the answers coming back up the chain."""

    name: ClassVar[str] = "loadbalance"

    def __init__(self, rng: random.Random | None = None) -> None:
        self.rng = rng or random.Random()
        self.memo: dict[bytes, Plan | None] = {}  # message without its ID -> plan (answers repeat)

    def serve(self, req: Request, call_next: Next) -> Result:
        res = call_next(req)
        if not isinstance(res, Response):
            return self._later(req, res)
        w = res.wire  # nothing to reorder unless some section holds two records or more
        if len(w) >= 12 and w[7] < 2 and w[9] < 2 and w[11] < 2 and not (w[6] or w[8] or w[10]):
            return res
        return self._shuffled(req, res)

    async def _later(self, req: Request, pending: Awaitable[Response]) -> Response:
        return self._shuffled(req, await pending)

    def _shuffled(self, req: Request, resp: Response) -> Response:
        """``resp`` with its records in a fresh order (a new Response; the one given is not changed)."""
        w = resp.wire
        if resp.rcode != NOERROR or req.qtype in (T_AXFR, T_IXFR) or len(w) < 12:
            return resp
        # Nothing to reorder unless some section holds two records or more.
        if w[6] == w[8] == w[10] == 0 and w[7] < 2 and w[9] < 2 and w[11] < 2:
            return resp
        try:
            wire = shuffle_wire(w, self.rng, self.memo)
        except Exception:  # best effort: a message we cannot read goes out as it came
            return resp
        if wire is w:
            return resp
        return Response(wire, resp.rcode, resp.plugin, resp.has_opt)


@register("loadbalance")
def setup(d: Directive, site: SiteConfig) -> LoadBalance:
    match d.args:
        case [] | ["round_robin"]:
            pass
        case ["weighted", *_]:
            raise d.error("the weighted policy is not supported; use round_robin")
        case [policy]:
            raise d.error(f"unknown policy: {policy}")
        case _:
            raise d.arg_error()
    for opt in d.options():  # CoreDNS's `prefer` is not implemented
        raise opt.error(f"unknown property {opt.name!r}")
    return LoadBalance()
