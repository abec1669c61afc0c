"""The plugin interface: Request, Response, Next, Plugin, the registry, ORDER and build_chain().

A plugin either answers a request or hands it to ``call_next``. The order in which plugins run is
fixed by ``ORDER`` (CoreDNS's plugin.cfg order), never by the order of lines in the Corefile.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

if TYPE_CHECKING:
    from dnslib import DNSRecord

    from clusterdns.corefile import Directive

# DNS constants used across plugins.
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED = 0, 1, 2, 3, 4, 5
BADVERS = 16

# Execution order, as in CoreDNS's plugin.cfg. Setup-only plugins (reload, bind, ready, health)
# are listed so their directives are accepted and ordered, but they never enter the query path.
ORDER: tuple[str, ...] = (
    "reload",
    "bind",
    "ready",
    "health",
    "prometheus",
    "errors",
    "log",
    "loadbalance",
    "cache",
    "kubernetes",
    "loop",
    "forward",
)


@dataclass(slots=True)
class Request:
    """One DNS query as the transport read it; computed once, shared by every plugin."""

    data: bytes  # the raw query as received
    id: int
    flags: int  # the query's 16-bit header flags
    qname: str  # lower-cased, fully qualified presentation form: "nginx.default.svc.cluster.local."
    qtype: int
    qclass: int
    qend: int  # offset just past the question section in ``data``
    edns: bool  # the query carried an OPT record
    udp_size: int  # the largest UDP response the client accepts (512 without EDNS)
    do: bool  # DNSSEC OK bit
    proto: str  # "udp" or "tcp"
    client: tuple[str, int]
    family: int = 1  # 1 for IPv4, 2 for IPv6 (CoreDNS's metric label)
    zone: str = "."  # the server block zone that matched
    server: str = ""  # the server label, e.g. "dns://:53"
    _parsed: Any = None

    @property
    def question(self) -> bytes:
        """The question section exactly as the client sent it (original case)."""
        return self.data[12 : self.qend]

    def parsed(self) -> DNSRecord:
        """A full dnslib parse of the query, computed on first use (slow path only)."""
        if self._parsed is None:
            from dnslib import DNSRecord

            self._parsed = DNSRecord.parse(self.data)
        return self._parsed  # type: ignore[no-any-return]


@dataclass(slots=True)
class Response:
    """A complete DNS message ready for the wire (ID and question are the request's)."""

    wire: bytes
    rcode: int
    plugin: str = ""  # the plugin that wrote it; "" when the server did
    has_opt: bool = False  # the wire already carries an OPT record (e.g. from an upstream)


# What a link of the chain returns: the Response when it can answer at once (a cluster name, a
# cache hit: no coroutine, no await), else a coroutine that will produce it (forwarding upstream).
Result = Response | Coroutine[Any, Any, Response]
Next = Callable[[Request], Result]


async def resolve(result: Result) -> Response:
    """The Response of ``result``, awaiting it if it is still pending (for code that is async anyway)."""
    if isinstance(result, Response):
        return result
    return await result


@runtime_checkable
class Plugin(Protocol):
    """A link in the chain of a server block.

    ``serve`` answers (returns a Response), hands on (returns ``call_next(req)`` as it is), or wraps
    what comes back: if that is a Response, work on it now; if it is a coroutine, return a coroutine
    of your own that awaits it. Only a plugin that must wait (forward) needs ``async`` at all.
    """

    name: ClassVar[str]

    def serve(self, req: Request, call_next: Next) -> Result: ...


@runtime_checkable
class Readiness(Protocol):
    """A plugin that can be not ready (the ``ready`` plugin asks every one of these)."""

    name: ClassVar[str]

    def ready(self) -> bool: ...


Hook = Callable[[], Awaitable[None]]


@dataclass
class SiteConfig:
    """What a plugin's setup learns about, and registers on, its server block."""

    zones: list[str]  # the block's zones, lower-cased and fully qualified
    port: int
    corefile: str  # path of the Corefile (relative plugin paths are taken from its directory)
    binds: list[str] = field(default_factory=list)  # set by `bind`; empty = every address
    on_startup: list[Hook] = field(default_factory=list)
    on_listening: list[Hook] = field(default_factory=list)  # once the listeners serve this configuration
    on_shutdown: list[Hook] = field(default_factory=list)
    plugins: dict[str, object] = field(default_factory=dict)  # name -> configured instance
    lookup: Next | None = None  # the server's whole dispatch, for plugins that resolve names (see resolve())
    app: Any = None  # the running App (process-wide services: metrics, HTTP listeners)

    @property
    def server_label(self) -> str:
        """The `server` metric label of this block (its one bind address, else every address)."""
        return server_label(self.binds[0] if len(self.binds) == 1 else "", self.port)


def server_label(host: str, port: int) -> str:
    """CoreDNS's `server` metric label: ``dns://:53``, with bind ``dns://127.0.0.1:53``."""
    return f"dns://{'[' + host + ']' if ':' in host else host}:{port}"


Setup = Callable[["Directive", SiteConfig], "Plugin | object | None"]

_REGISTRY: dict[str, Setup] = {}


def register(name: str) -> Callable[[Setup], Setup]:
    """Register ``setup`` as the parser of directive ``name``.

    ``setup`` returns a Plugin for the query path, or another object (or None) for plugins that
    only run listeners or hooks; it raises CorefileError (``directive.error(...)``) on bad input.
    """

    def deco(setup: Setup) -> Setup:
        if name in _REGISTRY:
            raise ValueError(f"plugin {name!r} registered twice")
        _REGISTRY[name] = setup
        return setup

    return deco


def load_all() -> dict[str, Setup]:
    """Import every module in clusterdns.plugins (each registers itself) and return the registry."""
    import clusterdns.plugins as pkg

    for mod in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"{pkg.__name__}.{mod.name}")
    return dict(_REGISTRY)


def build_chain(plugins: list[Plugin], end: Next) -> Next:
    """Link ``plugins`` (already in ORDER) into one callable, built backwards from ``end``."""
    nxt = end
    for p in reversed(plugins):
        nxt = _link(p, nxt)
    return nxt


def _link(plugin: Plugin, nxt: Next) -> Next:
    serve = plugin.serve

    def call(req: Request) -> Result:
        return serve(req, nxt)

    return call
