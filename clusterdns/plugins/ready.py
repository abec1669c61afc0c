"""The ``ready`` plugin: ``GET /ready`` answers 200 ``OK`` once every plugin that can be not ready
is ready (the kubernetes plugin: after its first full sync), else 503 with their sorted,
comma-separated names. From the moment SIGTERM arrives it answers 503 ``Shutting down``, on
every connection, so the endpoint leaves the Service while health's lameduck keeps DNS serving
(CoreDNS keeps answering 200 there: coredns/coredns#4084, #5834).

Syntax: ``ready [ADDRESS] { monitor until-ready|continuously }``, ADDRESS default ``:8181``.
With ``until-ready`` (the default) a plugin that was ready once is not asked again; with
``continuously`` /ready follows it back to 503 (e.g. the kubernetes plugin losing its watch).
While anything is not ready, ``plugin/ready: Still waiting on: "kubernetes"`` is logged every
few seconds.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from clusterdns.corefile import Directive
from clusterdns.plugin import SiteConfig, register
from clusterdns.server.http import Reply, address_arg

log = logging.getLogger("clusterdns.ready")

DEFAULT_ADDRESS = ":8181"
LOG_EVERY = 2.0  # seconds between "Still waiting on" lines


class Ready:
    """The /ready endpoint of one address, over the blocks that use it."""

    name: ClassVar[str] = "ready"

    def __init__(self, app: Any, continuously: bool) -> None:
        self.app = app
        self.sites: list[SiteConfig] = []
        self.continuously = continuously
        self.seen_ready: set[str] = set()  # until-ready: plugins never asked again
        self._task: asyncio.Task[None] | None = None

    def waiting(self) -> list[str]:
        """The sorted names of the plugins not ready yet."""
        state = self.app.readiness(self.sites)
        if not self.continuously:
            self.seen_ready.update(name for name, ok in state.items() if ok)
        return sorted(name for name, ok in state.items() if not ok and name not in self.seen_ready)

    def handle(self) -> Reply:
        if self.app.process.stopping:
            return Reply(503, b"Shutting down")
        waiting = self.waiting()
        if waiting:
            return Reply(503, ",".join(waiting).encode())
        return Reply(200, b"OK")

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._report())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None

    async def _report(self) -> None:
        while True:
            await asyncio.sleep(LOG_EVERY)
            waiting = self.waiting()
            if waiting:
                log.info('plugin/ready: Still waiting on: "%s"', ",".join(waiting))
            elif not self.continuously:
                return


@register("ready")
def setup(d: Directive, site: SiteConfig) -> None:
    address = address_arg(d, DEFAULT_ADDRESS)
    continuously = False
    for opt in d.options():
        match opt.name:
            case "monitor":
                if len(opt.args) != 1:
                    raise opt.arg_error()
                if opt.args[0] not in ("until-ready", "continuously"):
                    raise opt.error(f"monitor type {opt.args[0]!r} not supported")
                continuously = opt.args[0] == "continuously"
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    app: Any = site.app
    ready = app.services.get(("ready", address))
    if ready is None:  # one endpoint per address, over every block that names it
        ready = app.services[("ready", address)] = Ready(app, continuously)
        app.route(address, "/ready", ready.handle)
        site.on_startup.append(ready.start)
        site.on_shutdown.append(ready.stop)
    ready.continuously = ready.continuously or continuously
    ready.sites.append(site)
