"""The running server: server blocks turned into chains, listeners bound, hooks run, signals.

One ``App`` per configuration. ``configure`` is pure set-up (every Corefile error surfaces there,
before anything listens); ``start`` runs the plugins' start-up hooks and binds the listeners.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any

from clusterdns.corefile import CorefileError, ServerBlock
from clusterdns.plugin import ORDER, SERVFAIL, Next, Plugin, Request, Response, SiteConfig, build_chain, load_all
from clusterdns.server.dispatch import Dispatcher
from clusterdns.server.tcp import TcpListener
from clusterdns.server.udp import UdpListener
from clusterdns.wire import reply

log = logging.getLogger("clusterdns")


class StartError(Exception):
    """The server cannot start (a port cannot be bound, a start-up hook failed)."""


async def _end_of_chain(req: Request) -> Response:
    """Nobody answered: SERVFAIL, written by the server, as in CoreDNS."""
    return Response(reply(req, SERVFAIL), SERVFAIL)


@dataclass
class Site:
    """One configured server block."""

    block: ServerBlock
    config: SiteConfig
    chain: Next
    plugins: list[object] = field(default_factory=list)


class App:
    """Everything one Corefile describes, and its listeners."""

    def __init__(self, corefile: str, default_port: int = 53) -> None:
        self.corefile = corefile
        self.default_port = default_port
        self.sites: list[Site] = []
        self.dispatchers: dict[tuple[str, int], Dispatcher] = {}
        self.listeners: list[UdpListener | TcpListener] = []
        self.metrics: Any = None  # set by the prometheus plugin's setup
        self.services: dict[str, Any] = {}  # process-wide helpers plugins share (HTTP listeners...)

    # --- configuration ---------------------------------------------------------------------
    def configure(self, blocks: list[ServerBlock]) -> None:
        """Build every block's chain; raises CorefileError on the first bad directive."""
        registry = load_all()
        rank = {name: i for i, name in enumerate(ORDER)}
        for block in blocks:
            ports = {a.port or self.default_port for a in block.addrs}
            site = SiteConfig(
                zones=[a.zone for a in block.addrs],
                port=min(ports),
                corefile=self.corefile,
                app=self,
            )
            seen: set[str] = set()
            for d in block.directives:
                if d.name not in registry or d.name not in rank:
                    raise CorefileError(f"unknown directive '{d.name}'", d.file, d.line)
                if d.name in seen:
                    raise d.error("this plugin can only be used once per server block")
                seen.add(d.name)
            chain_plugins: list[Plugin] = []
            instances: list[object] = []
            for d in sorted(block.directives, key=lambda d: rank[d.name]):
                inst = registry[d.name](d, site)
                if inst is not None:
                    site.plugins[d.name] = inst
                    instances.append(inst)
                    if isinstance(inst, Plugin):
                        chain_plugins.append(inst)
            self.sites.append(Site(block, site, build_chain(chain_plugins, _end_of_chain), instances))
        for s in self.sites:
            for a in s.block.addrs:
                port = a.port or self.default_port
                for host in s.config.binds or [""]:
                    disp = self.dispatchers.setdefault((host, port), Dispatcher())
                    if a.zone in disp.zones:
                        raise CorefileError(f"zone {a.zone} is served twice on port {port}", s.block.file, s.block.line)
                    label = f"dns://{'[' + host + ']' if ':' in host else host}:{port}"
                    disp.add(a.zone, s.chain, label)
            s.config.lookup = self._lookup_for(s)

    def _lookup_for(self, site: Site) -> Next:
        """Resolve a name through the server itself (longest zone match on the block's port)."""
        port = site.config.port
        host = site.config.binds[0] if site.config.binds else ""

        def lookup(req: Request) -> Awaitable[Response]:
            disp = self.dispatchers[(host, port)]
            hit = disp.route(req.qname)
            if hit is None:
                return _end_of_chain(req)
            req.zone, chain, req.server = hit
            return chain(req)

        return lookup

    def readiness(self) -> dict[str, bool]:
        """Every plugin that can be not ready, and whether it is."""
        out: dict[str, bool] = {}
        for s in self.sites:
            for p in s.plugins:
                ready = getattr(p, "ready", None)
                if callable(ready):
                    name = getattr(p, "name", type(p).__name__)
                    out[name] = out.get(name, True) and bool(ready())
        return out

    # --- running ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Run start-up hooks (the kubernetes plugin waits for its first sync), then listen."""
        for s in self.sites:
            for hook in s.config.on_startup:
                await hook()
        for (host, port), disp in self.dispatchers.items():
            for sock_type in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                sock = bind_socket(host, port, sock_type)
                if sock_type == socket.SOCK_DGRAM:
                    udp = UdpListener(sock, disp)
                    udp.start()
                    self.listeners.append(udp)
                else:
                    tcp = TcpListener(sock, disp)
                    await tcp.start()
                    self.listeners.append(tcp)

    def close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
        self.listeners.clear()

    async def drain(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for queries still in flight, e.g. waiting on an upstream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(d.inflight for d in self.dispatchers.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def shutdown(self) -> None:
        self.close_listeners()
        await self.drain()
        for s in self.sites:
            for hook in s.config.on_shutdown:
                try:
                    await hook()
                except Exception:
                    log.exception("shutdown hook failed")

    def describe(self) -> str:
        """``.:1053 on 127.0.0.1`` for each listener: the line printed when ready."""
        parts = []
        for (host, port), disp in self.dispatchers.items():
            zones = " ".join(sorted(disp.zones))
            parts.append(f"{zones}:{port} on {host or 'every address'}")
        return ", ".join(parts)


def bind_socket(host: str, port: int, sock_type: int) -> socket.socket:
    """Bind one socket; "" means every address (dual-stack IPv6, else IPv4). Raises StartError."""
    proto = "udp" if sock_type == socket.SOCK_DGRAM else "tcp"
    candidates: list[tuple[int, str]]
    if host == "":
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        candidates = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    last: OSError | None = None
    for family, addr in candidates:
        sock = socket.socket(family, sock_type)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host == "":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((addr, port))
            if sock_type == socket.SOCK_STREAM:
                sock.listen(1024)
            sock.setblocking(False)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise StartError(f"listen {proto} {host}:{port}: {last.strerror if last else 'failed'}")
