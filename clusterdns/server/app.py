"""The running server: server blocks turned into chains, listeners bound, hooks run.

One ``App`` per configuration. ``configure`` is pure set-up (every Corefile error surfaces there,
before anything listens); ``start`` serves the HTTP routes (/health, /ready, /metrics), runs the
plugins' start-up hooks and binds the DNS listeners. A reload builds a second App from the new
Corefile and lets it ``take_over`` the first one's sockets, so a port that stays in the Corefile
never stops listening and queries in flight finish on the chain they started on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from clusterdns.corefile import CorefileError, Directive, ServerBlock
from clusterdns.metrics import PLUGIN_ENABLED, REGISTRY
from clusterdns.plugin import (
    ORDER,
    SERVFAIL,
    Next,
    Plugin,
    Request,
    Response,
    Result,
    SiteConfig,
    build_chain,
    load_all,
    server_label,
)
from clusterdns.server.dispatch import Dispatcher
from clusterdns.server.http import Address, Handler, HttpHub
from clusterdns.server.sockets import StartError as StartError  # re-exported: the CLI catches it from here
from clusterdns.server.sockets import bind_socket as bind_socket
from clusterdns.server.tcp import TcpListener
from clusterdns.server.udp import UdpListener
from clusterdns.wire import reply

log = logging.getLogger("clusterdns")

Listener = UdpListener | TcpListener
DRAIN_TIMEOUT = 1.0  # seconds queries in flight get to finish when their listeners close
HOOK_TIMEOUT = 0.5  # seconds each shut-down hook gets
# Plugins CoreDNS does not put in the query chain, so coredns_plugin_enabled does not list them.
SETUP_ONLY = frozenset({"reload", "bind", "health", "ready"})


def _end_of_chain(req: Request) -> Response:
    """Nobody answered: SERVFAIL, written by the server, as in CoreDNS."""
    return Response(reply(req, SERVFAIL), SERVFAIL)


@runtime_checkable
class Adoptable(Protocol):
    """A plugin that can take over the running state of its predecessor when a reload leaves its
    directive unchanged (the kubernetes plugin keeps its watch and index). ``adopt`` must be
    symmetric: a failed reload hands the state back with ``old.adopt(new)``."""

    def adopt(self, old: Any) -> None: ...


@dataclass
class Process:
    """What outlives a reload: the HTTP listeners, and whether the process is shutting down."""

    http: HttpHub = field(default_factory=HttpHub)
    stopping: bool = False  # set when SIGTERM arrives: /ready answers 503 from then on


@dataclass
class Site:
    """One configured server block."""

    block: ServerBlock
    config: SiteConfig
    chain: Next
    plugins: list[object] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)  # its `server` metric labels, e.g. "dns://:53"


def _shape(d: Directive) -> tuple[Any, ...]:
    """A directive's content without its position: equal shapes configure equal plugins."""
    return d.name, tuple(d.args), None if d.block is None else tuple(_shape(o) for o in d.block)


