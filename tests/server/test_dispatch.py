"""The dispatcher: answers that come back at once, answers that come back later, and chains that fail
either way without `errors` in front of them (the dispatcher is the last guard)."""

from __future__ import annotations

import asyncio
import struct

from clusterdns.metrics import PANICS, REGISTRY
from clusterdns.plugin import NOERROR, REFUSED, SERVFAIL, Request, Response
from clusterdns.server.dispatch import Dispatcher
from clusterdns.wire import encode_name, reply

CLIENT = ("127.0.0.1", 5300)


def query(name: str, qid: int = 7) -> bytes:
    return struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", 1, 1)


def chain(req: Request) -> Response | object:
    if req.qname.startswith("now."):
        return Response(reply(req, NOERROR, aa=True), NOERROR, "test")
    if req.qname.startswith("raise."):
        raise RuntimeError("synchronous bug")
    return later(req)


async def later(req: Request) -> Response:
    await asyncio.sleep(0.01)
    if req.qname.startswith("late-raise."):
        raise RuntimeError("bug after a wait")
    return Response(reply(req, NOERROR, aa=True), NOERROR, "test")


def rcode(wire: bytes) -> int:
    return wire[3] & 0xF


def test_immediate_and_suspended_answers_and_failures() -> None:
    disp = Dispatcher()
    disp.add("example.", chain, "dns://:53")  # type: ignore[arg-type]
    sent: list[tuple[int, int]] = []  # (id, rcode)
    panics = REGISTRY.values[PANICS.name].get((), 0)

    def send(wire: bytes, _addr: object) -> None:
        sent.append((struct.unpack_from(">H", wire)[0], rcode(wire)))

    async def main() -> None:
        assert disp.handle(query("now.example.", 1), "udp", CLIENT, send)
        assert sent == [(1, NOERROR)]  # answered before handle returned
        disp.handle(query("raise.example.", 2), "udp", CLIENT, send)
        assert sent[-1] == (2, SERVFAIL)  # a synchronous exception is caught at once
        disp.handle(query("wait.example.", 3), "udp", CLIENT, send)
        disp.handle(query("late-raise.example.", 4), "udp", CLIENT, send)
        assert disp.inflight == 2 and len(sent) == 2
        await asyncio.sleep(0.1)
        assert disp.inflight == 0
        disp.handle(query("elsewhere.org.", 5), "udp", CLIENT, send)  # no block serves it

    asyncio.run(main())
    assert sorted(sent) == [(1, NOERROR), (2, SERVFAIL), (3, NOERROR), (4, SERVFAIL), (5, REFUSED)]
    assert REGISTRY.values[PANICS.name][()] == panics + 2
