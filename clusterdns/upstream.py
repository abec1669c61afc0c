"""The Upstream seam: DNS exchanges with one upstream server over UDP or TCP, reusing sockets.

UDP: one connected socket per upstream, shared by every query in flight; a reply is matched to its
query by a random 16-bit ID (rewritten on the way out, restored on the way back) and the question.
TCP: a pool of connections, one exchange at a time on each, closed after ``expire`` idle.

Waiting is on plain futures completed by socket callbacks, with ``loop.call_later`` for timeouts,
so an exchange works inside a coroutine the dispatcher drives by hand (no Task per query). Errors
read like Go's net errors (``read udp 127.0.0.1:40000->127.0.0.1:53: i/o timeout``), because the
errors plugin logs them as CoreDNS does.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
from collections.abc import Coroutine
from typing import Any, Protocol

BATCH = 64  # datagrams read per wake-up
MAX_INFLIGHT = 32768  # UDP queries in flight per upstream; half the ID space keeps a random pick cheap

# IDs are the one defence against spoofed replies on a socket whose port does not change: draw
# them from the OS, not from a predictable generator.
_ids = random.SystemRandom()


class UpstreamError(Exception):
    """An exchange failed (timeout, refused, closed); the upstream may be unhealthy."""


class _CachedClosed(UpstreamError):
    """A pooled TCP connection the upstream had closed; worth one retry on a fresh one."""


class Exchanger(Protocol):
    """What forward needs from an upstream (the real one below; fakes in unit tests)."""

    label: str  # "IP:port", the `to` metric label

    async def exchange(self, query: bytes, proto: str, timeout: float) -> bytes: ...

    def close(self) -> None: ...


def question_end(msg: bytes) -> int:
    """Offset just past the (single, uncompressed) question of a query."""
    off = 12
    ln = msg[off]
    while ln:
        off += ln + 1
        ln = msg[off]
    return off + 5


def _same_question(reply: bytes, question: bytes) -> bool:
    got = reply[12 : 12 + len(question)]
    return got == question or got.lower() == question.lower()


def _errno_text(e: OSError) -> str:
    """Go's wording of an errno: ``connection refused``."""
    return os.strerror(e.errno).lower() if e.errno else str(e)


def _expire_future(fut: asyncio.Future[bytes], what: str) -> None:
    if not fut.done():
        fut.set_exception(UpstreamError(f"{what}: i/o timeout"))


