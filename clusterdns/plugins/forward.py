"""The ``forward`` plugin: send queries under FROM to upstream resolvers, with health checking.

Syntax (CoreDNS's)::

    forward FROM TO... {
        except DOMAIN...            force_tcp            prefer_udp
        expire DURATION             max_fails N          max_idle_conns N
        health_check DURATION [no_rec] [domain FQDN]     read_timeout DURATION
        policy random|round_robin|sequential             max_concurrent N
        max_connect_attempts N      next RCODE...        failover RCODE...
        failfast_all_unhealthy_upstreams
    }

TO is ``IP[:PORT]``, ``dns://IP[:PORT]`` or a resolv.conf file whose ``nameserver`` lines are used.
The client's query goes upstream byte for byte (only the ID is rewritten, then restored), and the
upstream's answer comes back unchanged apart from the ID. See docs/plugins/forward.md.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from clusterdns.corefile import Directive
from clusterdns.duration import parse_duration
from clusterdns.metrics import REGISTRY, TIME_BUCKETS, Family
from clusterdns.plugin import REFUSED, Next, Request, Response, Result, SiteConfig, register, resolve
from clusterdns.upstream import Exchanger, Upstream, UpstreamError
from clusterdns.wire import RCODE_NAMES, RD, T_NS, T_OPT, TC, WireError, encode_name, reply, scan

log = logging.getLogger("clusterdns.forward")

MAX_UPSTREAMS = 15
TIMEOUT = 5.0  # a query's whole time budget, across every try
READ_TIMEOUT = 2.0  # one try
HC_TIMEOUT = 1.0  # one health check
HC_INTERVAL = 0.5
EXPIRE = 10.0
MAX_FAILS = 2

DURATION = REGISTRY.declare(Family(
    "coredns_proxy_request_duration_seconds", "histogram", "Histogram of the time each request took.",
    ("proxy_name", "to", "rcode"), TIME_BUCKETS))
HC_FAILURES = REGISTRY.declare(Family(
    "coredns_proxy_healthcheck_failures_total", "counter", "Counter of the number of failed healthchecks.",
    ("proxy_name", "to")))
HC_BROKEN = REGISTRY.declare(Family(
    "coredns_forward_healthcheck_broken_total", "counter",
    "Counter of the number of complete failures of the healthchecks."))
REJECTS = REGISTRY.declare(Family(
    "coredns_forward_max_concurrent_rejects_total", "counter",
    "Counter of the number of queries rejected because the concurrent queries were at maximum."))

RCODES = {name: code for code, name in RCODE_NAMES.items()}
NOT_SUPPORTED = ("tls", "tls_servername", "doh_method", "source_address", "resolver", "max_age")


class NoHealthy(UpstreamError):
    """Every upstream is down and failfast_all_unhealthy_upstreams is set."""


@dataclass
class Config:
    """The parsed directive."""

    zone: str
    to: list[tuple[str, int]]
    excepts: list[str] = field(default_factory=list)
    force_tcp: bool = False
    prefer_udp: bool = False
    expire: float = EXPIRE
    max_idle_conns: int = 0
    read_timeout: float = READ_TIMEOUT
    max_fails: int = MAX_FAILS
    hc_interval: float = HC_INTERVAL
    hc_recursion: bool = True
    hc_domain: str = "."
    policy: str = "random"
    max_concurrent: int = 0
    max_connect_attempts: int = 0  # 0: twice the number of upstreams
    failfast: bool = False
    next_rcodes: frozenset[int] = frozenset()
    failover_rcodes: frozenset[int] = frozenset()


class Proxy:
    """An upstream and its health: consecutive failed health checks, and the prober."""

    def __init__(self, upstream: Exchanger, cfg: Config) -> None:
        self.upstream = upstream
        self.label = upstream.label
        self.fails = 0
        self.interval = cfg.hc_interval
        self.ping_proto = "tcp" if cfg.force_tcp else "udp"
        header = (RD if cfg.hc_recursion else 0).to_bytes(4, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00"
        self.ping = header + encode_name(cfg.hc_domain) + T_NS.to_bytes(2, "big") + b"\x00\x01"
        self._prober: asyncio.Task[None] | None = None

    def down(self, max_fails: int) -> bool:
        return max_fails > 0 and self.fails >= max_fails

    def healthcheck(self) -> None:
        """Start probing (unless already): first now, then every interval until one succeeds."""
        if self._prober is None and self.interval > 0:
            self._prober = asyncio.get_running_loop().create_task(self._probe())

    async def _probe(self) -> None:
        try:
            while True:
                try:
                    await self.upstream.exchange(self.ping, self.ping_proto, HC_TIMEOUT)
                except UpstreamError as e:
                    REGISTRY.inc(HC_FAILURES.name, ("forward", self.label))
                    self.fails += 1
                    log.debug("plugin/forward: health check of %s failed: %s", self.label, e)
                else:
                    self.fails = 0
                    return
                await asyncio.sleep(self.interval)
        finally:
            self._prober = None

    async def stop(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            try:
                await self._prober
            except asyncio.CancelledError:
                pass
        self.upstream.close()


Policy = Callable[[list[Proxy]], Sequence[Proxy]]


def random_policy(proxies: list[Proxy]) -> Sequence[Proxy]:
    if len(proxies) == 1:
        return proxies
    return random.sample(proxies, len(proxies))


class RoundRobin:
    """Each query starts one further along the list."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, proxies: list[Proxy]) -> Sequence[Proxy]:
        self.n += 1
        i = self.n % len(proxies)
        return proxies[i:] + proxies[:i]


