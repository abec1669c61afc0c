"""The ``prometheus`` plugin: ``GET /metrics`` in Prometheus's text format, with the metric names,
labels and buckets of CoreDNS 1.14 (see docs/plugins/prometheus.md).

Syntax: ``prometheus [ADDRESS]``, ADDRESS default ``localhost:9153`` (the kube-dns Corefile says
``prometheus :9153``). One listener per address, shared by every block that names it.

The per-query counting is not a link in the chain, which would cost an async layer per query:
for a block with `prometheus`, the dispatcher hands each finished query to a ``Meter``
(clusterdns.metrics), which also sees the replies of plugins below errors, cache hits, and the
queries refused for zones no block serves (zone ``dropped``). Everything is turned into
prometheus-client families only when scraped.
"""

from __future__ import annotations

from typing import Any, ClassVar

from clusterdns.corefile import Directive
from clusterdns.metrics import exposition
from clusterdns.plugin import SiteConfig, register
from clusterdns.server.http import Address, Reply, address_arg

DEFAULT_ADDRESS = "localhost:9153"


class Prometheus:
    """The /metrics endpoint; its presence in a block turns counting on for the block's zones."""

    name: ClassVar[str] = "prometheus"

    def __init__(self, address: Address) -> None:
        self.address = address

    def handle(self) -> Reply:
        body, content_type = exposition()
        return Reply(200, body, content_type)


@register("prometheus")
def setup(d: Directive, site: SiteConfig) -> Prometheus:
    address = address_arg(d, DEFAULT_ADDRESS)
    for opt in d.options():
        match opt.name:
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    app: Any = site.app
    prom: Prometheus | None = app.services.get(("prometheus", address))
    if prom is None:
        prom = app.services[("prometheus", address)] = Prometheus(address)
        app.route(address, "/metrics", prom.handle)
    return prom
