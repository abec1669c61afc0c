"""The TCP transport: 2-byte length framing, pipelined queries answered in any order, an idle
timeout (after which a client that does not read its answers is reset), a cap on connections and
on queries in flight per connection.

A connection over the cap is accepted and closed at once, so its client sees the end of the
stream and can try another server now rather than wait in the listen backlog for a free slot.
The cap is ``MAX_CONNECTIONS``, or the positive integer in the environment variable
``CLUSTERDNS_TCP_MAX_CONNECTIONS`` when it is set (read at start; the tests use a small cap).

A paused listener (shut-down, or an address a reload no longer serves) accepts no connection and
reads no query, not even when answers drain a connection that flow control paused; the answers
to the queries already read are still written.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from clusterdns.server.dispatch import Dispatcher
from clusterdns.server.sockets import StartError

log = logging.getLogger("clusterdns.server")

IDLE_TIMEOUT = 10.0  # seconds without a complete query before the connection is closed
CLOSE_GRACE = 5.0  # seconds a closed connection has to deliver its last answers before it is reset
MAX_CONNECTIONS = 1000
MAX_CONNECTIONS_ENV = "CLUSTERDNS_TCP_MAX_CONNECTIONS"
MAX_INFLIGHT = 128  # per connection; reading pauses above it
MAX_WRITE_BUFFER = 1 << 20  # a client that does not read its answers is cut off


class TcpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, server: TcpListener) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.peer: Any = None
        self.inflight = 0
        self.paused = False
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.peer = transport.get_extra_info("peername")
        server = self.server
        if server.paused or len(server.connections) >= server.max_connections:
            transport.abort()  # over the cap, or accepted just before the listener paused
            return
        server.connections.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.server.idle_timeout, self._idle)

    def _idle(self) -> None:
        if self.transport is not None and self.inflight == 0:
            self.close()
        elif self.transport is not None:
            self._arm()

    def close(self) -> None:
        """Close once the answers written so far are delivered, or reset after ``close_grace``:
        a client that reads nothing would otherwise hold the connection (and its slot) for ever."""
        t = self.transport
        if t is None or t.is_closing():
            return
        t.close()
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(self.server.close_grace, t.abort)

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 2:
            size = buf[0] << 8 | buf[1]
            if len(buf) < 2 + size:
                break
            msg = bytes(buf[2 : 2 + size])
            del buf[: 2 + size]
            self._arm()
            self.inflight += 1
            if not self.server.dispatcher.handle(msg, "tcp", self.peer, self._send):
                self.inflight -= 1  # dropped unanswered: nothing will come back for it
        if self.inflight >= MAX_INFLIGHT and self.transport is not None and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def _send(self, wire: bytes, _addr: Any) -> None:
        self.inflight -= 1
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(len(wire).to_bytes(2, "big") + wire)
        if t.get_write_buffer_size() > MAX_WRITE_BUFFER:
            t.abort()
            return
        if self.paused and self.inflight < MAX_INFLIGHT // 2 and not self.server.paused:
            self.paused = False
            t.resume_reading()


class TcpListener:
    """Serves one bound, listening TCP socket."""

    def __init__(
        self, sock: Any, dispatcher: Dispatcher, idle_timeout: float = IDLE_TIMEOUT, max_connections: int = 0,
        close_grace: float = CLOSE_GRACE,
    ) -> None:
        self.sock = sock
        self.dispatcher = dispatcher
        self.idle_timeout = idle_timeout
        self.close_grace = close_grace
        self.max_connections = max_connections  # 0: configured_max_connections(), read at start
        self.connections: set[TcpConnection] = set()
        self.server: asyncio.Server | None = None
        self.paused = False

    async def start(self) -> None:
        """Serve; raises StartError when the configured cap on connections is not valid."""
        if not self.max_connections:
            self.max_connections = configured_max_connections()
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: TcpConnection(self), sock=self.sock)

    def pause(self) -> None:
        """Accept no more connections and read no more queries; answers in flight still go out."""
        self.paused = True
        if self.server is not None:
            self.server.close()
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.pause_reading()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            conn.close()


def configured_max_connections() -> int:
    """``MAX_CONNECTIONS``, or the positive integer in ``$CLUSTERDNS_TCP_MAX_CONNECTIONS``."""
    text = os.environ.get(MAX_CONNECTIONS_ENV, "")
    if not text:
        return MAX_CONNECTIONS
    try:
        cap = int(text)
    except ValueError:
        cap = 0
    if cap < 1:
        raise StartError(f"{MAX_CONNECTIONS_ENV}: not a positive integer: {text!r}")
    return cap
