"""errors: a failure below it, raised at once or while awaiting, becomes SERVFAIL and one log line."""

from __future__ import annotations

import asyncio
import logging
import struct

import pytest

from clusterdns.plugin import NXDOMAIN, SERVFAIL, Request, Response, build_chain, resolve
from clusterdns.plugins.errors import Errors
from clusterdns.wire import encode_name, parse_query, reply


def request(name: str = "boom.example.") -> Request:
    data = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", 1, 1)
    return parse_query(data, "udp", ("127.0.0.1", 5300))


def raise_now(req: Request) -> Response:
    raise RuntimeError("broken at once")


async def raise_later(req: Request) -> Response:
    await asyncio.sleep(0)
    raise ValueError("broken later")


def answer_now(req: Request) -> Response:
    return Response(reply(req, NXDOMAIN), NXDOMAIN, "kubernetes")


def test_a_synchronous_failure_is_answered_at_once(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, "clusterdns.errors"):
        res = Errors().serve(request(), raise_now)
    assert isinstance(res, Response)  # no coroutine: the failure was caught where it happened
    assert res.rcode == SERVFAIL and res.wire[3] & 0xF == SERVFAIL
    assert caplog.messages == ["[ERROR] plugin/errors: 2 boom.example. A: broken at once"]


def test_a_failure_while_waiting_is_answered_when_it_happens(caplog: pytest.LogCaptureFixture) -> None:
    res = Errors().serve(request(), raise_later)
    assert not isinstance(res, Response)  # downstream suspended, so errors hands back a coroutine
    with caplog.at_level(logging.ERROR, "clusterdns.errors"):
        resp = asyncio.run(resolve(res))
    assert resp.rcode == SERVFAIL
    assert caplog.messages == ["[ERROR] plugin/errors: 2 boom.example. A: broken later"]


def test_answers_pass_through_untouched() -> None:
    req = request("fine.example.")
    chain = build_chain([Errors()], answer_now)
    res = chain(req)
    assert isinstance(res, Response) and res.rcode == NXDOMAIN and res.plugin == "kubernetes"