class App:
    """Everything one Corefile describes, and its listeners."""

    def __init__(self, corefile: str, default_port: int = 53, process: Process | None = None) -> None:
        self.corefile = corefile
        self.default_port = default_port
        self.process = process or Process()
        self.sites: list[Site] = []
        self.dispatchers: dict[tuple[str, int], Dispatcher] = {}
        self.metrics = REGISTRY  # process-wide counters; the kubernetes plugin reports programming latency
        self.services: dict[Any, Any] = {}  # helpers plugins share within this configuration
        self.routes: dict[Address, dict[str, Handler]] = {}  # HTTP address -> path -> handler
        self.lameduck = 0.0  # seconds to keep serving after SIGTERM (health's `lameduck`)
        self.checksum = ""  # SHA-512 of the parsed Corefile (set by the runner)
        self._bound: dict[tuple[str, int], list[Listener]] = {}
        self._adopted: list[tuple[Adoptable, Adoptable]] = []  # (new, old) plugins handed over on reload
        self._started = False  # start-up hooks ran (so shut-down hooks have something to stop)

    @property
    def listeners(self) -> list[Listener]:
        return [x for group in self._bound.values() for x in group]

    def route(self, address: Address, path: str, handler: Handler) -> None:
        """Serve ``path`` on the HTTP listener at ``address`` (health, ready and prometheus call this)."""
        self.routes.setdefault(address, {})[path] = handler

    # --- configuration ---------------------------------------------------------------------
    def configure(self, blocks: list[ServerBlock], previous: App | None = None) -> None:
        """Build every block's chain; raises CorefileError on the first bad directive.

        With ``previous`` (a reload), a plugin whose directive, zones and port are unchanged adopts
        its predecessor's running state when it can (see ``Adoptable``).
        """
        registry = load_all()
        rank = {name: i for i, name in enumerate(ORDER)}
        handover = previous._handover() if previous is not None else {}
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
                if d.name in seen and d.name != "forward":  # several forwards are tried in Corefile order
                    raise d.error("this plugin can only be used once per server block")
                seen.add(d.name)
            chain_plugins: list[Plugin] = []
            instances: list[object] = []
            for d in sorted(block.directives, key=lambda d: rank[d.name]):
                inst = registry[d.name](d, site)
                if inst is None:
                    continue
                old = handover.pop((tuple(site.zones), site.port, _shape(d)), None)
                if isinstance(inst, Adoptable) and type(old) is type(inst):
                    inst.adopt(old)
                    self._adopted.append((inst, old))
                site.plugins[d.name] = inst
                instances.append(inst)
                if isinstance(inst, Plugin):
                    chain_plugins.append(inst)
            self.sites.append(Site(block, site, build_chain(chain_plugins, _end_of_chain), instances))
        metered: set[tuple[str, int]] = set()
        for s in self.sites:
            for a in s.block.addrs:
                port = a.port or self.default_port
                for host in s.config.binds or [""]:
                    disp = self.dispatchers.setdefault((host, port), Dispatcher())
                    if a.zone in disp.zones:
                        raise CorefileError(f"zone {a.zone} is served twice on port {port}", s.block.file, s.block.line)
                    label = server_label(host, port)
                    # CoreDNS counts a block's queries only when the block has `prometheus`
                    meter = None
                    if "prometheus" in s.config.plugins:
                        meter = REGISTRY.meter(label, a.zone)
                        metered.add((host, port))
                    disp.add(a.zone, s.chain, label, meter)
                    if label not in s.servers:
                        s.servers.append(label)
            s.config.lookup = self._lookup_for(s)
        for key in metered:
            self.dispatchers[key].dropped = REGISTRY.meter(server_label(*key), "dropped")

    def _handover(self) -> dict[tuple[Any, ...], object]:
        """This configuration's plugins by (zones, port, directive shape), for the next one to adopt."""
        out: dict[tuple[Any, ...], object] = {}
        for s in self.sites:
            for d in s.block.directives:
                inst = s.config.plugins.get(d.name)
                if inst is not None:
                    out[(tuple(s.config.zones), s.config.port, _shape(d))] = inst
        return out

    def _lookup_for(self, site: Site) -> Next:
        """Resolve a name through the server itself (longest zone match on the block's port)."""
        port = site.config.port
        host = site.config.binds[0] if site.config.binds else ""

        def lookup(req: Request) -> Result:
            disp = self.dispatchers[(host, port)]
            hit = disp.route(req.qname)
            if hit is None:
                return _end_of_chain(req)
            req.zone, chain, req.server, _ = hit
            return chain(req)

        return lookup

    def readiness(self, sites: Iterable[SiteConfig] | None = None) -> dict[str, bool]:
        """Every plugin that can be not ready (of ``sites``, default all), and whether it is."""
        wanted = None if sites is None else {id(s) for s in sites}
        out: dict[str, bool] = {}
        for s in self.sites:
            if wanted is not None and id(s.config) not in wanted:
                continue
            for p in s.plugins:
                ready = getattr(p, "ready", None)
                if callable(ready):
                    name = getattr(p, "name", type(p).__name__)
                    out[name] = out.get(name, True) and bool(ready())
        return out

    # --- running ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Serve the HTTP routes, run start-up hooks (the kubernetes plugin waits for its first
        sync while /ready says so), then listen for DNS."""
        await self.process.http.ensure(self.routes)
        self.process.http.serve(self.routes)
        await self.run_startup()
        for key, disp in self.dispatchers.items():
            self._bound[key] = await _listen(key, disp)
        self.publish()
        await self.run_listening()

    async def run_listening(self) -> None:
        """Hooks that need this configuration to be answering (the loop plugin's probe)."""
        for s in self.sites:
            for hook in s.config.on_listening:
                await hook()

    async def run_startup(self) -> None:
        self._started = True
        for s in self.sites:
            for hook in s.config.on_startup:
                await hook()

    async def take_over(self, old: App) -> None:
        """Serve in place of ``old``: its sockets move to this App's dispatchers where host and
        port are unchanged, others are bound or closed. Raises StartError with nothing changed."""
        fresh: dict[tuple[str, int], list[Listener]] = {}
        try:
            for key, disp in self.dispatchers.items():
                if key not in old._bound:
                    fresh[key] = await _listen(key, disp)
            await self.process.http.ensure(self.routes)
        except BaseException:
            for group in fresh.values():
                for listener in group:
                    listener.close()
            self.process.http.serve(old.routes)  # closes what was bound for this configuration only
            raise
        # No await from here on: every query sees either the old chains or the new ones.
        for key, disp in self.dispatchers.items():
            group = fresh[key] if key in fresh else old._bound.pop(key)
            for listener in group:
                listener.dispatcher = disp
            self._bound[key] = group
        old.stop_accepting()  # the addresses this configuration no longer serves
        self.process.http.serve(self.routes)
        self.publish()
        await self.run_listening()

    async def retire(self) -> None:
        """After a successful take-over: let the old chains finish their queries, then stop them."""
        await self.drain(DRAIN_TIMEOUT)
        self.close_listeners()
        await self.run_shutdown()

    async def discard(self) -> None:
        """After a failed reload: hand adopted state back and stop what this App started."""
        for new, old in self._adopted:
            old.adopt(new)
        self._adopted.clear()
        if self._started:
            await self.run_shutdown()

    def publish(self) -> None:
        """Set coredns_plugin_enabled for the blocks that have `prometheus`, as CoreDNS does."""
        enabled = REGISTRY.values[PLUGIN_ENABLED.name]
        enabled.clear()
        for s in self.sites:
            if "prometheus" not in s.config.plugins:
                continue
            names = [d.name for d in s.block.directives if d.name not in SETUP_ONLY]
            for server in s.servers:
                for zone in s.config.zones:
                    for name in names:
                        enabled[(server, zone, "", name)] = 1

    def stop_accepting(self) -> None:
        """Read no more queries and accept no more connections, but keep every socket open so the
        answers to queries in flight can still be sent; ``close_listeners`` closes them."""
        for listener in self.listeners:
            listener.pause()

    def close_listeners(self) -> None:
        for listener in self.listeners:
            listener.close()
        self._bound.clear()

    async def drain(self, timeout: float = DRAIN_TIMEOUT) -> None:
        """Wait (bounded) for queries still in flight, e.g. waiting on an upstream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while any(d.inflight for d in self.dispatchers.values()) and loop.time() < deadline:
            await asyncio.sleep(0.01)

    async def run_shutdown(self) -> None:
        """Every plugin's shut-down hook, each bounded so a stuck one cannot hold the exit."""
        for s in self.sites:
            for hook in s.config.on_shutdown:
                try:
                    await asyncio.wait_for(hook(), HOOK_TIMEOUT)
                except Exception:
                    log.exception("shutdown hook failed")

    async def shutdown(self) -> None:
        """Stop reading DNS queries, finish those in flight (bounded), close the sockets, run the
        shut-down hooks."""
        self.stop_accepting()
        await self.drain()
        self.close_listeners()
        await self.run_shutdown()

    def describe(self) -> str:
        """``.:1053 on 127.0.0.1`` for each listener: the line printed when ready."""
        parts = []
        for (host, port), disp in self.dispatchers.items():
            zones = " ".join(sorted(disp.zones))
            parts.append(f"{zones}:{port} on {host or 'every address'}")
        return ", ".join(parts)


async def _listen(key: tuple[str, int], disp: Dispatcher) -> list[Listener]:
    """Bind UDP and TCP on ``key`` and serve them with ``disp``; all or nothing (StartError)."""
    host, port = key
    udp_sock = bind_socket(host, port, socket.SOCK_DGRAM)
    try:
        tcp_sock = bind_socket(host, port, socket.SOCK_STREAM)
    except BaseException:
        udp_sock.close()
        raise
    udp, tcp = UdpListener(udp_sock, disp), TcpListener(tcp_sock, disp)
    try:
        await tcp.start()
    except BaseException:
        udp_sock.close()
        tcp_sock.close()
        raise
    udp.start()
    return [udp, tcp]
