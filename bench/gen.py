"""The synthetic cluster: N Services as Kubernetes manifests, and the same names for the other servers.

Service ``i`` is ``svc-<i>.ns-<i mod namespaces>.svc.cluster.local.``; every tenth one is headless, so its
name answers with its endpoints' addresses instead of a ClusterIP. Everything is a pure function of
the counts (and a seed for query order), so two runs generate identical files.
"""

from __future__ import annotations

import ipaddress
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ZONE = "cluster.local."
HEADLESS_EVERY = 10  # every tenth Service is headless
CLUSTER_IP_BASE = int(ipaddress.IPv4Address("10.96.0.10"))  # inside the usual 10.96.0.0/12
MOVED_IP_BASE = int(ipaddress.IPv4Address("10.112.0.10"))  # where the scale test moves a ClusterIP to
POD_IP_BASE = int(ipaddress.IPv4Address("10.128.0.10"))  # a /9: room for 8M endpoints
EXTERNAL_IP_BASE = int(ipaddress.IPv4Address("192.0.2.0"))  # TEST-NET-1: never routed, only named


@dataclass(frozen=True)
class Cluster:
    """The shape of the synthetic cluster."""

    services: int = 1000
    endpoints_per_service: int = 3

    @property
    def namespaces(self) -> int:
        return max(1, self.services // 100)

    def namespace(self, i: int) -> str:
        return f"ns-{i % self.namespaces}"

    def fqdn(self, i: int) -> str:
        return f"svc-{i}.{self.namespace(i)}.svc.{ZONE}"

    def headless(self, i: int) -> bool:
        return i % HEADLESS_EVERY == HEADLESS_EVERY - 1

    def cluster_ip(self, i: int, moved: bool = False) -> str:
        return str(ipaddress.IPv4Address((MOVED_IP_BASE if moved else CLUSTER_IP_BASE) + i))

    def endpoint_ips(self, i: int) -> list[str]:
        k = self.endpoints_per_service
        return [str(ipaddress.IPv4Address(POD_IP_BASE + i * k + j)) for j in range(k)]

    def pod_name(self, i: int, j: int) -> str:
        """The Pod behind endpoint ``j`` of Service ``i`` (a Deployment's name-hash-suffix shape)."""
        return f"svc-{i}-7d4b9c8f6d-{j:05d}"

    def addresses(self, i: int) -> list[str]:
        """What an A query for Service ``i`` answers."""
        return self.endpoint_ips(i) if self.headless(i) else [self.cluster_ip(i)]

    @property
    def endpoints(self) -> int:
        return self.services * self.endpoints_per_service


def service_doc(c: Cluster, i: int, moved: bool = False) -> dict[str, Any]:
    """Service ``i`` as the API serves it (``moved``: with another ClusterIP, for update timing)."""
    ip = "None" if c.headless(i) else c.cluster_ip(i, moved)
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": f"svc-{i}", "namespace": c.namespace(i)},
        "spec": {"type": "ClusterIP", "clusterIP": ip, "selector": {"app": f"svc-{i}"},
                 "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
    }


def slice_doc(c: Cluster, i: int) -> dict[str, Any]:
    """The EndpointSlice of Service ``i``: ``endpoints_per_service`` ready endpoints, each with the
    node, zone and Pod reference a real one carries."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": f"svc-{i}-x7k2p", "namespace": c.namespace(i),
                     "labels": {"kubernetes.io/service-name": f"svc-{i}"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [ip], "conditions": {"ready": True, "serving": True, "terminating": False},
                       "nodeName": f"node-{j % 50}", "zone": "zone-a",
                       "targetRef": {"kind": "Pod", "namespace": c.namespace(i), "name": c.pod_name(i, j),
                                     "uid": f"00000000-0000-4000-8000-{i:06d}{j:06d}"}}
                      for j, ip in enumerate(c.endpoint_ips(i))],
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
    }


def documents(c: Cluster) -> Iterator[dict[str, Any]]:
    """Namespaces, then each Service followed by its EndpointSlice (lazily: 100k Services fit)."""
    for n in range(c.namespaces):
        yield {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"ns-{n}"}}
    for i in range(c.services):
        yield service_doc(c, i)
        if c.endpoints_per_service:
            yield slice_doc(c, i)


def write_manifests(c: Cluster, path: Path) -> Path:
    """All objects as one multi-document YAML file (what ``objects PATH`` reads)."""
    with path.open("w") as f:
        yaml.safe_dump_all(documents(c), f, sort_keys=False)
    return path


def hosts_lines(c: Cluster) -> list[str]:
    """dnsmasq ``--addn-hosts`` lines: one per address, so a headless name answers every endpoint."""
    return [f"{ip} {c.fqdn(i).rstrip('.')}" for i in range(c.services) for ip in c.addresses(i)]


def unbound_local_data(c: Cluster) -> list[str]:
    """unbound ``local-data`` records for the same names (TTL 5, as clusterdns answers)."""
    return [f"{c.fqdn(i)} 5 IN A {ip}" for i in range(c.services) for ip in c.addresses(i)]


def external_name(i: int) -> str:
    """A name outside the cluster, served by the loopback origin for the ``forward`` mode."""
    return f"ext-{i}.bench.test."


def external_hosts_lines(count: int) -> list[str]:
    return [f"{ipaddress.IPv4Address(EXTERNAL_IP_BASE + i % 256)} {external_name(i).rstrip('.')}"
            for i in range(count)]


def missing_names(c: Cluster, count: int, rng: random.Random) -> list[str]:
    """Names under the zone that do not exist, the way a pod's search path makes them (ndots:5)."""
    out = []
    for n in range(count):
        i = rng.randrange(c.services)
        ns = c.namespace(i)
        # half search-path expansions of "svc-i.ns", half Services that were never created
        out.append(f"svc-{i}.{ns}.{ns}.svc.{ZONE}" if n % 2 else f"gone-{i}.{ns}.svc.{ZONE}")
    return out


def query_lines(names: list[str], qtype: str = "A") -> list[str]:
    """dnsperf's input format: ``NAME TYPE`` per line."""
    return [f"{n} {qtype}" for n in names]


def cluster_queries(c: Cluster, rng: random.Random) -> list[str]:
    """Every Service name once, in a shuffled order."""
    names = [c.fqdn(i) for i in range(c.services)]
    rng.shuffle(names)
    return query_lines(names)


def nxdomain_queries(c: Cluster, rng: random.Random, share: float = 0.10) -> list[str]:
    """Service names with ``share`` of nonexistent names mixed in."""
    names = [c.fqdn(i) for i in range(c.services)]
    missing = round(len(names) * share / (1 - share))
    names += missing_names(c, missing, rng)
    rng.shuffle(names)
    return query_lines(names)


def forward_queries(count: int, rng: random.Random) -> list[str]:
    names = [external_name(i) for i in range(count)]
    rng.shuffle(names)
    return query_lines(names)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path
