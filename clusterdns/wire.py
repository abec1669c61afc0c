"""DNS wire format on the hot path: a hand-written query reader, response assembly, EDNS and
truncation, and a small record encoder/scanner used where a full dnslib round trip would cost
tens of microseconds per query.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from clusterdns.plugin import BADVERS, FORMERR, NOTIMP, Request

QR, AA, TC, RD, RA, CD = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080, 0x0010
OPCODE_MASK = 0x7800
COPY_FLAGS = RD | CD  # copied from query to reply, as miekg/dns SetReply does

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_HINFO, T_MX, T_TXT, T_AAAA, T_SRV, T_OPT = (
    1, 2, 5, 6, 12, 13, 15, 16, 28, 33, 41,
)
T_IXFR, T_AXFR, T_ANY = 251, 252, 255
C_IN = 1

RCODE_NAMES = {
    0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED",
    6: "YXDOMAIN", 7: "YXRRSET", 8: "NXRRSET", 9: "NOTAUTH", 10: "NOTZONE", 16: "BADVERS",
}
TYPE_NAMES = {
    1: "A", 2: "NS", 5: "CNAME", 6: "SOA", 12: "PTR", 13: "HINFO", 15: "MX", 16: "TXT", 28: "AAAA",
    33: "SRV", 41: "OPT", 43: "DS", 46: "RRSIG", 47: "NSEC", 48: "DNSKEY", 50: "NSEC3", 64: "SVCB",
    65: "HTTPS", 251: "IXFR", 252: "AXFR", 255: "ANY",
}

_H = struct.Struct(">HHHHHH")
_TC = struct.Struct(">HH")
_IDF = struct.Struct(">HH")
_RR = struct.Struct(">HHIH")


class WireError(Exception):
    """A query that cannot be served normally: answer ``rcode`` (None means drop silently)."""

    def __init__(self, rcode: int | None, reason: str, req: Request | None = None) -> None:
        super().__init__(reason)
        self.rcode = rcode
        self.req = req


def _qname_text(data: bytes, start: int, stops: list[int], end: int) -> str:
    """Presentation form of the name at ``data[start:end]`` whose length bytes sit at ``stops``.

    Length bytes become dots and the text is lower-cased in one pass; a label holding a dot or a
    backslash is escaped so it can never collide with a name of more labels.
    """
    if end - start == 1:
        return "."
    raw = bytearray(data[start + 1 : end])
    if 0x2E in raw or 0x5C in raw:
        labels, off = [], start
        while data[off]:
            label = data[off + 1 : off + 1 + data[off]].decode("latin-1").lower()
            labels.append(label.replace("\\", "\\\\").replace(".", "\\."))
            off += 1 + data[off]
        return ".".join(labels) + "."
    for p in stops:
        raw[p - start - 1] = 0x2E
    return raw.decode("latin-1").lower()


# Parsed queries by everything after the ID and flags (counts, question, EDNS): clients ask the
# same few names over and over, so most queries skip the label walk. Bounded: cleared when full.
_MEMO: dict[bytes, tuple[str, int, int, int, bool, int, bool]] = {}
MEMO_SIZE = 4096


def parse_query(data: bytes, proto: str, client: tuple[str, int]) -> Request:
    """Read header, question and EDNS of a query. Raises WireError for anything unservable."""
    if len(data) < 12:
        raise WireError(None, "short packet")
    qid, flags = _IDF.unpack_from(data)
    if flags & QR:
        raise WireError(None, "response received as query")
    host = client[0]
    family = 2 if ":" in host and not host.startswith("::ffff:") else 1  # IPv4-mapped counts as IPv4
    if not flags & OPCODE_MASK:
        hit = _MEMO.get(data[4:])
        if hit is not None:
            qname, qtype, qclass, qend, edns, udp_size, do = hit
            return Request(data, qid, flags, qname, qtype, qclass, qend, edns, udp_size, do, proto, client, family)
    req = _parse(data, qid, flags, proto, client, family)
    if len(data) <= 512:  # bounds the memo's memory: 4096 keys of at most 508 bytes
        if len(_MEMO) >= MEMO_SIZE:
            _MEMO.clear()
        _MEMO[data[4:]] = (req.qname, req.qtype, req.qclass, req.qend, req.edns, req.udp_size, req.do)
    return req


def _parse(data: bytes, qid: int, flags: int, proto: str, client: tuple[str, int], family: int) -> Request:
    _, _, qd, an, ns, ar = _H.unpack_from(data)
    opcode = (flags & OPCODE_MASK) >> 11
    if qd != 1:
        raise WireError(FORMERR if opcode == 0 else NOTIMP, f"QDCOUNT={qd}")
    off = 12
    stops: list[int] = []
    try:
        ln = data[off]
        while ln:
            if ln > 63:
                raise WireError(FORMERR, "compressed or extended label in question")
            off += ln + 1
            stops.append(off)
            ln = data[off]
    except IndexError:
        raise WireError(FORMERR, "question runs past the end") from None
    if off - 12 > 254:
        raise WireError(FORMERR, "name longer than 255 octets")
    if off + 5 > len(data):
        raise WireError(FORMERR, "question without type and class")
    qtype, qclass = _TC.unpack_from(data, off + 1)
    qend = off + 5
    qname = _qname_text(data, 12, stops, off + 1)
    req = Request(data, qid, flags, qname, qtype, qclass, qend, False, 512, False, proto, client, family)
    if opcode != 0:
        raise WireError(NOTIMP, f"opcode {opcode}", req)
    if ar:
        _read_edns(data, qend, an + ns, ar, req)
    return req


def _skip_name(data: bytes, off: int) -> int:
    n = len(data)
    while True:
        if off >= n:
            raise WireError(FORMERR, "name runs past the end")
        ln = data[off]
        if ln == 0:
            return off + 1
        if ln & 0xC0 == 0xC0:
            if off + 2 > n:
                raise WireError(FORMERR, "pointer runs past the end")
            return off + 2
        if ln & 0xC0:
            raise WireError(FORMERR, "bad label type")
        off += 1 + ln


def _read_edns(data: bytes, off: int, skip: int, ar: int, req: Request) -> None:
    n = len(data)
    for i in range(skip + ar):
        off = _skip_name(data, off)
        if off + 10 > n:
            raise WireError(FORMERR, "record runs past the end", req)
        rtype, rclass, ttl, rdlen = _RR.unpack_from(data, off)
        if i >= skip and rtype == T_OPT:
            if req.edns:
                raise WireError(FORMERR, "two OPT records", req)
            req.edns = True
            req.udp_size = max(512, rclass)
            req.do = bool(ttl & 0x8000)
            if (ttl >> 16) & 0xFF:
                raise WireError(BADVERS, f"EDNS version {(ttl >> 16) & 0xFF}", req)
        off += 10 + rdlen
        if off > n:
            raise WireError(FORMERR, "rdata runs past the end", req)


def opt_rr(udp_size: int, do: bool, ext_rcode: int = 0) -> bytes:
    """An OPT pseudo-record advertising ``udp_size`` with the DO bit echoed."""
    return b"\x00" + _RR.pack(T_OPT, udp_size, (ext_rcode << 24) | (0x8000 if do else 0), 0)


def reply(
    req: Request, rcode: int, *, aa: bool = False, body: bytes = b"", counts: tuple[int, int, int] = (0, 0, 0)
) -> bytes:
    """A reply to ``req``: its ID and question, our flags, ``body`` holding the counted records."""
    flags = QR | (req.flags & (OPCODE_MASK | COPY_FLAGS)) | (AA if aa else 0) | (rcode & 0xF)
    return _H.pack(req.id, flags, 1, *counts) + req.question + body


def error_reply(req: Request | None, data: bytes, rcode: int) -> bytes:
    """An error reply (FORMERR, NOTIMP, BADVERS...): the question is echoed when it could be read."""
    if req is None:  # header only: the question was unreadable
        qid, flags = struct.unpack_from(">HH", data)
        return _H.pack(qid, QR | (flags & (OPCODE_MASK | COPY_FLAGS)) | (rcode & 0xF), 0, 0, 0, 0)
    if rcode > 15:
        opt = opt_rr(req.udp_size, req.do, rcode >> 4)
        return reply(req, rcode & 0xF, body=opt, counts=(0, 0, 1))
    return reply(req, rcode)


def finalize(wire: bytes, req: Request, has_opt: bool) -> bytes:
    """Add our OPT record when the client sent one, then truncate to the client's UDP size."""
    if req.edns and not has_opt:
        ar = (wire[10] << 8 | wire[11]) + 1
        wire = wire[:10] + ar.to_bytes(2, "big") + wire[12:] + opt_rr(req.udp_size, req.do)
    if len(wire) > (req.udp_size if req.proto == "udp" else 65535):  # TCP frames hold 65535 bytes
        wire = truncate(wire, req)
    return wire


