"""The shared HTTP listener (clusterdns/server/http.py): addresses, requests, keep-alive, limits,
and the hub that keeps a listener across route swaps. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable

import pytest

from clusterdns.server import http
from clusterdns.server.http import HttpHub, Reply, parse_address
from clusterdns.server.sockets import StartError


@pytest.mark.parametrize(("text", "expected"), [
    (":8080", ("", 8080)),
    ("localhost:9153", ("localhost", 9153)),
    ("127.0.0.1:8181", ("127.0.0.1", 8181)),
    ("[::1]:8080", ("::1", 8080)),
    ("[::]:0", ("::", 0)),
])
def test_parse_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(("text", "error"), [
    ("8080", "missing port"),
    ("localhost", "missing port"),
    ("[::1]", "missing port"),
    ("::1:8080", "too many colons"),
    (":http", "invalid port"),
    (":70000", "invalid port"),
    (":", "invalid port"),
])
def test_parse_address_rejects(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_address(text)


def run(test: Callable[[HttpHub], Awaitable[None]]) -> None:
    """Run ``test`` with a hub whose listeners are closed afterwards."""

    async def main() -> None:
        hub = HttpHub()
        try:
            await test(hub)
        finally:
            hub.close()

    asyncio.run(main())


async def exchange(port: int, payload: bytes, timeout: float = 2.0) -> bytes:
    """Send ``payload`` and read until the server closes the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        return await asyncio.wait_for(reader.read(), timeout)
    finally:
        writer.close()


ADDR = ("127.0.0.1", 0)


async def started(hub: HttpHub, routes: dict[str, Callable[[], Reply]]) -> int:
    await hub.ensure([ADDR])
    hub.serve({ADDR: routes})
    return hub.listeners[ADDR].port


def test_get_head_404_405() -> None:
    async def test(hub: HttpHub) -> None:
        port = await started(hub, {"/health": lambda: Reply(200, b"OK")})
        out = await exchange(port, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\nOK")
        assert b"Content-Length: 2\r\n" in out
        out = await exchange(port, b"HEAD /health?x=1 HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 200 OK\r\n") and out.endswith(b"\r\n\r\n")  # no body
        out = await exchange(port, b"GET /nope HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 404 Not Found\r\n")
        out = await exchange(port, b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n") and b"Allow: GET, HEAD\r\n" in out

    run(test)


def test_keep_alive_pipelining_and_http10() -> None:
    async def test(hub: HttpHub) -> None:
        calls: list[int] = []

        def count() -> Reply:
            calls.append(1)
            return Reply(200, str(len(calls)).encode())

        port = await started(hub, {"/n": count})
        # three pipelined requests on one connection, answered in order; the last one closes it
        out = await exchange(port, b"GET /n HTTP/1.1\r\n\r\n" * 2 + b"GET /n HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert out.count(b"HTTP/1.1 200 OK") == 3
        assert [part[-1:] for part in out.split(b"HTTP/1.1 ")[1:]] == [b"1", b"2", b"3"]
        # HTTP/1.0 closes after one response unless asked to keep the connection
        out = await exchange(port, b"GET /n HTTP/1.0\r\n\r\n")
        assert out.endswith(b"4") and b"Connection: close" in out

    run(test)


def test_limits_close_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(http, "IDLE_TIMEOUT", 0.2)

    async def test(hub: HttpHub) -> None:
        port = await started(hub, {"/": lambda: Reply(200)})
        out = await exchange(port, b"GET / HTTP/1.1\r\nX-Big: " + b"a" * 9000)
        assert out.startswith(b"HTTP/1.1 431 ")
        out = await exchange(port, b"GET / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        assert out.startswith(b"HTTP/1.1 400 ")
        out = await exchange(port, b"NONSENSE\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 400 ")
        loop = asyncio.get_running_loop()
        start = loop.time()
        assert await exchange(port, b"GET / HT") == b""  # a silent client is cut off when idle
        assert loop.time() - start < 1.5

    run(test)


def test_handler_error_is_500() -> None:
    async def test(hub: HttpHub) -> None:
        def boom() -> Reply:
            raise RuntimeError("bug")

        port = await started(hub, {"/boom": boom})
        out = await exchange(port, b"GET /boom HTTP/1.1\r\nConnection: close\r\n\r\n")
        assert out.startswith(b"HTTP/1.1 500 ")

    run(test)


def test_hub_keeps_a_listener_across_route_swaps_and_closes_unused_ones() -> None:
    async def test(hub: HttpHub) -> None:
        port = await started(hub, {"/a": lambda: Reply(200, b"a")})
        listener = hub.listeners[ADDR]
        other = ("127.0.0.1", free_port())
        await hub.ensure([ADDR, other])
        hub.serve({ADDR: {"/b": lambda: Reply(200, b"b")}, other: {"/c": lambda: Reply(200, b"c")}})
        assert hub.listeners[ADDR] is listener  # same socket: no gap
        assert (await exchange(port, b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n")).endswith(b"b")
        assert (await exchange(port, b"GET /a HTTP/1.1\r\nConnection: close\r\n\r\n")).startswith(b"HTTP/1.1 404")
        assert (await exchange(other[1], b"GET /c HTTP/1.1\r\nConnection: close\r\n\r\n")).endswith(b"c")
        hub.serve({ADDR: {}})
        assert other not in hub.listeners
        with pytest.raises(OSError):
            await exchange(other[1], b"GET /c HTTP/1.1\r\n\r\n")

    run(test)


def test_hub_binds_all_or_nothing() -> None:
    async def test(hub: HttpHub) -> None:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = ("127.0.0.1", busy.getsockname()[1])
            free = ("127.0.0.1", free_port())
            with pytest.raises(StartError, match="listen tcp"):
                await hub.ensure([free, taken])
            assert hub.listeners == {}
            with socket.socket() as probe:  # the free one was released again
                probe.bind(free)

    run(test)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