def sequential_policy(proxies: list[Proxy]) -> Sequence[Proxy]:
    return proxies


class Forward:
    name: ClassVar[str] = "forward"

    def __init__(self, cfg: Config, proxies: list[Proxy]) -> None:
        self.cfg = cfg
        self.proxies = proxies
        self.zone = cfg.zone
        self._dotted = "." + cfg.zone
        self.excepts = [(e, "." + e) for e in cfg.excepts]
        policies: dict[str, Policy] = {"random": random_policy, "round_robin": RoundRobin(),
                                       "sequential": sequential_policy}
        self.policy = policies[cfg.policy]
        self.attempts = cfg.max_connect_attempts or 2 * len(proxies)
        self.concurrent = 0
        self.next_forward = False  # another forward follows in the same block (for `next`)

    def matches(self, qname: str) -> bool:
        """Under FROM and not under an ``except`` domain (FROM itself is always forwarded)."""
        if self.zone != "." and not qname.endswith(self._dotted):
            return qname == self.zone
        if not self.excepts or qname == self.zone:
            return True
        return not any(qname == e or qname.endswith(dotted) for e, dotted in self.excepts)

    def serve(self, req: Request, call_next: Next) -> Result:
        if not self.matches(req.qname):
            return call_next(req)
        limit = self.cfg.max_concurrent
        if limit and self.concurrent >= limit:
            REGISTRY.inc(REJECTS.name)
            return Response(reply(req, REFUSED), REFUSED, self.name)
        return self._forwarded(req, call_next)

    async def _forwarded(self, req: Request, call_next: Next) -> Response:
        self.concurrent += 1
        try:
            resp = await self.forward(req)
        finally:
            self.concurrent -= 1
        if self.next_forward and resp.rcode in self.cfg.next_rcodes:
            return await resolve(call_next(req))
        return resp

    async def forward(self, req: Request) -> Response:
        """Try upstreams in policy order until one answers, within TIMEOUT; raise the last error."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TIMEOUT
        proto = "tcp" if cfg.force_tcp else "udp" if cfg.prefer_udp else req.proto
        order = self.policy(self.proxies)
        n = len(order)
        i = skipped = attempts = 0
        err: UpstreamError | None = None
        # Bounded by attempts (each pass over the list makes at least one) and by the deadline.
        while attempts < self.attempts:
            now = loop.time()
            if now >= deadline:
                break
            if i >= n:
                i = skipped = 0
            proxy = order[i]
            i += 1
            if proxy.down(cfg.max_fails):
                skipped += 1
                if skipped < n:
                    continue
                REGISTRY.inc(HC_BROKEN.name)
                if cfg.failfast:
                    err = NoHealthy("no healthy proxies")
                    break
                proxy = random.choice(self.proxies)  # health checking itself may be what is broken
            attempts += 1
            try:
                resp = await self._ask(loop, now, proxy, req, proto, deadline)
            except UpstreamError as e:
                err = e
                if cfg.max_fails:
                    proxy.healthcheck()
                if skipped >= n:  # even the pick among the down ones failed
                    break
                continue
            if resp.rcode in cfg.failover_rcodes and skipped < n - 1:
                skipped += 1
                continue
            return resp
        raise err or UpstreamError("no upstream answered in time")

    async def _ask(self, loop: asyncio.AbstractEventLoop, start: float, proxy: Proxy, req: Request, proto: str,
                   deadline: float) -> Response:
        """One try: each exchange gets read_timeout, or what is left of the query's time if less."""
        up = proxy.upstream
        wire = await up.exchange(req.data, proto, min(self.cfg.read_timeout, deadline - start))
        # A truncated UDP answer is retried over TCP when the client can take more than the
        # upstream sent: it came over TCP (prefer_udp), or it offered an EDNS buffer the upstream
        # capped (dnsmasq and unbound send at most 1232 bytes).
        if wire[2] & (TC >> 8) and proto == "udp" and (req.proto == "tcp" or req.udp_size > 512):
            wire = await up.exchange(req.data, "tcp", min(self.cfg.read_timeout, deadline - loop.time()))
        resp = Response(wire, wire[3] & 0xF, self.name, _has_opt(wire))
        rcode = RCODE_NAMES.get(resp.rcode, str(resp.rcode))
        REGISTRY.observe(DURATION.name, ("forward", proxy.label, rcode), loop.time() - start)
        return resp

    async def stop(self) -> None:
        for p in self.proxies:
            await p.stop()


