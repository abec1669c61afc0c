"""The small HTTP/1.1 server behind ``/health``, ``/ready`` and ``/metrics``.

One listener per address, several paths: the health, ready and prometheus plugins declare routes
and ``HttpHub`` binds each address once, keeping the listener across reloads when the address is
unchanged. Only what probes and scrapers need: GET and HEAD, keep-alive and pipelining, replies
built in one call. A request with a body, an oversized head or a silent connection is cut off.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http import HTTPStatus

from clusterdns.corefile import Directive
from clusterdns.server.sockets import StartError, bind_socket

log = logging.getLogger("clusterdns.http")

MAX_HEAD = 8192  # bytes of request line and headers
IDLE_TIMEOUT = 5.0  # seconds, as CoreDNS's ready server
MAX_CONNECTIONS = 256
MAX_WRITE_BUFFER = 4 << 20  # a client that pipelines scrapes without reading them is cut off

Address = tuple[str, int]  # host as written ("" = every address) and port


@dataclass(frozen=True, slots=True)
class Reply:
    """A complete response."""

    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"


Handler = Callable[[], Reply]
Routes = Mapping[str, Handler]  # path -> handler


def parse_address(text: str) -> Address:
    """``HOST:PORT`` as Go's net.SplitHostPort reads it: ``:8080``, ``localhost:9153``, ``[::1]:8181``."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1 : end + 2] != ":":
            raise ValueError(f"address {text}: missing port in address")
        host, port = text[1:end], text[end + 2 :]
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"address {text}: missing port in address")
        if ":" in host:
            raise ValueError(f"address {text}: too many colons in address")
    if not port.isdigit() or int(port) > 65535:
        raise ValueError(f"address {text}: invalid port {port!r}")
    return host, int(port)


def address_arg(d: Directive, default: str) -> Address:
    """The optional ADDRESS argument of health, ready and prometheus; errors name file:line."""
    if len(d.args) > 1:
        raise d.arg_error()
    try:
        return parse_address(d.args[0] if d.args else default)
    except ValueError as e:
        raise d.error(str(e)) from None


def bind_host(host: str) -> str:
    """The address to bind for ``host``: "" stays "every address", a name becomes its first address."""
    if host in ("", "localhost"):
        return host and "127.0.0.1"  # Go's Listen on localhost takes the first (IPv4) address
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    try:
        return str(socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)[0][4][0])
    except OSError as e:
        raise StartError(f"listen tcp {host}: {e}") from None


class _Connection(asyncio.Protocol):
    """One client connection; requests are answered in order as they arrive."""

    def __init__(self, listener: HttpListener) -> None:
        self.listener = listener
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self.timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if len(self.listener.connections) >= MAX_CONNECTIONS:
            transport.abort()
            return
        self.transport = transport
        self.listener.connections.add(self)
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self.listener.connections.discard(self)
        if self.timer is not None:
            self.timer.cancel()
        self.transport = None

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None

    def _arm(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(IDLE_TIMEOUT, self.close)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while self.transport is not None:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > MAX_HEAD:
                    self._send(Reply(431, b"Request Header Fields Too Large\n"), "GET", close=True)
                return
            if end > MAX_HEAD:
                self._send(Reply(431, b"Request Header Fields Too Large\n"), "GET", close=True)
                return
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            self._arm()
            self._serve(head.decode("latin-1"))

    def _serve(self, head: str) -> None:
        lines = head.split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            self._send(Reply(400, b"Bad Request\n"), "GET", close=True)
            return
        method, target, version = parts
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip().lower()
        conn = headers.get("connection", "")
        keep = conn == "keep-alive" if version == "HTTP/1.0" else conn != "close"
        if method not in ("GET", "HEAD"):
            self._send(Reply(405, b"Method Not Allowed\n"), method, close=True)
            return
        if headers.get("content-length", "0") != "0" or "transfer-encoding" in headers:
            self._send(Reply(400, b"a GET request carries no body\n"), method, close=True)
            return
        handler = self.listener.routes.get(target.partition("?")[0])
        if handler is None:
            reply = Reply(404, b"404 page not found\n")
        else:
            try:
                reply = handler()
            except Exception:
                log.exception("http: handler for %s failed", target)
                reply = Reply(500, b"Internal Server Error\n")
        self._send(reply, method, close=not keep)

    def _send(self, reply: Reply, method: str, close: bool) -> None:
        t = self.transport
        if t is None:
            return
        try:
            phrase = HTTPStatus(reply.status).phrase
        except ValueError:
            phrase = ""
        head = (
            f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Type: {reply.content_type}\r\n"
            f"Content-Length: {len(reply.body)}\r\n"
            + ("Allow: GET, HEAD\r\n" if reply.status == 405 else "")
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        )
        t.write(head.encode("latin-1") + (b"" if method == "HEAD" else reply.body))
        if close:
            self.close()
        elif t.get_write_buffer_size() > MAX_WRITE_BUFFER:
            t.abort()
            self.transport = None


class HttpListener:
    """One bound address serving its routes."""

    def __init__(self, address: Address, sock: socket.socket) -> None:
        self.address = address
        self.sock = sock
        self.routes: Routes = {}
        self.connections: set[_Connection] = set()
        self.server: asyncio.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (differs from the address's when that asked for port 0)."""
        return int(self.sock.getsockname()[1])

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _Connection(self), sock=self.sock)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
        else:
            self.sock.close()
        for conn in list(self.connections):
            conn.close()


class HttpHub:
    """The process's HTTP listeners by address; a listener outlives a reload that keeps its address."""

    def __init__(self) -> None:
        self.listeners: dict[Address, HttpListener] = {}

    async def ensure(self, addresses: Iterable[Address]) -> None:
        """Bind every address not bound yet; on failure bind none of them (raises StartError)."""
        fresh: list[HttpListener] = []
        try:
            for addr in addresses:
                if addr in self.listeners:
                    continue
                listener = HttpListener(addr, bind_socket(bind_host(addr[0]), addr[1], socket.SOCK_STREAM))
                fresh.append(listener)
                await listener.start()
                self.listeners[addr] = listener
        except BaseException:
            for listener in fresh:
                listener.close()
                self.listeners.pop(listener.address, None)
            raise

    def serve(self, routes: Mapping[Address, Routes]) -> None:
        """Answer with ``routes`` (every address already bound); close listeners no longer named."""
        for addr, listener in list(self.listeners.items()):
            if addr in routes:
                listener.routes = dict(routes[addr])
            else:
                listener.close()
                del self.listeners[addr]

    def close(self) -> None:
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
