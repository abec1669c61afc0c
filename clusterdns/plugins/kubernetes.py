"""The ``kubernetes`` plugin: Service, endpoint, pod, PTR and dns-version records for the cluster
zones, answered from the in-memory index (see docs/plugins/kubernetes.md).

Syntax (CoreDNS's, plus ``objects PATH...`` to serve objects read from files)::

    kubernetes [ZONES...] {
        endpoint URL | kubeconfig PATH [CONTEXT] | tls CERT KEY CACERT | objects PATH...
        namespaces NS...            labels EXPR          namespace_labels EXPR
        pods disabled|insecure|verified                  endpoint_pod_names
        ttl SECONDS                 noendpoints          fallthrough [ZONES...]
        ignore empty_service        startup_timeout DURATION
    }
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import struct
from dataclasses import dataclass, field
from typing import Any, ClassVar

from clusterdns.corefile import Directive
from clusterdns.duration import parse_duration
from clusterdns.k8s import selector
from clusterdns.k8s.index import NODATA_ANSWER, NXDOMAIN_ANSWER, Index, Prepared
from clusterdns.k8s.records import Options, addr_type, pod_ip_from_label
from clusterdns.k8s.sources import Source
from clusterdns.k8s.store import Filters, Store
from clusterdns.plugin import NOERROR, REFUSED, SERVFAIL, Next, Request, Response, Result, SiteConfig, register, resolve
from clusterdns.wire import (
    C_IN,
    QNAME_PTR,
    RD,
    T_A,
    T_AAAA,
    T_ANY,
    T_AXFR,
    T_CNAME,
    T_IXFR,
    T_NS,
    T_SOA,
    T_TXT,
    encode_name,
    parse_query,
    reply,
    rr,
    scan,
)

log = logging.getLogger("clusterdns.kubernetes")

SPEC_VERSION = "1.1.0"
DNS_VERSION_TTL = 28800
MAX_CHASE = 8
NX_MEMO = 10_000  # names remembered as not existing (per index generation)


@dataclass
class Config:
    """The parsed directive."""

    zones: list[str]
    ttl: int = 5
    pods: str = "disabled"
    fallthrough: list[str] | None = None  # None: off; []: every zone
    namespaces: list[str] = field(default_factory=list)
    labels: str = ""
    namespace_labels: str = ""
    endpoint_pod_names: bool = False
    noendpoints: bool = False
    ignore_empty_service: bool = False
    startup_timeout: float = 5.0
    objects: list[str] = field(default_factory=list)
    endpoint: str = ""
    kubeconfig: str = ""
    context: str = ""
    tls: tuple[str, str, str] | None = None


def _fqdn(name: str) -> str:
    name = name.lower()
    return name if name.endswith(".") else name + "."


def parse_config(d: Directive, site: SiteConfig) -> Config:
    """Read the directive and its block; every error names file:line and the plugin."""
    cfg = Config(zones=[_fqdn(z) for z in d.args] or list(site.zones))
    base = os.path.dirname(os.path.abspath(site.corefile))
    for opt in d.options():
        a = opt.args
        match opt.name:
            case "ttl":
                if len(a) != 1 or not a[0].isdigit() or not 0 <= int(a[0]) <= 3600:
                    raise opt.error(f"ttl must be an integer in [0, 3600], not {' '.join(a)!r}")
                cfg.ttl = int(a[0])
            case "pods":
                if len(a) != 1 or a[0] not in ("disabled", "insecure", "verified"):
                    raise opt.error("pods takes one of disabled, insecure, verified")
                cfg.pods = a[0]
            case "fallthrough":
                cfg.fallthrough = [_fqdn(z) for z in a]
            case "namespaces":
                if not a:
                    raise opt.arg_error()
                cfg.namespaces = list(a)
            case "labels" | "namespace_labels":
                expr = " ".join(a)
                try:
                    selector.parse(expr)
                except ValueError as e:
                    raise opt.error(str(e)) from None
                setattr(cfg, opt.name, expr)
            case "endpoint_pod_names" | "noendpoints":
                if a:
                    raise opt.arg_error()
                setattr(cfg, opt.name, True)
            case "ignore":
                if a != ["empty_service"]:
                    raise opt.error("ignore takes empty_service")
                cfg.ignore_empty_service = True
            case "startup_timeout":
                try:
                    cfg.startup_timeout = parse_duration(a[0]) if len(a) == 1 else -1
                except ValueError as e:
                    raise opt.error(str(e)) from None
                if cfg.startup_timeout < 0:
                    raise opt.arg_error()
            case "objects":
                if not a:
                    raise opt.arg_error()
                cfg.objects = [p if os.path.isabs(p) else os.path.join(base, p) for p in a]
                for p in cfg.objects:
                    if not os.path.exists(p):
                        raise opt.error(f"objects: no such file or directory: {p}")
            case "endpoint":
                if not a:
                    raise opt.arg_error()
                if len(a) > 1:
                    log.warning("%s:%d: kubernetes: only the first endpoint is used", opt.file, opt.line)
                cfg.endpoint = a[0]
            case "kubeconfig":
                if len(a) not in (1, 2):
                    raise opt.arg_error()
                cfg.kubeconfig = a[0] if os.path.isabs(a[0]) else os.path.join(base, a[0])
                cfg.context = a[1] if len(a) == 2 else ""
            case "tls":
                if len(a) != 3:
                    raise opt.arg_error()
                cfg.tls = (a[0], a[1], a[2])
            case "upstream":
                log.warning("%s:%d: kubernetes: upstream is deprecated since CoreDNS 1.7 and ignored",
                            opt.file, opt.line)
            case "apiserver_qps" | "apiserver_burst" | "apiserver_max_inflight":
                log.warning("%s:%d: kubernetes: %s is accepted and not needed here", opt.file, opt.line, opt.name)
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    if cfg.objects and (cfg.kubeconfig or cfg.endpoint):
        raise d.error("objects cannot be combined with kubeconfig or endpoint")
    if cfg.namespaces and cfg.namespace_labels:
        raise d.error("namespaces and namespace_labels cannot both be set")
    return cfg


def make_source(cfg: Config) -> Source:
    """Files for ``objects``, else the Kubernetes API (imported only then: it is heavy)."""
    if cfg.objects:
        from clusterdns.k8s.sources.files import FileSource

        return FileSource(cfg.objects)
    from clusterdns.k8s.sources.api import ApiSource

    return ApiSource.from_config(cfg)


class Kubernetes:
    """Answers the cluster zones from the index."""

    name: ClassVar[str] = "kubernetes"

    def __init__(self, cfg: Config, site: SiteConfig, source: Source) -> None:
        self.cfg = cfg
        self.site = site
        self.source = source
        self.zones = sorted(cfg.zones, key=len, reverse=True)
        self.index = Index(cfg.zones, cfg.ttl)
        forward = tuple(z for z in cfg.zones if not z.endswith(("in-addr.arpa.", "ip6.arpa.")))
        opts = Options(forward, cfg.endpoint_pod_names, cfg.noendpoints, cfg.ignore_empty_service)
        filters = Filters(
            namespaces=frozenset(cfg.namespaces),
            labels=selector.parse(cfg.labels) if cfg.labels else None,
            namespace_labels=selector.parse(cfg.namespace_labels) if cfg.namespace_labels else None,
            pods_verified=cfg.pods == "verified",
        )
        app = site.app
        hook = getattr(getattr(app, "metrics", None), "observe_programming", None)
        self.store = Store(self.index, opts, filters, on_programmed=hook)
        self.forward_zones = forward
        specials = ("dns-version.", "ns.dns.", "svc.", "pod.")
        self._special_names = frozenset(cfg.zones) | frozenset(
            f"{label}{'' if z == '.' else z}" for z in cfg.zones for label in specials
        )
        self._soa_serial = -1
        self._soa: dict[str, bytes] = {}
        # Names known not to exist -> their zone, valid for one index generation (clients retry the
        # same missing names, e.g. search-path expansions); bounded, cleared when full.
        self._nx: dict[str, str] = {}
        self._nx_generation = -1
        self._task: asyncio.Task[None] | None = None
        site.on_startup.append(self.start)
        site.on_shutdown.append(self.stop)

    # --- lifecycle -------------------------------------------------------------------------
    def ready(self) -> bool:
        return self.source.synced()

    def adopt(self, old: Kubernetes) -> None:
        """Take over ``old``'s running source, store and index: a reload left this directive
        unchanged, so the watch goes on and nothing is rebuilt. Symmetric, so a failed reload
        hands them back with ``old.adopt(self)``."""
        self.source, self.store, self.index = old.source, old.store, old.index
        self._task, old._task = old._task, None
        self._nx.clear()
        self._nx_generation = -1

    async def start(self) -> None:
        """Start the source; wait up to startup_timeout for the first full sync, as CoreDNS does."""
        if self._task is not None:  # adopted from the previous configuration: already running
            return
        self._task = asyncio.get_running_loop().create_task(self.source.run(self.store))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.startup_timeout
        while not self.source.synced() and loop.time() < deadline and not self._task.done():
            await asyncio.sleep(0.02)
        if self._task.done() and self._task.exception() is not None:
            raise self._task.exception()  # type: ignore[misc]
        if not self.source.synced():
            log.warning("plugin/kubernetes: starting server with unsynced Kubernetes API")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass

    # --- queries ---------------------------------------------------------------------------
    def _zone(self, qname: str) -> str | None:
        for z in self.zones:
            if qname.endswith(z) and (len(qname) == len(z) or qname[-len(z) - 1] == "." or z == "."):
                return z
        return None

    def soa(self, zone: str) -> bytes:
        if self._soa_serial != self.index.serial:
            self._soa = {}
            self._soa_serial = self.index.serial
        soa = self._soa.get(zone)
        if soa is None:
            soa = self._soa[zone] = self.index.soa_rr(zone)
        return soa

    def serve(self, req: Request, call_next: Next) -> Result:
        # The index holds only names inside our zones, so a prepared hit needs no zone match.
        per = self.index.prepared.get(req.qname)
        if per is not None:
            p = per.get(req.qtype)
            if p is not None and not p.target:
                soa = self.soa(self._zone(req.qname) or ".") if p.negative else b""
                return Response(p.build(req, soa), p.rcode, "kubernetes")
        if self._nx_generation != self.index.generation:
            self._nx.clear()
            self._nx_generation = self.index.generation
        zone = self._nx.get(req.qname)
        if zone is not None and req.qtype not in (T_AXFR, T_IXFR):
            return self._respond(req, zone, NXDOMAIN_ANSWER)
        zone = self._zone(req.qname)
        if zone is None:
            return call_next(req)
        return self._slow(req, zone, call_next)

    def _slow(self, req: Request, zone: str, call_next: Next) -> Result:
        qname, qtype = req.qname, req.qtype
        if qtype in (T_AXFR, T_IXFR):
            return Response(reply(req, REFUSED), REFUSED, "kubernetes")
        special = self._special(qname, qtype, zone)
        if special is not None:
            return self._respond(req, zone, special)
        p = self.index.answer(qname, qtype)
        if p is not None:
            if p.target:
                return self._chase(req, zone, p.target)
            return self._respond(req, zone, p)
        pod = self._insecure_pod(qname, qtype, zone)
        if pod is not None:
            return self._respond(req, zone, pod)
        if self.cfg.fallthrough is not None and (
            not self.cfg.fallthrough
            or any(z == "." or qname == z or qname.endswith("." + z) for z in self.cfg.fallthrough)
        ):
            return call_next(req)
        if not self.source.synced():
            return Response(reply(req, SERVFAIL), SERVFAIL, "kubernetes")
        if len(self._nx) >= NX_MEMO:
            self._nx.clear()
        self._nx[qname] = zone  # nothing above depends on the type: the name does not exist
        return self._respond(req, zone, NXDOMAIN_ANSWER)

    def _respond(self, req: Request, zone: str, p: Prepared) -> Response:
        return Response(p.build(req, self.soa(zone)), p.rcode, "kubernetes")

    def _positive(self, records: list[tuple[int, object]], ttl: int | None = None) -> Prepared:
        ttl = self.cfg.ttl if ttl is None else ttl
        body = b"".join(rr(QNAME_PTR, t, ttl, v) for t, v in records)
        return Prepared(NOERROR, len(records), 0, body, False)

    def _special(self, qname: str, qtype: int, zone: str) -> Prepared | None:
        """The apex (SOA, NS), dns-version and ns.dns names, which no object owns."""
        if qname not in self._special_names:  # one set lookup for every ordinary name
            return None
        suffix = "" if zone == "." else zone
        if qname == zone:
            if qtype == T_SOA:
                return self._positive([(T_SOA, self.index.soa_value(zone))], min(self.cfg.ttl, 300))
            if qtype == T_NS:
                return self._positive([(T_NS, f"ns.dns.{suffix}")])
            return NODATA_ANSWER
        if qname == f"dns-version.{suffix}":
            return self._positive([(T_TXT, SPEC_VERSION)], DNS_VERSION_TTL) if qtype == T_TXT else NODATA_ANSWER
        if qname == f"ns.dns.{suffix}":
            own = [r for r in self.index.records(f"kube-dns.kube-system.svc.{suffix}") if r[0] in (T_A, T_AAAA)]
            match = [r for r in own if r[0] == qtype or qtype == T_ANY]
            return self._positive(match) if match else NODATA_ANSWER
        if qname in (f"svc.{suffix}", f"pod.{suffix}"):
            return NODATA_ANSWER if not self.index.exists(qname) else None
        return None

    def _insecure_pod(self, qname: str, qtype: int, zone: str) -> Prepared | None:
        """``a-b-c-d.<ns>.pod.<zone>`` answered from the name itself (``pods insecure``)."""
        if self.cfg.pods != "insecure" or zone not in self.forward_zones:
            return None
        labels = qname[: len(qname) - len(zone)].rstrip(".").split(".")
        if len(labels) != 3 or labels[2] != "pod" or not self.store.namespace_exists(labels[1]):
            return None
        ip = pod_ip_from_label(labels[0])
        if ip is None:
            return None
        return self._positive([(addr_type(ip), ip)]) if qtype in (addr_type(ip), T_ANY) else NODATA_ANSWER

    async def _chase(self, req: Request, zone: str, target: str) -> Response:
        """CNAME (ExternalName) answers carry the target's records, as CoreDNS appends them."""
        from dnslib import CNAME, DNSRecord

        out = DNSRecord.parse(reply(req, NOERROR, aa=True))
        owner, rrs_seen = req.parsed().q.qname, 0
        while target and rrs_seen < MAX_CHASE:
            rrs_seen += 1
            out.add_answer(_dnslib_rr(owner, T_CNAME, self.cfg.ttl, CNAME(target)))
            owner = target
            if self._zone(target) is None:
                out.rr.extend(await self._lookup(req, target))
                break
            p = self.index.answer(target, req.qtype)
            nxt = [v for t, v in self.index.records(target) if t == T_CNAME]
            if p is not None and nxt and req.qtype != T_CNAME:
                target = str(nxt[0])
                continue
            for t, v in self.index.records(target):
                if t == req.qtype:
                    out.add_answer(_dnslib_rr(target, t, self.cfg.ttl, _dnslib_rdata(t, v)))
            break
        return Response(bytes(out.pack()), NOERROR, "kubernetes")

    async def _lookup(self, req: Request, name: str) -> list[Any]:
        """Resolve ``name`` through the whole server (forward, cache...), as CoreDNS's upstream."""
        if self.site.lookup is None:
            return []
        query = struct.pack(">HHHHHH", random.getrandbits(16), RD, 1, 0, 0, 0)
        query += encode_name(name) + struct.pack(">HH", req.qtype, C_IN)
        try:
            sub = parse_query(query, req.proto, req.client)
            resp = await resolve(self.site.lookup(sub))
            scan(resp.wire)
            from dnslib import DNSRecord

            return list(DNSRecord.parse(resp.wire).rr)
        except Exception as e:  # WireError, a broken answer...: the CNAME alone is still an answer
            log.debug("kubernetes: cannot resolve %s: %s", name, e)
            return []


def _dnslib_rdata(rtype: int, value: object) -> Any:
    from dnslib import AAAA, CNAME, PTR, SRV, TXT, A

    match rtype:
        case 1:
            return A(str(value))
        case 28:
            return AAAA(str(value))
        case 5:
            return CNAME(str(value))
        case 12:
            return PTR(str(value))
        case 16:
            return TXT(str(value))
        case 33:
            prio, weight, port, target = value  # type: ignore[misc]
            return SRV(prio, weight, port, target)
    raise ValueError(rtype)


def _dnslib_rr(owner: Any, rtype: int, ttl: int, rd: Any) -> Any:
    from dnslib import RR

    return RR(owner, rtype, C_IN, ttl, rd)


@register("kubernetes")
def setup(d: Directive, site: SiteConfig) -> Kubernetes:
    cfg = parse_config(d, site)
    try:
        source = make_source(cfg)
    except (OSError, ValueError) as e:
        raise d.error(str(e)) from None
    return Kubernetes(cfg, site, source)
