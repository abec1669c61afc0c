"""The TCP transport (clusterdns/server/tcp.py): the cap on connections, through the real process,
and a paused listener, with a dispatcher that holds queries the way a chain waiting on an upstream
does. Real sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack, suppress
from typing import Any

import dns.message
import dns.query
import pytest

from clusterdns.server.dispatch import Dispatcher, Send
from clusterdns.server.sockets import bind_socket
from clusterdns.server.tcp import MAX_CONNECTIONS_ENV, MAX_INFLIGHT, TcpConnection, TcpListener
from tests.conftest import DEMO_COREFILE, StartServer
from tests.procs import ROOT, answers

# --- the cap on connections, through the real process -----------------------------------------

CAP = 5
NAME = "nginx-service.default.svc.cluster.local."
WANT = {"10.0.0.228"}


def ask(s: socket.socket) -> set[str]:
    """One query on an open connection; its answer's addresses."""
    dns.query.send_tcp(s, dns.message.make_query(NAME, "A"))
    reply, _ = dns.query.receive_tcp(s, expiration=time.time() + 5)
    return answers(reply)


def connect_when_served(port: int, timeout: float = 5.0) -> socket.socket:
    """A connection that is answered; the server frees a slot only once it has seen a close, so
    until then a new connection may still be over the cap."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            if ask(s) == WANT:
                return s
        except (EOFError, ConnectionResetError, BrokenPipeError):
            pass
        s.close()
        assert time.monotonic() < deadline, "no connection served again"
        time.sleep(0.05)


def assert_closed_at_once(port: int) -> None:
    """The kernel completes the handshake; the server then closes without reading or answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            dns.query.send_tcp(s, dns.message.make_query(NAME, "A"))
            assert s.recv(1) == b""  # a timeout here means the server kept the connection open
        except (ConnectionResetError, BrokenPipeError):  # reset: the query was unread at the close
            pass


@pytest.mark.e2e
def test_connections_over_the_cap_are_closed(start_server: StartServer) -> None:
    srv = start_server(
        DEMO_COREFILE,
        files={"cluster.yaml": (ROOT / "examples" / "cluster.yaml").read_text()},
        env={MAX_CONNECTIONS_ENV: str(CAP)},
    )
    with ExitStack() as stack:
        conns = [stack.enter_context(socket.create_connection(("127.0.0.1", srv.port), timeout=5)) for _ in range(CAP)]
        for s in conns:  # answered, so the server holds each of them
            assert ask(s) == WANT
        assert_closed_at_once(srv.port)
        for s in conns:  # the refusal cost those already in nothing
            assert ask(s) == WANT
        conns.pop().close()
        conns.pop().close()
        conns += [stack.enter_context(connect_when_served(srv.port)) for _ in range(2)]
        assert_closed_at_once(srv.port)  # full again: the count follows closes exactly
        for s in conns:
            assert ask(s) == WANT


@pytest.mark.e2e
def test_invalid_cap_fails_the_start(start_server: StartServer) -> None:
    srv = start_server(DEMO_COREFILE, files={"cluster.yaml": ""}, env={MAX_CONNECTIONS_ENV: "many"}, ready=False)
    srv.proc.wait(20)
    assert srv.stop() == 1
    assert f"clusterdns: {MAX_CONNECTIONS_ENV}: not a positive integer: 'many'" in srv.output()


# --- a paused listener ---------------------------------------------------------------------------


