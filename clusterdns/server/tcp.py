"""The TCP transport: 2-byte length framing, pipelined queries answered in any order, an idle
timeout, a cap on connections and on queries in flight per connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from clusterdns.server.dispatch import Dispatcher

log = logging.getLogger("clusterdns.server")

IDLE_TIMEOUT = 10.0  # seconds without a complete query before the connection is closed
MAX_CONNECTIONS = 1000
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
        if len(self.server.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.server.connections.add(self)
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
            self.transport.close()
        elif self.transport is not None:
            self._arm()

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
        if self.paused and self.inflight < MAX_INFLIGHT // 2:
            self.paused = False
            t.resume_reading()


class TcpListener:
    """Serves one bound, listening TCP socket."""

    def __init__(self, sock: Any, dispatcher: Dispatcher, idle_timeout: float = IDLE_TIMEOUT) -> None:
        self.sock = sock
        self.dispatcher = dispatcher
        self.idle_timeout = idle_timeout
        self.connections: set[TcpConnection] = set()
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: TcpConnection(self), sock=self.sock)

    def pause(self) -> None:
        """Accept no more connections and read no more queries; answers in flight still go out."""
        if self.server is not None:
            self.server.close()
        for conn in self.connections:
            if conn.transport is not None:
                conn.transport.pause_reading()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.transport.close()