def truncate(wire: bytes, req: Request) -> bytes:
    """TC=1 with the question kept (and OPT when the client sent one), records dropped."""
    flags = (wire[2] << 8 | wire[3]) | TC
    head = _H.pack(req.id, flags, 1, 0, 0, 1 if req.edns else 0) + req.question
    return head + (opt_rr(req.udp_size, req.do) if req.edns else b"")


# --- encoding records -------------------------------------------------------------------------

def encode_name(name: str) -> bytes:
    """Uncompressed wire form of a fully qualified presentation name (no escapes expected)."""
    if name in (".", ""):
        return b"\x00"
    out = bytearray()
    for label in name.rstrip(".").split("."):
        raw = label.encode("ascii", "replace")
        if not raw or len(raw) > 63:
            raise ValueError(f"bad label in {name!r}")
        out.append(len(raw))
        out += raw
    out.append(0)
    return bytes(out)


def rdata(rtype: int, value: object) -> bytes:
    """Encode the rdata of a record from its simple Python value."""
    if rtype == T_A:
        return ipaddress.IPv4Address(value).packed  # type: ignore[arg-type]
    if rtype == T_AAAA:
        return ipaddress.IPv6Address(value).packed  # type: ignore[arg-type]
    if rtype in (T_CNAME, T_PTR, T_NS):
        return encode_name(str(value))
    if rtype == T_SRV:
        prio, weight, port, target = value  # type: ignore[misc]
        return struct.pack(">HHH", prio, weight, port) + encode_name(target)
    if rtype == T_TXT:
        parts = [value] if isinstance(value, str) else list(value)  # type: ignore[call-overload]
        return b"".join(bytes([len(p.encode())]) + p.encode() for p in parts)
    if rtype == T_SOA:
        mname, rname, serial, refresh, retry, expire, minimum = value  # type: ignore[misc]
        return encode_name(mname) + encode_name(rname) + struct.pack(">IIIII", serial, refresh, retry, expire, minimum)
    raise ValueError(f"cannot encode type {rtype}")


