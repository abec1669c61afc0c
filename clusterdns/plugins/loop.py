"""The ``loop`` plugin: at start-up, detect a forwarding loop back to ourselves and stop the process.

Syntax: ``loop`` (no arguments). After start-up it sends ``<random>.<random>.<zone> HINFO`` (zone:
the block's first) to the server's own address, once a second for up to 30 s until one exchange
gets an answer; 2 s after that it switches itself off. Seeing the probe name more than twice means
the query came back round: log a FATAL line and exit 1, as CoreDNS's log.Fatal does (in Kubernetes
the pod then goes to CrashLoopBackOff instead of burning CPU in the loop).
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import sys
from collections.abc import Callable
from typing import ClassVar

from clusterdns.corefile import Directive
from clusterdns.plugin import Next, Request, Result, SiteConfig, register
from clusterdns.upstream import Upstream, UpstreamError
from clusterdns.wire import RD, T_HINFO, encode_name

log = logging.getLogger("clusterdns.loop")

PROBE_FOR = 30.0  # seconds after start-up during which probes are sent
PROBE_TIMEOUT = 2.0
RETRY_AFTER = 1.0
GRACE = 2.0  # keep counting this long after a successful probe
SEEN_LIMIT = 2


def _fatal(message: str) -> None:
    """Log at FATAL and end the process now, as Go's log.Fatal does."""
    log.critical("%s", message)
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    os._exit(1)


def _addr(host: str, port: int) -> str:
    """``IP:port`` as Go prints it: IPv4-mapped addresses (dual-stack sockets) as plain IPv4."""
    host = host.removeprefix("::ffff:") if "." in host else host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Loop:
    name: ClassVar[str] = "loop"

    def __init__(self, zone: str, target: tuple[str, int], on_loop: Callable[[str], None] = _fatal) -> None:
        self.zone = zone
        self.target = target
        self.qname = f"{random.getrandbits(63)}.{random.getrandbits(63)}.{zone if zone != '.' else ''}"
        self.seen = 0
        self.off = False
        self.on_loop = on_loop
        self._task: asyncio.Task[None] | None = None

    def serve(self, req: Request, call_next: Next) -> Result:
        if req.qtype == T_HINFO and not self.off and req.qname == self.qname:
            self.seen += 1
            if self.seen > SEEN_LIMIT:
                remote, local = _addr(*req.client[:2]), _addr(*self.target)
                self.on_loop(
                    f'[FATAL] plugin/loop: Loop ({remote} -> {local}) detected for zone "{self.zone}", see '
                    f'https://coredns.io/plugins/loop#troubleshooting. Query: "HINFO {self.qname}"')
        return call_next(req)

    def probe_query(self) -> bytes:
        header = random.getrandbits(16).to_bytes(2, "big") + RD.to_bytes(2, "big") + b"\x00\x01" + bytes(6)
        return header + encode_name(self.qname) + T_HINFO.to_bytes(2, "big") + b"\x00\x01"

    async def start(self) -> None:
        # Runs once this configuration's listeners answer (on_listening); the probe is a Task so
        # start-up does not wait for it, and it retries while nothing answers yet.
        self._task = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + PROBE_FOR
        up = Upstream(*self.target, expire=0)
        try:
            while loop.time() < deadline:
                try:
                    await up.exchange(self.probe_query(), "udp", PROBE_TIMEOUT)
                except UpstreamError:
                    self.seen = 0  # as CoreDNS: only sightings during one exchange count
                    await asyncio.sleep(RETRY_AFTER)
                    continue
                await asyncio.sleep(GRACE)
                break
        finally:
            self.off = True
            up.close()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


@register("loop")
def setup(d: Directive, site: SiteConfig) -> Loop:
    if d.args:
        raise d.arg_error()
    for opt in d.options():
        raise opt.error(f"unknown property {opt.name!r}")
    host = site.binds[0] if site.binds else "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1" if host == "0.0.0.0" else "::1"
    lp = Loop(site.zones[0] if site.zones else ".", (host, site.port))
    site.on_listening.append(lp.start)
    site.on_shutdown.append(lp.stop)
    return lp
