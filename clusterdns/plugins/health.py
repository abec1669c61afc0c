"""The ``health`` plugin: ``GET /health`` answers 200 ``OK`` while the process serves.

Syntax: ``health [ADDRESS] { lameduck DURATION }``, ADDRESS default ``:8080``. With ``lameduck``,
SIGTERM keeps DNS and /health serving for DURATION before the listeners close, while /ready
already answers 503 so the endpoint leaves the Service first (see clusterdns/server/run.py).

A self-check GETs /health every second, as CoreDNS does, and exports how long that took
(coredns_health_request_duration_seconds) and how often it failed
(coredns_health_request_failures_total): a slow answer means a starved event loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

from clusterdns.corefile import Directive
from clusterdns.duration import parse_duration
from clusterdns.metrics import HEALTH_DURATION, HEALTH_FAILURES, REGISTRY
from clusterdns.plugin import SiteConfig, register
from clusterdns.server.http import Address, Reply, address_arg

log = logging.getLogger("clusterdns.health")

DEFAULT_ADDRESS = ":8080"
CHECK_EVERY = 1.0  # seconds between self-checks
CHECK_TIMEOUT = 3.0
SLOW = 1.0  # a local request slower than this is worth a warning


class Health:
    """The /health endpoint of one address, and its self-check."""

    name: ClassVar[str] = "health"

    def __init__(self, address: Address, text: str) -> None:
        self.address = address
        self.url = f"http://{text}/health"
        self._task: asyncio.Task[None] | None = None

    def handle(self) -> Reply:
        return Reply(200, b"OK")

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._self_check())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _self_check(self) -> None:
        while True:
            await asyncio.sleep(CHECK_EVERY)
            start = time.perf_counter()
            try:
                await asyncio.wait_for(self.probe(), CHECK_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as e:
                REGISTRY.observe(HEALTH_DURATION.name, (), time.perf_counter() - start)
                REGISTRY.inc(HEALTH_FAILURES.name)
                log.warning('plugin/health: Local health request to "%s" failed: %s', self.url, e or type(e).__name__)
                continue
            elapsed = time.perf_counter() - start
            REGISTRY.observe(HEALTH_DURATION.name, (), elapsed)
            if elapsed > SLOW:
                log.warning('plugin/health: Local health request to "%s" took more than 1s: %.3fs', self.url, elapsed)

    async def probe(self) -> None:
        """One GET /health through the real listener; raises unless it answers 200."""
        host, port = self.address
        host = "127.0.0.1" if host in ("", "localhost") else host
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            status = await reader.readline()
            if not status.startswith(b"HTTP/1.1 200 "):
                raise ValueError(f"unexpected status line {status!r}")
        finally:
            writer.close()


@register("health")
def setup(d: Directive, site: SiteConfig) -> None:
    address = address_arg(d, DEFAULT_ADDRESS)
    text = d.args[0] if d.args else DEFAULT_ADDRESS
    lameduck = 0.0
    for opt in d.options():
        match opt.name:
            case "lameduck":
                if len(opt.args) != 1:
                    raise opt.arg_error()
                try:
                    lameduck = parse_duration(opt.args[0])
                except ValueError:
                    raise opt.error(f"unable to parse lameduck duration value: {opt.args[0]!r}") from None
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    app: Any = site.app
    app.lameduck = max(app.lameduck, lameduck)
    if ("health", address) in app.services:  # one endpoint per address, whatever the number of blocks
        return
    health = app.services[("health", address)] = Health(address, text)
    app.route(address, "/health", health.handle)
    site.on_startup.append(health.start)
    site.on_shutdown.append(health.stop)
