"""The Upstream seam on real loopback sockets, against small in-process DNS servers that can
misbehave on purpose: ID rewriting, reply matching, timeouts, refusals, TCP pooling and expiry."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar, cast

import dns.message
import dns.rrset
import pytest

from clusterdns.upstream import Upstream, UpstreamError
from tests.procs import free_port

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def query(name: str = "www.example.org.", qid: int = 4242) -> bytes:
    q = dns.message.make_query(name, "A")
    q.id = qid
    return q.to_wire()


def answer(data: bytes, ip: str = "192.0.2.1") -> bytes:
    q = dns.message.from_wire(data)
    r = dns.message.make_response(q)
    r.answer.append(dns.rrset.from_text(q.question[0].name, 30, "IN", "A", ip))
    return r.to_wire()


Handler = Callable[[bytes], list[bytes]]


class UdpServer(asyncio.DatagramProtocol):
    """Answers each datagram with what ``handler`` returns (nothing: stays silent)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.received: list[bytes] = []
        self.peers: set[Any] = set()
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.received.append(data)
        self.peers.add(addr)
        assert self.transport is not None
        for out in self.handler(data):
            self.transport.sendto(out, addr)



@asynccontextmanager
async def udp_server(handler: Handler) -> AsyncIterator[tuple[UdpServer, int]]:
    """A UdpServer on a free loopback port, closed on the way out."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(lambda: UdpServer(handler), local_addr=("127.0.0.1", 0))
    try:
        yield proto, transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


class TcpServer:
    """Length-framed TCP answers; counts connections and notices when clients close them."""

    def __init__(self, answers: int = 0, close_on_query: bool = False) -> None:
        self.answers = answers  # per connection, then it is closed (0: no limit)
        self.close_on_query = close_on_query  # close on reading the next query, not right after an answer
        self.connections = 0
        self.closed_by_client = 0
        self.server: asyncio.Server | None = None
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        answered = 0
        try:
            while True:
                if self.answers and answered == self.answers and not self.close_on_query:
                    break
                head = await reader.readexactly(2)
                data = await reader.readexactly(int.from_bytes(head, "big"))
                if self.answers and answered == self.answers:
                    break
                out = answer(data)
                writer.write(len(out).to_bytes(2, "big") + out)
                await writer.drain()
                answered += 1
        except asyncio.IncompleteReadError:
            self.closed_by_client += 1
        writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()
        await self.server.wait_closed()


# --- UDP ---------------------------------------------------------------------------------------

def test_udp_rewrites_the_id_and_returns_the_reply_with_the_query_id() -> None:
    async def scenario() -> None:
        async with udp_server(lambda d: [answer(d)]) as (srv, port):
            up = Upstream("127.0.0.1", port)
            q = query(qid=1234)
            reply = await up.exchange(q, "udp", 1.0)
            sent = srv.received[0]
            assert sent[2:] == q[2:]  # the query went out byte for byte, apart from the ID
            assert reply[:2] == q[:2] and reply[2:] == answer(sent)[2:]
            up.close()

    run(scenario())


def test_udp_ignores_replies_with_another_id_or_question() -> None:
    def tricky(d: bytes) -> list[bytes]:
        wrong_id = bytes([d[0] ^ 0xFF, d[1]]) + answer(d, "198.51.100.1")[2:]
        other_q = answer(d[:2] + query("evil.example.")[2:], "198.51.100.2")
        not_a_reply = d
        return [wrong_id, other_q, not_a_reply, answer(d, "192.0.2.7")]

    async def scenario() -> None:
        async with udp_server(tricky) as (_, port):
            up = Upstream("127.0.0.1", port)
            reply = await up.exchange(query(), "udp", 1.0)
            assert dns.message.from_wire(reply).answer[0][0].to_text() == "192.0.2.7"
            up.close()

    run(scenario())


def test_udp_many_in_flight_on_one_socket_answered_out_of_order() -> None:
    held: list[bytes] = []

    def hold_then_reverse(d: bytes) -> list[bytes]:
        held.append(d)
        if len(held) < 50:
            return []
        return [answer(x, f"10.0.0.{int(dns.message.from_wire(x).question[0].name.labels[0])}") for x in held[::-1]]

    async def scenario() -> None:
        async with udp_server(hold_then_reverse) as (srv, port):
            up = Upstream("127.0.0.1", port)
            replies = await asyncio.gather(*(up.exchange(query(f"{i}.example.", qid=i), "udp", 2.0) for i in range(50)))
            for i, r in enumerate(replies):
                m = dns.message.from_wire(r)
                assert m.id == i and m.answer[0][0].to_text() == f"10.0.0.{i}"
            assert len(srv.peers) == 1  # one connected socket for all of them
            up.close()

    run(scenario())


def test_udp_timeout_reads_like_go() -> None:
    async def scenario() -> tuple[str, int, float]:
        async with udp_server(lambda d: []) as (_, port):
            up = Upstream("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(UpstreamError) as e:
                await up.exchange(query(), "udp", 0.2)
            up.close()
            return str(e.value), port, loop.time() - start

    message, port, took = run(scenario())
    assert re.fullmatch(rf"read udp 127\.0\.0\.1:\d+->127\.0\.0\.1:{port}: i/o timeout", message), message
    assert 0.19 < took < 0.5


def test_udp_each_query_times_out_on_its_own_deadline() -> None:
    """One timer per socket: a shorter timeout added later must still fire first, and on time."""

    async def scenario() -> list[float]:
        async with udp_server(lambda d: [answer(d)] if b"\x04fast" in d else []) as (_, port):
            up = Upstream("127.0.0.1", port)
            loop = asyncio.get_running_loop()
            start = loop.time()
            ended: list[float] = []

            async def one(name: str, timeout: float) -> None:
                try:
                    await up.exchange(query(name), "udp", timeout)
                except UpstreamError:
                    pass
                ended.append(round(loop.time() - start, 1))

            await asyncio.gather(one("slow.example.", 0.4), one("short.example.", 0.1), one("fast.example.", 0.2))
            up.close()
            return ended

    assert run(scenario()) == [0.0, 0.1, 0.4]


def test_udp_refused_fails_at_once() -> None:
    port = free_port()  # nothing listens there: the kernel answers ICMP port unreachable

    async def scenario() -> float:
        up = Upstream("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        start = loop.time()
        for _ in range(2):  # the error can surface on read, or on the next write
            with pytest.raises(UpstreamError, match="connection refused"):
                await up.exchange(query(), "udp", 2.0)
        up.close()
        return loop.time() - start

    assert run(scenario()) < 0.5


def test_close_fails_what_is_waiting() -> None:
    async def scenario() -> None:
        async with udp_server(lambda d: []) as (_, port):
            up = Upstream("127.0.0.1", port)
            waiting = asyncio.ensure_future(up.exchange(query(), "udp", 5.0))
            await asyncio.sleep(0.01)
            up.close()
            with pytest.raises(UpstreamError, match="use of closed network connection"):
                await waiting

    run(scenario())


# --- TCP ---------------------------------------------------------------------------------------

def test_tcp_connection_is_reused() -> None:
    async def scenario() -> None:
        srv = TcpServer()
        port = await srv.start()
        up = Upstream("127.0.0.1", port)
        for i in range(3):
            reply = await up.exchange(query(qid=i), "tcp", 1.0)
            assert dns.message.from_wire(reply).id == i
        assert srv.connections == 1
        up.close()
        await srv.close()

    run(scenario())


@pytest.mark.parametrize("close_on_query", [False, True])
def test_tcp_connection_closed_by_the_upstream_is_replaced_transparently(close_on_query: bool) -> None:
    """Closed while pooled, or (the race) closed when our next query arrives: a fresh one answers."""

    async def scenario() -> None:
        srv = TcpServer(answers=1, close_on_query=close_on_query)
        port = await srv.start()
        up = Upstream("127.0.0.1", port)
        await up.exchange(query(), "tcp", 1.0)
        await asyncio.sleep(0.05)
        reply = await up.exchange(query(qid=7), "tcp", 1.0)
        assert dns.message.from_wire(reply).id == 7
        assert srv.connections == 2
        up.close()
        await srv.close()

    run(scenario())


def test_idle_connections_expire() -> None:
    async def scenario() -> None:
        srv = TcpServer()
        tcp_port = await srv.start()
        async with udp_server(lambda d: [answer(d)]) as (_, udp_port):
            tcp, udp = Upstream("127.0.0.1", tcp_port, expire=0.1), Upstream("127.0.0.1", udp_port, expire=0.1)
            await tcp.exchange(query(), "tcp", 1.0)
            await udp.exchange(query(), "udp", 1.0)
            assert udp._udp is not None
            await asyncio.sleep(0.35)
            assert srv.closed_by_client == 1 and udp._udp is None
            await tcp.exchange(query(), "tcp", 1.0)  # and a new one is dialled when needed
            assert srv.connections == 2
            tcp.close()
            udp.close()
            await srv.close()

    run(scenario())


def test_max_idle_conns_caps_the_pool() -> None:
    async def scenario() -> None:
        srv = TcpServer()
        port = await srv.start()
        up = Upstream("127.0.0.1", port, max_idle_conns=1)
        await asyncio.gather(*(up.exchange(query(qid=i), "tcp", 1.0) for i in range(3)))
        assert srv.connections == 3 and len(up._idle) == 1
        await asyncio.sleep(0.05)
        assert srv.closed_by_client == 2
        up.close()
        await srv.close()

    run(scenario())


def test_tcp_refused_and_silent() -> None:
    closed = free_port()
    silent = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    silent.bind(("127.0.0.1", 0))
    silent.listen(4)  # the handshake completes in the kernel; nobody ever reads

    async def scenario() -> None:
        up = Upstream("127.0.0.1", closed)
        with pytest.raises(UpstreamError, match=rf"^dial tcp 127.0.0.1:{closed}: connect: connection refused$"):
            await up.exchange(query(), "tcp", 1.0)
        port = silent.getsockname()[1]
        mute = Upstream("127.0.0.1", port)
        with pytest.raises(UpstreamError, match=rf"^read tcp 127.0.0.1:\d+->127.0.0.1:{port}: i/o timeout$"):
            await mute.exchange(query(), "tcp", 0.2)
        assert not mute._idle  # a connection that timed out is not pooled
        up.close()
        mute.close()

    try:
        run(scenario())
    finally:
        silent.close()
