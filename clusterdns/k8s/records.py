"""Pure derivation: Kubernetes objects -> DNS records, per the Kubernetes DNS-Based Service
Discovery specification 1.1.0, with CoreDNS's behaviour where the spec is silent.

Every function returns ``{name: [(rtype, value), ...]}``; a name mapped to ``[]`` exists with no
records (it answers NODATA). Names are lower-case and fully qualified.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from clusterdns.k8s.objects import Endpoint, EndpointSlice, Namespace, Pod, Service
from clusterdns.wire import T_A, T_AAAA, T_CNAME, T_PTR, T_SRV

Records = dict[str, list[tuple[int, object]]]

POD_GONE_PHASES = ("Succeeded", "Failed", "Unknown")


@dataclass(frozen=True, slots=True)
class Options:
    """What the kubernetes plugin's options change in the records."""

    zones: tuple[str, ...] = ("cluster.local.",)  # forward zones; zones[0] is the PTR target zone
    endpoint_pod_names: bool = False
    noendpoints: bool = False
    ignore_empty_service: bool = False


def addr_type(ip: str) -> int:
    return T_AAAA if ":" in ip else T_A


def reverse_name(ip: str) -> str:
    """1.2.3.4 -> 4.3.2.1.in-addr.arpa. (``ip`` as ``str(ip_address)`` spells it)."""
    if ":" not in ip:
        return ".".join(reversed(ip.split("."))) + ".in-addr.arpa."
    return ".".join(reversed(f"{int(ipaddress.IPv6Address(ip)):032x}")) + ".ip6.arpa."


_NIBBLES = frozenset("0123456789abcdef")


def _octet(label: str) -> bool:
    return label.isascii() and label.isdigit() and (label == "0" or label[0] != "0") and int(label) < 256


def address_of(name: str) -> str | None:
    """The address a full reverse name stands for (4.3.2.1.in-addr.arpa. -> 1.2.3.4), spelt as
    ``str(ip_address)`` spells it; None for any other name, partial or not in canonical form."""
    if name.endswith(".in-addr.arpa."):
        labels = name[: -len(".in-addr.arpa.")].split(".")
        if len(labels) == 4 and all(_octet(x) for x in labels):
            return ".".join(reversed(labels))
    elif name.endswith(".ip6.arpa."):
        nibbles = name[: -len(".ip6.arpa.")].split(".")
        if len(nibbles) == 32 and all(len(x) == 1 and x in _NIBBLES for x in nibbles):
            return str(ipaddress.IPv6Address(int("".join(reversed(nibbles)), 16)))
    return None


def dashed(ip: str) -> str:
    """An IP as one DNS label: 172-17-66-2, 2001-db8--1 (a leading or trailing dash gets a 0)."""
    label = ip.replace(".", "-").replace(":", "-")
    if label.startswith("-"):
        label = "0" + label
    if label.endswith("-"):
        label += "0"
    return label


def endpoint_label(ep: Endpoint, addr: str, opts: Options) -> str:
    """hostname, else (with endpoint_pod_names) the pod's name, else the dashed IP."""
    if ep.hostname:
        return ep.hostname
    if opts.endpoint_pod_names and ep.pod_name:
        return ep.pod_name
    return dashed(addr)


def _add(recs: Records, name: str, rtype: int, value: object) -> None:
    rrs = recs.setdefault(name, [])
    if (rtype, value) not in rrs:
        rrs.append((rtype, value))


def _srv(recs: Records, name: str, entries: list[tuple[int, str]]) -> None:
    """An SRV RRset: priority 0, weight floor(100/N) (at least 1), as CoreDNS writes it."""
    unique = sorted(set(entries))
    weight = max(1, 100 // len(unique)) if unique else 0
    for port, target in unique:
        _add(recs, name, T_SRV, (0, weight, port, target))


def service_records(svc: Service, slices: Iterable[EndpointSlice], opts: Options) -> Records:
    """All records one Service owns, given its EndpointSlices."""
    recs: Records = {}
    slices = [] if opts.noendpoints else list(slices)
    ready = [(ep, addr, sl) for sl in slices for ep in sl.endpoints if ep.ready for addr in ep.addresses]
    if svc.type == "ExternalName":
        for zone in opts.zones:
            _add(recs, f"{svc.name}.{svc.namespace}.svc.{zone}", T_CNAME, svc.external_name + ".")
        return recs
    if svc.headless and not ready:
        return recs  # no ready endpoint: the name does not exist (NXDOMAIN)
    if not svc.headless and opts.ignore_empty_service and not ready:
        return recs
    labels = [endpoint_label(ep, addr, opts) for ep, addr, _sl in ready]
    for zi, zone in enumerate(opts.zones):
        base = f"{svc.name}.{svc.namespace}.svc.{zone}"
        # one string per endpoint name, shared by its A record, SRV targets and PTR target
        targets = [f"{label}.{base}" for label in labels]
        srv_all: list[tuple[int, str]] = []
        srv_named: dict[str, list[tuple[int, str]]] = {}
        if svc.headless:
            for (_ep, addr, sl), target in zip(ready, targets, strict=True):
                _add(recs, base, addr_type(addr), addr)
                for p in sl.ports:
                    srv_all.append((p.port, target))
                    if p.name:
                        srv_named.setdefault(f"_{p.name}._{p.protocol}.{base}", []).append((p.port, target))
        else:
            for ip in svc.cluster_ips:
                _add(recs, base, addr_type(ip), ip)
            for p in svc.ports:
                srv_all.append((p.port, base))
                if p.name:
                    srv_named.setdefault(f"_{p.name}._{p.protocol}.{base}", []).append((p.port, base))
        _srv(recs, base, srv_all)
        for name, entries in srv_named.items():
            _srv(recs, name, entries)
        for (_ep, addr, _sl), target in zip(ready, targets, strict=True):
            _add(recs, target, addr_type(addr), addr)
        if zi == 0:  # PTRs point into the primary zone
            for ip in svc.cluster_ips:
                _add(recs, reverse_name(ip), T_PTR, base)
            for (_ep, addr, _sl), target in zip(ready, targets, strict=True):
                _add(recs, reverse_name(addr), T_PTR, target)
    return recs


def namespace_records(ns: Namespace | str, opts: Options) -> Records:
    """An existing namespace: ``<ns>.svc.<zone>`` (and ``<ns>.pod.<zone>``) exist, with no records."""
    name = ns if isinstance(ns, str) else ns.name
    recs: Records = {}
    for zone in opts.zones:
        recs[f"{name}.svc.{zone}"] = []
        recs[f"{name}.pod.{zone}"] = []
    return recs


def pod_records(pod: Pod, opts: Options) -> Records:
    """``a-b-c-d.<ns>.pod.<zone>`` for a running Pod (served with ``pods verified``)."""
    recs: Records = {}
    if pod.phase in POD_GONE_PHASES:
        return recs
    for zone in opts.zones:
        for ip in pod.ips:
            _add(recs, f"{dashed(ip)}.{pod.namespace}.pod.{zone}", addr_type(ip), ip)
    return recs


def pod_ip_from_label(label: str) -> str | None:
    """The IP a dashed pod label stands for (``pods insecure``), or None if it is not one."""
    for candidate in (label.replace("-", "."), label.replace("-", ":")):
        try:
            return str(ipaddress.ip_address(candidate))
        except ValueError:
            continue
    return None