def _host_port(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Upstream:
    """One upstream server, e.g. ``Upstream("10.0.0.10", 53)``."""

    def __init__(self, host: str, port: int, *, expire: float = 10.0, max_idle_conns: int = 0) -> None:
        self.host = host
        self.port = port
        self.family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.label = _host_port((host, port))
        self.expire = expire
        self.max_idle_conns = max_idle_conns  # 0 = no limit
        self._loop: asyncio.AbstractEventLoop | None = None
        self._udp: _UdpSocket | None = None
        self._idle: list[_TcpConn] = []  # pooled, most recently used last
        self._conns: set[_TcpConn] = set()  # every open TCP connection, pooled or busy
        self._sweeper: asyncio.TimerHandle | None = None

    def exchange(self, query: bytes, proto: str, timeout: float) -> Coroutine[Any, Any, bytes]:
        """Send ``query`` and return the reply, with the query's own ID. Raises UpstreamError."""
        # a plain function handing back the coroutine: one frame less on every resume
        if proto == "tcp":
            return self._exchange_tcp(query, timeout)
        return self._exchange_udp(query, timeout)

    def close(self) -> None:
        """Close every socket; exchanges still waiting fail."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        if self._udp is not None:
            self._udp.close()
            self._udp = None
        for conn in list(self._conns):
            conn.close()
        self._idle.clear()

    # --- UDP -------------------------------------------------------------------------------
    async def _exchange_udp(self, query: bytes, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        udp = self._udp
        if udp is None:
            udp = self._udp = _UdpSocket(self, loop)
            self._arm_sweeper(loop)
        pending = udp.pending
        if len(pending) >= MAX_INFLIGHT:
            raise UpstreamError(f"write {udp.name}: too many queries in flight")
        qid = _ids.getrandbits(16)
        while qid in pending:  # terminates: at most half the IDs are taken
            qid = _ids.getrandbits(16)
        fut: asyncio.Future[bytes] = loop.create_future()
        now = udp.used = loop.time()
        pending[qid] = (fut, query[12 : question_end(query)], now + timeout)
        if now + timeout < udp.wake_at:
            udp.wake(now + timeout)
        try:
            udp.sock.send(qid.to_bytes(2, "big") + query[2:])
        except OSError as e:
            del pending[qid]
            # an ICMP error from an earlier datagram surfaces here, e.g. connection refused
            raise UpstreamError(f"write {udp.name}: write: {_errno_text(e)}") from None
        try:
            reply = await fut
        finally:
            if pending.get(qid, (None,))[0] is fut:
                del pending[qid]
            if self.expire <= 0 and not pending and self._udp is udp:
                udp.close()
                self._udp = None
        return query[:2] + reply[2:]

    # --- TCP -------------------------------------------------------------------------------
    async def _exchange_tcp(self, query: bytes, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        conn = self._take(loop.time())
        if conn is not None:
            try:
                return await self._ask(conn, query, timeout)
            except _CachedClosed:
                pass  # closed by the upstream while idle: not a failure, dial a fresh one
        conn = await self._dial(loop, deadline - loop.time())
        try:
            return await self._ask(conn, query, deadline - loop.time())
        except _CachedClosed as e:
            raise UpstreamError(str(e)) from None

    async def _ask(self, conn: _TcpConn, query: bytes, timeout: float) -> bytes:
        loop = asyncio.get_running_loop()
        reply = await conn.ask(loop, query, timeout)
        if self.expire > 0 and conn.open and (not self.max_idle_conns or len(self._idle) < self.max_idle_conns):
            conn.used = loop.time()
            self._idle.append(conn)
            self._arm_sweeper(loop)
        else:
            conn.close()
        return reply

    def _take(self, now: float) -> _TcpConn | None:
        while self._idle:
            conn = self._idle.pop()
            if conn.open and now - conn.used <= self.expire:
                return conn
            conn.close()
        return None

    async def _dial(self, loop: asyncio.AbstractEventLoop, timeout: float) -> _TcpConn:
        """Connect within ``timeout``; the connect runs in its own Task (a slow path)."""
        done: asyncio.Future[_TcpConn] = loop.create_future()
        task = loop.create_task(loop.create_connection(lambda: _TcpConn(self), self.host, self.port))

        def connected(t: asyncio.Task[tuple[asyncio.BaseTransport, _TcpConn]]) -> None:
            if t.cancelled():
                return
            err = t.exception()
            if done.done():  # timed out meanwhile: drop what arrived late
                if err is None:
                    t.result()[1].close()
                return
            if err is None:
                done.set_result(t.result()[1])
            elif isinstance(err, OSError):
                done.set_exception(UpstreamError(f"dial tcp {self.label}: connect: {_errno_text(err)}"))
            else:
                done.set_exception(UpstreamError(f"dial tcp {self.label}: {err}"))

        def timed_out() -> None:
            if not done.done():
                done.set_exception(UpstreamError(f"dial tcp {self.label}: i/o timeout"))
                task.cancel()

        task.add_done_callback(connected)
        timer = loop.call_later(max(timeout, 0.0), timed_out)
        try:
            return await done
        finally:
            timer.cancel()

    # --- expiry ----------------------------------------------------------------------------
    def _arm_sweeper(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        if self._sweeper is None and self.expire > 0:
            self._sweeper = loop.call_later(self.expire, self._sweep)

    def _sweep(self) -> None:
        """Close what has been idle longer than ``expire``; runs every ``expire`` while open."""
        assert self._loop is not None
        self._sweeper = None
        cutoff = self._loop.time() - self.expire
        keep = []
        for conn in self._idle:
            if conn.used >= cutoff and conn.open:
                keep.append(conn)
            else:
                conn.close()
        self._idle = keep
        if self._udp is not None and not self._udp.pending and self._udp.used < cutoff:
            self._udp.close()
            self._udp = None
        if self._idle or self._udp is not None:
            self._arm_sweeper(self._loop)


class _UdpSocket:
    """A connected UDP socket and the queries waiting on it, by ID.

    Timeouts: one timer for the whole socket, set for the earliest deadline, rather than a
    call_later per query (which costs more than the rest of the bookkeeping together).
    """

    def __init__(self, up: Upstream, loop: asyncio.AbstractEventLoop) -> None:
        sock = socket.socket(up.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.connect((up.host, up.port))
        except OSError as e:
            sock.close()
            raise UpstreamError(f"dial udp {up.label}: {_errno_text(e)}") from None
        self.sock = sock
        self.loop = loop
        self.name = f"udp {_host_port(sock.getsockname())}->{up.label}"
        self.pending: dict[int, tuple[asyncio.Future[bytes], bytes, float]] = {}  # ID -> (waiter, question, deadline)
        self.used = loop.time()
        self.wake_at = math.inf
        self._timer: asyncio.TimerHandle | None = None
        loop.add_reader(sock.fileno(), self._readable)

    def wake(self, when: float) -> None:
        """Run the timeout sweep at ``when`` (earlier than planned)."""
        if self._timer is not None:
            self._timer.cancel()
        self.wake_at = when
        self._timer = self.loop.call_at(when, self._expire)

    def _expire(self) -> None:
        self._timer, self.wake_at = None, math.inf
        now = self.loop.time() + 0.001  # the loop may run a timer a hair early
        first = math.inf
        for qid, (fut, _, deadline) in list(self.pending.items()):
            if deadline <= now:
                del self.pending[qid]
                if not fut.done():
                    fut.set_exception(UpstreamError(f"read {self.name}: i/o timeout"))
            elif deadline < first:
                first = deadline
        if first < math.inf:
            self.wake(first)

    def _readable(self) -> None:
        recv, pending = self.sock.recv, self.pending
        for _ in range(BATCH):
            try:
                data = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                # ICMP port unreachable and the like: not tied to one ID, and true for all of them
                self._fail_all(UpstreamError(f"read {self.name}: read: {_errno_text(e)}"))
                return
            if len(data) < 12 or not data[2] & 0x80:
                continue
            entry = pending.get(data[0] << 8 | data[1])
            if entry is None or not _same_question(data, entry[1]):
                continue  # late, stray or spoofed: the real answer may still come
            del pending[data[0] << 8 | data[1]]
            if not entry[0].done():
                entry[0].set_result(data)

    def _fail_all(self, err: UpstreamError) -> None:
        waiting = list(self.pending.values())
        self.pending.clear()
        for fut, _, _ in waiting:
            if not fut.done():
                fut.set_exception(err)

    def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()
        self._fail_all(UpstreamError(f"read {self.name}: use of closed network connection"))


class _TcpConn(asyncio.Protocol):
    """One TCP connection to the upstream: 2-byte framing, one query at a time."""

    def __init__(self, up: Upstream) -> None:
        self.up = up
        self.transport: asyncio.Transport | None = None
        self.name = f"tcp {up.label}"
        self.buf = bytearray()
        self.waiter: asyncio.Future[bytes] | None = None
        self.expect = b""  # ID and question of the reply we wait for
        self.question = b""
        self.got_bytes = False
        self.used = 0.0

    @property
    def open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.up._conns.add(self)
        self.name = f"tcp {_host_port(transport.get_extra_info('sockname'))}->{self.up.label}"

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.up._conns.discard(self)
        w = self.waiter
        if w is not None and not w.done():
            cls = UpstreamError if self.got_bytes else _CachedClosed
            w.set_exception(cls(f"read {self.name}: {_errno_text(exc) if isinstance(exc, OSError) else 'EOF'}"))

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                return
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            w = self.waiter
            # anything but the awaited reply (a stale answer to a timed-out query) is dropped
            if w is not None and not w.done() and msg[:2] == self.expect and _same_question(msg, self.question):
                w.set_result(msg)

    async def ask(self, loop: asyncio.AbstractEventLoop, query: bytes, timeout: float) -> bytes:
        if self.transport is None:
            raise _CachedClosed(f"write {self.name}: EOF")
        qid = _ids.getrandbits(16).to_bytes(2, "big")
        fut: asyncio.Future[bytes] = loop.create_future()
        self.waiter, self.expect, self.question = fut, qid, query[12 : question_end(query)]
        self.got_bytes = False
        self.transport.write(len(query).to_bytes(2, "big") + qid + query[2:])
        timer = loop.call_later(max(timeout, 0.0), _expire_future, fut, f"read {self.name}")
        try:
            reply = await fut
        except UpstreamError:
            self.close()  # a late reply would only confuse the next user
            raise
        finally:
            timer.cancel()
            self.waiter = None
        return query[:2] + reply[2:]

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
