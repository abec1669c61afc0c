"""The hand-written query reader and response helpers, checked against dnslib/dnspython."""

from __future__ import annotations

import struct

import dns.message
import pytest
from dnslib import EDNS0, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from clusterdns.plugin import BADVERS, FORMERR, NOTIMP
from clusterdns.wire import (
    T_A,
    T_OPT,
    WireError,
    error_reply,
    finalize,
    min_ttl,
    parse_query,
    reply,
    scan,
    truncate,
)

CLIENT = ("127.0.0.1", 5353)


def q(
    name: str = "Nginx-Service.default.svc.cluster.local", qtype: str = "A", edns: int | None = None, do: bool = False
) -> bytes:
    m = DNSRecord.question(name, qtype)
    if edns is not None:
        m.add_ar(EDNS0(udp_len=edns, flags="do" if do else ""))
    return bytes(m.pack())


def test_reads_question_lowercased_and_keeps_raw_case() -> None:
    data = q()
    req = parse_query(data, "udp", CLIENT)
    assert req.qname == "nginx-service.default.svc.cluster.local."
    assert req.qtype == T_A and req.qclass == 1
    assert b"Nginx-Service" in req.question
    assert not req.edns and req.udp_size == 512


def test_edns_size_and_do_bit() -> None:
    req = parse_query(q(edns=1232, do=True), "udp", CLIENT)
    assert req.edns and req.udp_size == 1232 and req.do


def test_edns_version_above_zero_is_badvers() -> None:
    m = DNSRecord.question("a.b", "A")
    m.add_ar(EDNS0(version=1))
    with pytest.raises(WireError) as e:
        parse_query(bytes(m.pack()), "udp", CLIENT)
    assert e.value.rcode == BADVERS
    out = dns.message.from_wire(error_reply(e.value.req, bytes(m.pack()), BADVERS))
    assert out.rcode() == dns.rcode.BADVERS


@pytest.mark.parametrize(
    "data,rcode",
    [
        (b"\x12", None),  # shorter than a header: dropped
        (struct.pack(">HHHHHH", 1, 0, 0, 0, 0, 0), FORMERR),  # QDCOUNT 0
        (struct.pack(">HHHHHH", 1, 0, 2, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01" * 2, FORMERR),  # QDCOUNT 2
        (struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x05ab", FORMERR),  # label past the end
        (struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\xc0\x0c\x00\x01\x00\x01", FORMERR),  # pointer loop
        (struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + b"\x01a\x00\x00", FORMERR),  # no class
        (struct.pack(">HHHHHH", 1, 0x8000, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01", None),  # a response
        (struct.pack(">HHHHHH", 1, 0x2000, 1, 0, 0, 0) + b"\x01a\x00\x00\x01\x00\x01", NOTIMP),  # opcode 4
        (struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 1) + b"\x01a\x00\x00\x01\x00\x01" + b"\x00\x00\x29", FORMERR),
    ],
)
def test_malformed_queries(data: bytes, rcode: int | None) -> None:
    with pytest.raises(WireError) as e:
        parse_query(data, "udp", CLIENT)
    assert e.value.rcode == rcode
    if rcode is not None:
        out = error_reply(e.value.req, data, rcode)
        assert out[:2] == data[:2] and out[3] & 0xF == rcode and out[2] & 0x80


def test_long_name_is_formerr() -> None:
    data = struct.pack(">HHHHHH", 1, 0, 1, 0, 0, 0) + (b"\x3f" + b"a" * 63) * 5 + b"\x00\x00\x01\x00\x01"
    with pytest.raises(WireError):
        parse_query(data, "udp", CLIENT)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise_anything_else(data: bytes) -> None:
    try:
        req = parse_query(data, "udp", CLIENT)
    except WireError as e:
        if e.rcode is not None:
            error_reply(e.req, data, e.rcode)
        return
    finalize(reply(req, 0), req, False)


def test_finalize_adds_opt_and_truncates_keeping_the_question() -> None:
    req = parse_query(q(edns=600), "udp", CLIENT)
    body = b"".join(b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 5, 4) + bytes([10, 0, 0, i]) for i in range(60))
    full = reply(req, 0, aa=True, body=body, counts=(60, 0, 0))
    out = finalize(full, req, False)
    msg = dns.message.from_wire(out)
    assert msg.flags & dns.flags.TC and len(out) <= 600
    assert msg.question[0].name.to_text() == "Nginx-Service.default.svc.cluster.local."
    assert msg.edns == 0
    tcp = parse_query(q(edns=600), "tcp", CLIENT)
    assert len(dns.message.from_wire(finalize(full, tcp, False)).answer[0]) == 60
    assert truncate(full, req)[:2] == full[:2]


def test_scan_and_min_ttl() -> None:
    m = DNSRecord.parse(
        bytes(DNSRecord.question("x.org").replyZone("x.org. 300 IN A 1.2.3.4\nx.org. 60 IN A 1.2.3.5").pack())
    )
    m.add_ar(EDNS0())
    wire = bytes(m.pack())
    spans = scan(wire)
    assert [s.rtype for s in spans] == [1, 1, T_OPT]
    assert min_ttl(wire, spans) == 60


def test_a_repeated_question_is_read_from_the_memo_with_its_own_id_and_flags() -> None:
    first = parse_query(q(edns=1232, do=True), "udp", CLIENT)
    again = bytearray(q(edns=1232, do=True))
    again[0:2] = b"\x99\x99"
    again[2] &= 0xFE  # RD off
    second = parse_query(bytes(again), "tcp", ("::1", 53))
    assert (second.qname, second.qtype, second.qend, second.edns, second.udp_size, second.do) == (
        first.qname, first.qtype, first.qend, first.edns, first.udp_size, first.do)
    assert second.id == 0x9999 and not second.flags & 0x0100 and second.proto == "tcp" and second.family == 2
    assert second.data is not first.data and second.question == first.question
    notify = bytearray(again)
    notify[2] |= 0x20  # opcode 4 (NOTIFY) must not be served from the memo
    with pytest.raises(WireError) as e:
        parse_query(bytes(notify), "udp", CLIENT)
    assert e.value.rcode == NOTIMP