QNAME_PTR = b"\xc0\x0c"  # a compression pointer to the question name at offset 12


def rr(owner: bytes, rtype: int, ttl: int, value: object) -> bytes:
    """One resource record; ``owner`` is wire bytes (``QNAME_PTR`` or ``encode_name(...)``)."""
    rd = rdata(rtype, value)
    return owner + _RR.pack(rtype, C_IN, ttl, len(rd)) + rd


# --- scanning whole messages (forward, cache, loadbalance) ------------------------------------

@dataclass(frozen=True, slots=True)
class RRSpan:
    """Where one record sits in a message."""

    section: int  # 0 answer, 1 authority, 2 additional
    start: int
    end: int
    rtype: int
    ttl_at: int  # offset of the 4-byte TTL


def scan(msg: bytes) -> list[RRSpan]:
    """Locate every record of a well-formed message; raises WireError(FORMERR) otherwise."""
    if len(msg) < 12:
        raise WireError(FORMERR, "short message")
    _, _, qd, an, ns, ar = _H.unpack_from(msg)
    off = 12
    for _ in range(qd):
        off = _skip_name(msg, off) + 4
    spans: list[RRSpan] = []
    n = len(msg)
    for section, count in enumerate((an, ns, ar)):
        for _ in range(count):
            start = off
            off = _skip_name(msg, off)
            if off + 10 > n:
                raise WireError(FORMERR, "record runs past the end")
            rtype, _c, _t, rdlen = _RR.unpack_from(msg, off)
            end = off + 10 + rdlen
            if end > n:
                raise WireError(FORMERR, "rdata runs past the end")
            spans.append(RRSpan(section, start, end, rtype, off + 4))
            off = end
    return spans


def min_ttl(msg: bytes, spans: Iterable[RRSpan]) -> int | None:
    """Smallest TTL among non-OPT records, or None when there are none."""
    ttls = [struct.unpack_from(">I", msg, s.ttl_at)[0] for s in spans if s.rtype != T_OPT]
    return min(ttls) if ttls else None


def rcode_of(msg: bytes) -> int:
    """The header RCODE of a message."""
    return msg[3] & 0xF
