"""The in-memory index: DNS name -> records, and name -> prepared wire answers.

Owners (one Service with its EndpointSlices, one Namespace, one Pod) contribute records to names;
``set(owner, records)`` replaces one owner's contribution and touches only its names. Answers are
prepared as wire bytes on first use after a change and then served by a dict lookup.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass

from clusterdns.k8s.records import Records
from clusterdns.plugin import NOERROR, NXDOMAIN, Request
from clusterdns.wire import AA, QNAME_PTR, QR, T_A, T_AAAA, T_ANY, T_CNAME, T_SOA, T_SRV, encode_name, rr

_FLAGS = QR | AA
_COPY = 0x0110  # RD | CD
_H = struct.Struct(">HHHHHH")
MAX_PREPARED_PER_NAME = 16
RRs = tuple[tuple[int, object], ...]
Contrib = tuple[str, RRs] | dict[str, RRs]  # bounds memory when clients ask odd types of one name


@dataclass(frozen=True, slots=True)
class Prepared:
    """A ready answer: the header's counts and the bytes after the question."""

    rcode: int
    ancount: int
    arcount: int
    body: bytes  # answer + additional records; a negative answer gets the SOA added per query
    negative: bool  # NODATA/NXDOMAIN: the zone's SOA goes into AUTHORITY
    target: str = ""  # a CNAME's target the plugin still has to resolve (ExternalName)

    def build(self, req: Request, soa: bytes) -> bytes:
        flags = _FLAGS | (req.flags & _COPY) | self.rcode
        if self.negative:
            return _H.pack(req.id, flags, 1, 0, 1, 0) + req.question + soa
        return _H.pack(req.id, flags, 1, self.ancount, 0, self.arcount) + req.question + self.body


NXDOMAIN_ANSWER = Prepared(NXDOMAIN, 0, 0, b"", True)
NODATA_ANSWER = Prepared(NOERROR, 0, 0, b"", True)


class Index:
    """Records by name, contributed by owners; prepared answers cached per (name, qtype)."""

    def __init__(self, zones: list[str], ttl: int) -> None:
        self.zones = zones
        self.ttl = ttl
        self.serial = int(time.time())
        self.generation = 0  # bumped on every change: lets callers memoise answers about absent names
        self.prepared: dict[str, dict[int, Prepared]] = {}
        # name -> (owner, records) when one owner contributes (nearly always), else {owner: records};
        # the compact form keeps a large cluster's index small
        self._records: dict[str, Contrib] = {}
        self._owned: dict[str, tuple[str, ...]] = {}  # owner -> its names
        self._ents: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._records)

    def owners(self) -> set[str]:
        return set(self._owned)

    def in_zones(self, name: str) -> bool:
        return any(name == z or name.endswith("." + z) or z == "." for z in self.zones)

    def _of(self, name: str, owner: str) -> RRs | None:
        c = self._records.get(name)
        if c is None:
            return None
        if isinstance(c, tuple):
            return c[1] if c[0] == owner else None
        return c.get(owner)

    def _put(self, name: str, owner: str, rrs: RRs) -> None:
        c = self._records.get(name)
        if c is None:
            self._records[name] = (owner, rrs)
            self._ancestors(name, +1)
        elif isinstance(c, tuple):
            self._records[name] = (owner, rrs) if c[0] == owner else {c[0]: c[1], owner: rrs}
        else:
            c[owner] = rrs

    def _drop(self, name: str, owner: str) -> None:
        c = self._records[name]
        if isinstance(c, dict):
            del c[owner]
            if len(c) > 1:
                return
            if c:
                self._records[name] = next(iter(c.items()))
                return
        del self._records[name]
        self._ancestors(name, -1)

    def set(self, owner: str, records: Records) -> bool:
        """Replace what ``owner`` contributes (names outside our zones are left out, e.g. PTRs
        when no reverse zone is served); returns True when anything changed."""
        fresh = {n: tuple(r) for n, r in records.items() if self.in_zones(n)}
        old = self._owned.get(owner, ())
        changed = False
        for name in old:
            if name not in fresh:
                self._drop(name, owner)
                self.prepared.pop(name, None)
                changed = True
        for name, rrs in fresh.items():
            if self._of(name, owner) == rrs and name in old:
                continue
            self._put(name, owner, rrs)
            self.prepared.pop(name, None)
            changed = True
        if fresh:
            self._owned[owner] = tuple(fresh)
        else:
            self._owned.pop(owner, None)
        if changed:
            self.serial = int(time.time())
            self.generation += 1
        return changed

    def _ancestors(self, name: str, delta: int) -> None:
        """Keep the empty non-terminals above ``name`` (up to its zone apex) counted."""
        while True:
            dot = name.find(".")
            if dot < 0 or dot == len(name) - 1:
                return
            name = name[dot + 1 :]
            if name in self.zones:
                return
            n = self._ents.get(name, 0) + delta
            if n > 0:
                self._ents[name] = n
            else:
                self._ents.pop(name, None)
                self.prepared.pop(name, None)  # a cached NODATA must become NXDOMAIN

    def exists(self, name: str) -> bool:
        return name in self._records or name in self._ents

    def records(self, name: str) -> RRs:
        c = self._records.get(name)
        if c is None:
            return ()
        if isinstance(c, tuple):
            return c[1]
        merged: list[tuple[int, object]] = []
        for rrs in c.values():
            merged.extend(r for r in rrs if r not in merged)
        return tuple(merged)

    def answer(self, name: str, qtype: int) -> Prepared | None:
        """The answer for (name, qtype), prepared and cached; None when the name does not exist."""
        per = self.prepared.get(name)
        if per is not None and qtype in per:
            return per[qtype]
        if not self.exists(name):
            return None
        rrs = self.records(name)
        cname = [r for r in rrs if r[0] == T_CNAME]
        match = cname if cname and qtype != T_CNAME else [r for r in rrs if qtype in (r[0], T_ANY)]
        if not match:
            prepared = NODATA_ANSWER
        else:
            answer = b"".join(rr(QNAME_PTR, t, self.ttl, v) for t, v in match)
            glue = [self._glue(v[3]) for t, v in match if t == T_SRV]  # type: ignore[index]
            extra = b"".join(b for g in glue for b in g)
            target = str(cname[0][1]) if cname and qtype != T_CNAME else ""
            prepared = Prepared(NOERROR, len(match), sum(len(g) for g in glue), answer + extra, False, target)
        per = self.prepared.setdefault(name, {})
        if len(per) < MAX_PREPARED_PER_NAME:
            per[qtype] = prepared
        return prepared

    def _glue(self, target: str) -> list[bytes]:
        owner = encode_name(target)
        return [rr(owner, t, self.ttl, v) for t, v in self.records(target) if t in (T_A, T_AAAA)]

    def soa_value(self, zone: str) -> tuple[str, str, int, int, int, int, int]:
        """CoreDNS's SOA: ns.dns.<zone> hostmaster.<zone> <serial> 7200 1800 86400 <ttl>."""
        suffix = "" if zone == "." else zone
        return (f"ns.dns.{suffix}", f"hostmaster.{suffix}", self.serial, 7200, 1800, 86400, self.ttl)

    def soa_rr(self, zone: str) -> bytes:
        """The zone's SOA record for AUTHORITY sections (TTL min(ttl, 300), as CoreDNS)."""
        return rr(encode_name(zone), T_SOA, min(self.ttl, 300), self.soa_value(zone))
