"""Routing one query: read it, pick the server block by longest zone match, run its chain,
and send the finished bytes back; bad input gets FORMERR/NOTIMP/REFUSED or is dropped.

A query answered without waiting (every cluster name, every cache hit) comes back from the chain
as a Response: plain calls, no coroutine. Only a query that must wait (forwarding upstream) comes
back as a coroutine, which is driven by hand (``coro.send``) and resumed from its future's callback
— no asyncio Task per query either way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from time import perf_counter
from typing import Any

from clusterdns.metrics import PANICS, REGISTRY, Meter
from clusterdns.plugin import REFUSED, SERVFAIL, Next, Request, Response
from clusterdns.wire import C_IN, WireError, error_reply, finalize, parse_query, reply

log = logging.getLogger("clusterdns.server")

Send = Callable[[bytes, Any], None]  # (wire, client address)
Observer = Callable[[Request, Response, int], None]  # (request, response, bytes sent)
Route = tuple[str, Next, str, Meter | None]  # (zone, chain, server label, meter when `prometheus` is on)


class Dispatcher:
    """The zones served on one listener, each with its chain."""

    def __init__(self) -> None:
        self.zones: dict[str, tuple[Next, str]] = {}  # zone -> (chain, server label)
        self.observers: list[Observer] = []  # called with every answered request
        self.dropped: Meter | None = None  # counts refused unrouted queries (zone "dropped") when metered
        self.inflight = 0
        self._meters: dict[str, Meter] = {}
        self._order: list[tuple[str, str, Route]] = []

    def add(self, zone: str, chain: Next, server_label: str, meter: Meter | None = None) -> None:
        """Serve ``zone`` with ``chain``; ``meter`` counts its queries (blocks with `prometheus`)."""
        self.zones[zone] = (chain, server_label)
        if meter is not None:
            self._meters[zone] = meter
        # longest first; "." matches everything, any other zone by suffix on a label boundary
        self._order = [(z, "." + z, (z, c, label, self._meters.get(z)))
                       for z, (c, label) in sorted(self.zones.items(), key=lambda i: -len(i[0]))]

    def route(self, qname: str) -> Route | None:
        """The longest zone that contains ``qname``, with its chain, server label and meter."""
        for zone, dotted, route in self._order:
            if zone == "." or qname == zone or qname.endswith(dotted):
                return route
        return None

    def handle(self, data: bytes, proto: str, client: Any, send: Send) -> bool:
        """Answer one raw query, now or (if the chain suspends) later, through ``send``.

        Returns False when the packet is dropped unanswered (too short, or itself a response)."""
        start = perf_counter()
        try:
            req = parse_query(data, proto, client)
        except WireError as e:
            if e.rcode is None:
                return False
            send(error_reply(e.req, data, e.rcode), client)
            return True
        hit = self.route(req.qname) if req.qclass == C_IN else None
        if hit is None:  # another class, or no block serves the name: refused before any plugin
            req.zone = "dropped"
            self._finish(req, Response(reply(req, REFUSED), REFUSED), send, self.dropped, start)
            return True
        req.zone, chain, req.server, meter = hit
        try:
            res = chain(req)
        except Exception as e:  # `errors` normally catches first; never let a query kill us
            res = self._panic(req, e)
        if isinstance(res, Response):
            self._finish(req, res, send, meter, start)
        else:
            self._step(res, req, send, meter, start, True)
        return True

    @staticmethod
    def _panic(req: Request, e: Exception) -> Response:
        REGISTRY.inc(PANICS.name)
        log.error("[ERROR] %d %s %d: %s: %s", SERVFAIL, req.qname, req.qtype, type(e).__name__, e)
        return Response(reply(req, SERVFAIL), SERVFAIL)

    def _step(self, coro: Coroutine[Any, Any, Response], req: Request, send: Send, meter: Meter | None,
              start: float, first: bool = False) -> None:
        try:
            fut = coro.send(None)
        except StopIteration as stop:
            if not first:
                self.inflight -= 1
            self._finish(req, stop.value, send, meter, start)
            return
        except Exception as e:
            if not first:
                self.inflight -= 1
            self._finish(req, self._panic(req, e), send, meter, start)
            return
        if first:
            self.inflight += 1
        resume = lambda _f=None: self._step(coro, req, send, meter, start)  # noqa: E731
        if fut is None:  # a bare yield (asyncio.sleep(0))
            asyncio.get_running_loop().call_soon(resume)
        else:
            fut._asyncio_future_blocking = False
            fut.add_done_callback(resume)

    def _finish(self, req: Request, resp: Response, send: Send, meter: Meter | None, start: float) -> None:
        try:
            wire = finalize(resp.wire, req, resp.has_opt)
        except Exception as e:  # a plugin produced a broken message
            log.error("[ERROR] cannot finish the answer to %s: %s", req.qname, e)
            wire = finalize(reply(req, SERVFAIL), req, False)
            resp = Response(wire, SERVFAIL)
        if meter is not None:
            meter.record(req, resp, len(wire), perf_counter() - start)
        for observe in self.observers:
            observe(req, resp, len(wire))
        send(wire, req.client)