def _has_opt(wire: bytes) -> bool:
    """Whether the reply carries an OPT record (only an additional section can hold one)."""
    if not (wire[10] or wire[11]):
        return False
    try:
        return any(s.rtype == T_OPT and s.section == 2 for s in scan(wire))
    except WireError as e:
        raise UpstreamError(f"dns: bad reply from upstream: {e}") from None


# --- configuration ---------------------------------------------------------------------------

def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def host_port(text: str) -> tuple[str, int] | None:
    """``IP``, ``IP:PORT`` or ``[IPv6]:PORT`` -> (ip, port); None when it is not an address."""
    port = ""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                return None
            port = rest[1:]
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host = text
    try:
        ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return None
    if port and not (port.isdigit() and 0 < int(port) < 65536):
        raise ValueError(f"invalid port in {text!r}")
    return host, int(port or 53)


def resolv_conf(path: str) -> list[tuple[str, int]]:
    """The ``nameserver`` addresses of a resolv.conf file (port 53), in order."""
    servers = []
    with open(path) as f:
        for line in f:
            words = line.split()
            if len(words) < 2 or words[0] != "nameserver":
                continue
            try:
                ipaddress.ip_address(words[1].split("%")[0])
            except ValueError:
                continue  # as the C resolver does: a bad line is skipped
            servers.append((words[1], 53))
    return servers


def parse_to(arg: str, base_dir: str) -> list[tuple[str, int]]:
    """One TO argument: an address, a ``dns://`` address, or a resolv.conf path."""
    scheme, sep, rest = arg.partition("://")
    if not sep:
        scheme, rest = "dns", arg
    if scheme != "dns":
        raise ValueError(f"'{scheme}' is not supported as a destination protocol in forward: {arg}")
    hp = host_port(rest)
    if hp is not None:
        return [hp]
    path = rest if os.path.isabs(rest) else os.path.join(base_dir, rest)
    if not os.path.isfile(path):
        raise ValueError(f"not an IP address or file: {arg!r}")
    servers = resolv_conf(path)
    if not servers:
        raise ValueError(f"no nameservers found in {path}")
    return servers


def _count(opt: Directive) -> int:
    if len(opt.args) != 1:
        raise opt.arg_error()
    if not opt.args[0].isdigit():
        raise opt.error(f"{opt.name} must be a non-negative integer, not {opt.args[0]!r}")
    return int(opt.args[0])


