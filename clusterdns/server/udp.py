"""The UDP transport: a non-blocking socket drained in batches from one readiness callback.

Stock asyncio reads each datagram into a fresh 256 KiB buffer and wakes once per packet; reading
up to ``BATCH`` datagrams per wake-up with a small buffer halves the cost of a query.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from clusterdns.server.dispatch import Dispatcher

log = logging.getLogger("clusterdns.server")

BATCH = 64
READ_SIZE = 4096  # larger than any sane query; a longer datagram is cut and answered FORMERR


class UdpListener:
    """Serves one bound UDP socket."""

    def __init__(self, sock: socket.socket, dispatcher: Dispatcher) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.dispatcher = dispatcher
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.sock.fileno(), self._readable)

    def pause(self) -> None:
        """Read no more queries; the socket stays open for answers still in flight."""
        if self._loop is not None:
            self._loop.remove_reader(self.sock.fileno())
            self._loop = None

    def close(self) -> None:
        self.pause()
        self.sock.close()

    def _readable(self) -> None:
        recv, handle, send = self.sock.recvfrom, self.dispatcher.handle, self._send
        for _ in range(BATCH):
            try:
                data, addr = recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:  # e.g. ICMP errors surfacing on the socket: keep serving
                log.debug("udp recv: %s", e)
                return
            try:
                handle(data, "udp", addr, send)
            except Exception:  # the dispatcher answers everything; this is the last guard
                log.exception("udp: unhandled error")

    def _send(self, wire: bytes, addr: Any) -> None:
        try:
            self.sock.sendto(wire, addr)
        except (BlockingIOError, InterruptedError):
            pass  # the socket buffer is full: drop, as UDP may
        except OSError as e:
            log.debug("udp send to %s: %s", addr, e)