class Held(Dispatcher):
    """Holds every query unanswered, like a chain waiting on an upstream; ``answer`` echoes them."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = 0
        self.held: list[tuple[bytes, Any, Send]] = []

    def handle(self, data: bytes, proto: str, client: Any, send: Send) -> bool:
        self.seen += 1
        self.held.append((data, client, send))
        return True

    def answer(self) -> None:
        held, self.held = self.held, []
        for data, client, send in held:
            send(data, client)


def frame(n: int) -> bytes:
    """A length-prefixed two-byte "query" numbered ``n``; Held echoes it as its answer."""
    return b"\x00\x02" + n.to_bytes(2, "big")


Test = Callable[[TcpListener, Held, int], Awaitable[None]]


def run(test: Test) -> None:
    """Run ``test`` with a listener on a free loopback port, closed afterwards."""

    async def main() -> None:
        disp = Held()
        listener = TcpListener(bind_socket("127.0.0.1", 0, socket.SOCK_STREAM), disp, max_connections=10)
        port = listener.sock.getsockname()[1]
        await listener.start()
        try:
            await test(listener, disp, port)
        finally:
            listener.close()
            await asyncio.sleep(0.01)  # let the transports finish closing

    asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def hung_up(reader: asyncio.StreamReader) -> bool:
    """The server closed the connection: the end of the stream, or a reset when it closed with
    queries unread (the kernel's answer to those)."""
    try:
        return await asyncio.wait_for(reader.read(), 5) == b""
    except ConnectionResetError:
        return True


async def closed(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with suppress(ConnectionResetError):  # reset by the server already
        await writer.wait_closed()


def test_pause_reads_no_more_queries_and_answers_those_in_flight() -> None:
    async def test(listener: TcpListener, disp: Held, port: int) -> None:
        busy_r, busy = await asyncio.open_connection("127.0.0.1", port)
        idle_r, idle = await asyncio.open_connection("127.0.0.1", port)
        busy.write(frame(1) + frame(2) + frame(3))
        await until(lambda: disp.seen == 3 and len(listener.connections) == 2)
        listener.pause()
        busy.write(frame(4))
        idle.write(frame(5))
        await asyncio.sleep(0.1)  # time enough for them to be read, were reading still on
        disp.answer()
        assert await asyncio.wait_for(busy_r.readexactly(12), 5) == frame(1) + frame(2) + frame(3)
        await asyncio.sleep(0.1)
        assert disp.seen == 3
        with pytest.raises(ConnectionRefusedError):  # no more connections either
            await asyncio.open_connection("127.0.0.1", port)
        listener.close()
        assert await hung_up(busy_r) and await hung_up(idle_r)
        await closed(busy)
        await closed(idle)

    run(test)


def test_pause_is_not_undone_when_answers_drain_a_connection_paused_by_flow_control() -> None:
    async def test(listener: TcpListener, disp: Held, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"".join(frame(i) for i in range(MAX_INFLIGHT)))
        await until(lambda: disp.seen == MAX_INFLIGHT)
        (conn,) = listener.connections
        assert conn.paused  # flow control: as many queries in flight as a connection may have
        listener.pause()
        writer.write(frame(MAX_INFLIGHT))  # a query after the pause
        await asyncio.sleep(0.1)
        disp.answer()  # draining the connection below half the cap used to resume reading it
        out = await asyncio.wait_for(reader.readexactly(4 * MAX_INFLIGHT), 5)
        assert out == b"".join(frame(i) for i in range(MAX_INFLIGHT))
        await asyncio.sleep(0.1)
        assert disp.seen == MAX_INFLIGHT
        await closed(writer)

    run(test)


def test_connection_accepted_just_before_the_pause_is_closed() -> None:
    async def test(listener: TcpListener, _disp: Held, _port: int) -> None:
        listener.pause()
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        with theirs:
            theirs.setblocking(False)
            # the protocol's connection_made runs a few loop turns after the accept: here, after the pause
            transport, _ = await loop.connect_accepted_socket(lambda: TcpConnection(listener), ours)
            assert transport.is_closing() and not listener.connections
            assert await asyncio.wait_for(loop.sock_recv(theirs, 1), 5) == b""

    run(test)


def test_a_client_that_reads_no_answers_is_reset_after_the_close_grace() -> None:
    """close() waits for the answers to be delivered; one that never reads them loses the
    connection after ``close_grace`` instead of holding it (and its slot under the cap) for ever."""

    async def main() -> None:
        disp = Held()
        sock = bind_socket("127.0.0.1", 0, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)  # inherited by accepted sockets
        listener = TcpListener(sock, disp, idle_timeout=0.2, max_connections=10, close_grace=0.3)
        await listener.start()
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(client, sock.getsockname())
            big = b"\xff\xff" + bytes(65535)  # Held echoes it: a 64 KiB answer
            for _ in range(6):
                await asyncio.get_running_loop().sock_sendall(client, big)
            await until(lambda: disp.seen == 6)
            disp.answer()  # ~384 KiB of answers: far more than the two small socket buffers hold
            (conn,) = listener.connections
            await asyncio.sleep(0.3)  # idle: the server closes, but the answers cannot be written
            assert conn.transport is not None and conn.transport.is_closing()
            assert conn.transport.get_write_buffer_size() > 0
            await until(lambda: not listener.connections, timeout=3)  # reset after the grace
        finally:
            client.close()
            listener.close()
            await asyncio.sleep(0.01)

    asyncio.run(main())