def _duration(opt: Directive) -> float:
    if len(opt.args) < 1:
        raise opt.arg_error()
    try:
        return parse_duration(opt.args[0])  # never negative: the grammar has no sign
    except ValueError as e:
        raise opt.error(str(e)) from None


def _rcodes(opt: Directive) -> frozenset[int]:
    if not opt.args:
        raise opt.arg_error()
    unknown = [a for a in opt.args if a.upper() not in RCODES]
    if unknown:
        raise opt.error(f"unknown rcode {unknown[0]!r}")
    return frozenset(RCODES[a.upper()] for a in opt.args)


def _health_check(opt: Directive, cfg: Config) -> None:
    cfg.hc_interval = _duration(opt)
    rest = list(opt.args[1:])
    while rest:
        word = rest.pop(0)
        if word == "no_rec":
            cfg.hc_recursion = False
        elif word == "domain" and rest:
            cfg.hc_domain = _fqdn(rest.pop(0))
            try:
                encode_name(cfg.hc_domain)
            except ValueError:
                raise opt.error(f"health_check: invalid domain name {cfg.hc_domain}") from None
        else:
            raise opt.error(f"health_check: unknown option {word}")


def parse_config(d: Directive, site: SiteConfig) -> Config:
    """Read the directive and its block; every error names file:line and the plugin."""
    if len(d.args) < 2:
        raise d.arg_error()
    if "/" in d.args[0]:
        raise d.error(f"a CIDR as FROM is not supported: {d.args[0]!r}")
    base = os.path.dirname(os.path.abspath(site.corefile))
    to: list[tuple[str, int]] = []
    for arg in d.args[1:]:
        try:
            to += parse_to(arg, base)
        except (OSError, ValueError) as e:
            raise d.error(str(e)) from None
    if len(to) > MAX_UPSTREAMS:
        raise d.error(f"more than {MAX_UPSTREAMS} TOs configured: {len(to)}")
    cfg = Config(zone=_fqdn(d.args[0].removeprefix("dns://")), to=to)
    for opt in d.options():
        a = opt.args
        match opt.name:
            case "except":
                if not a:
                    raise opt.arg_error()
                cfg.excepts += [_fqdn(x) for x in a]
            case "force_tcp" | "prefer_udp":
                if a:
                    raise opt.arg_error()
                setattr(cfg, opt.name, True)
            case "failfast_all_unhealthy_upstreams":
                if a:
                    raise opt.arg_error()
                cfg.failfast = True
            case "expire" | "read_timeout":
                if len(a) != 1:
                    raise opt.arg_error()
                setattr(cfg, opt.name, _duration(opt))
            case "max_fails" | "max_idle_conns" | "max_concurrent" | "max_connect_attempts":
                setattr(cfg, opt.name, _count(opt))
            case "health_check":
                _health_check(opt, cfg)
            case "policy":
                if len(a) != 1:
                    raise opt.arg_error()
                if a[0] not in ("random", "round_robin", "sequential"):
                    raise opt.error(f"unknown policy '{a[0]}'")
                cfg.policy = a[0]
            case "next":
                cfg.next_rcodes = _rcodes(opt)
            case "failover":
                cfg.failover_rcodes = _rcodes(opt)
            case name if name in NOT_SUPPORTED:
                raise opt.error(f"{name} is not supported (plain DNS upstreams only)")
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    if cfg.read_timeout <= 0:
        raise d.error("read_timeout must be positive")
    return cfg


@register("forward")
def setup(d: Directive, site: SiteConfig) -> Forward:
    cfg = parse_config(d, site)
    proxies = [Proxy(Upstream(h, p, expire=cfg.expire, max_idle_conns=cfg.max_idle_conns), cfg) for h, p in cfg.to]
    fwd = Forward(cfg, proxies)
    earlier = site.plugins.get("forward")
    if isinstance(earlier, Forward):  # several forwards in one block: `next` hands over to this one
        earlier.next_forward = True
    site.on_shutdown.append(fwd.stop)
    return fwd
