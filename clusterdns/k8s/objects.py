"""Slim, frozen views of the Kubernetes objects DNS needs, made from API dicts.

Everything not used to answer DNS is dropped on the way in, so the index stays small and two
objects that differ only in fields DNS ignores compare equal (no useless re-derivation).
"""

from __future__ import annotations

import ipaddress
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
TRIGGER_TIME_ANNOTATION = "endpoints.kubernetes.io/last-change-trigger-time"


class ObjectError(ValueError):
    """An API object that cannot be used; the message names its kind, namespace and name."""


@dataclass(frozen=True, slots=True)
class Port:
    name: str
    port: int
    protocol: str  # lower-case: tcp, udp, sctp


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    type: str
    cluster_ips: tuple[str, ...]  # empty for a headless service
    external_name: str
    ports: tuple[Port, ...]
    labels: tuple[tuple[str, str], ...]

    @property
    def headless(self) -> bool:
        return not self.cluster_ips and self.type != "ExternalName"


@dataclass(frozen=True, slots=True)
class Endpoint:
    addresses: tuple[str, ...]
    ready: bool
    hostname: str
    pod_name: str


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    endpoints: tuple[Endpoint, ...]
    ports: tuple[Port, ...]
    labels: tuple[tuple[str, str], ...]
    trigger_time: float | None  # from the last-change-trigger-time annotation (metrics only)

    def __eq__(self, other: object) -> bool:  # the trigger time does not change DNS
        if not isinstance(other, EndpointSlice):
            return NotImplemented
        return (self.namespace, self.name, self.service, self.endpoints, self.ports, self.labels) == (
            other.namespace, other.name, other.service, other.endpoints, other.ports, other.labels)

    def __hash__(self) -> int:
        return hash((self.namespace, self.name))


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: tuple[tuple[str, str], ...]

    @property
    def namespace(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Pod:
    namespace: str
    name: str
    ips: tuple[str, ...]
    phase: str
    labels: tuple[tuple[str, str], ...]


Object = Service | EndpointSlice | Namespace | Pod
KINDS = ("Service", "EndpointSlice", "Namespace", "Pod")


def key_of(obj: Object) -> tuple[str, str, str]:
    """(kind, namespace, name): the identity of an object."""
    return (type(obj).__name__, obj.namespace, obj.name)


def describe(raw: Any) -> str:
    """'Kind namespace/name' of a raw object, as far as it can be read (for log lines)."""
    if not isinstance(raw, dict):
        return f"object of type {type(raw).__name__}"
    meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}
    ns, name = meta.get("namespace"), meta.get("name")
    where = f"{ns}/{name}" if ns else str(name)
    return f"{raw.get('kind', '?')} {where}"


def from_dict(raw: Any, kind: str | None = None, *, pod_names: bool = True) -> Object:
    """Convert one API object (a dict from YAML or JSON); raises ObjectError naming it.

    ``pod_names=False`` leaves out the Pod names of endpoints: only ``endpoint_pod_names`` reads
    them, and in a big cluster they are a tenth of the memory.
    """
    try:
        kind = kind or raw["kind"]
        if kind == "EndpointSlice":
            return _endpoint_slice(raw, pod_names)
        parse = _PARSERS[kind]
        return parse(raw)
    except ObjectError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ObjectError(f"{describe(raw)}: {type(e).__name__}: {e}") from None


def _meta(raw: dict[str, Any], namespaced: bool = True) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    meta = raw["metadata"]
    name = meta["name"]
    if not isinstance(name, str) or not name:
        raise ObjectError(f"{describe(raw)}: metadata.name must be a non-empty string")
    ns = meta.get("namespace") or ("default" if namespaced else "")
    if not isinstance(ns, str):
        raise ObjectError(f"{describe(raw)}: metadata.namespace must be a string")
    labels = meta.get("labels") or {}
    if not isinstance(labels, dict):
        raise ObjectError(f"{describe(raw)}: metadata.labels must be a map")
    # namespaces and label keys repeat across thousands of objects: one copy of each
    return sys.intern(ns), name, tuple(sorted((sys.intern(str(k)), str(v)) for k, v in labels.items()))


def _ip(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"IP address must be a string, not {value!r}")
    return str(ipaddress.ip_address(value))


# One tuple per distinct list of ports: most Services and slices share a few ("http" 80/TCP).
_PORTS: dict[tuple[Port, ...], tuple[Port, ...]] = {}
MAX_SHARED_PORTS = 4096


def _shared_ports(ports: tuple[Port, ...]) -> tuple[Port, ...]:
    if len(_PORTS) < MAX_SHARED_PORTS:
        return _PORTS.setdefault(ports, ports)
    return _PORTS.get(ports, ports)


def _ports(items: Any, raw: dict[str, Any]) -> tuple[Port, ...]:
    ports = []
    for p in items or ():
        port = p.get("port")
        if port is None:  # an EndpointSlice port may be unset ("all ports")
            continue
        if not isinstance(port, int) or not 0 < port < 65536:
            raise ObjectError(f"{describe(raw)}: bad port {port!r}")
        ports.append(Port(str(p.get("name") or ""), port, str(p.get("protocol") or "TCP").lower()))
    return _shared_ports(tuple(ports))


def _service(raw: dict[str, Any]) -> Service:
    ns, name, labels = _meta(raw)
    spec = raw.get("spec") or {}
    stype = sys.intern(str(spec.get("type") or "ClusterIP"))
    ips = spec.get("clusterIPs") or ([spec["clusterIP"]] if spec.get("clusterIP") else [])
    if ips and ips[0] == "None":
        ips = []
    external = spec.get("externalName") or ""
    if stype == "ExternalName":
        if not isinstance(external, str) or not external:
            raise ObjectError(f"{describe(raw)}: ExternalName service without spec.externalName")
        ips = []
    return Service(ns, name, stype, tuple(_ip(i) for i in ips), external.lower().rstrip("."),
                   _ports(spec.get("ports"), raw), labels)


def _endpoint_slice(raw: dict[str, Any], pod_names: bool = True) -> EndpointSlice:
    ns, name, labels = _meta(raw)
    service = dict(labels).get(SERVICE_NAME_LABEL, "")
    endpoints = []
    for ep in raw.get("endpoints") or ():
        cond = ep.get("conditions") or {}
        ready = cond.get("ready")
        ref = ep.get("targetRef") or {}
        pod = ref.get("name", "") if ref.get("kind", "Pod") == "Pod" else ""
        endpoints.append(Endpoint(
            tuple(_ip(a) for a in ep["addresses"]),
            ready is None or bool(ready),  # unset means ready, as CoreDNS reads it
            str(ep.get("hostname") or "").lower(),
            pod.lower() if pod_names and isinstance(pod, str) and len(pod) < 64 else "",
        ))
    annotations = raw["metadata"].get("annotations") or {}
    trigger = annotations.get(TRIGGER_TIME_ANNOTATION)
    when = None
    if isinstance(trigger, str):
        try:
            when = datetime.fromisoformat(trigger.replace("Z", "+00:00")).timestamp()
        except ValueError:
            when = None
    return EndpointSlice(ns, name, service, tuple(endpoints), _ports(raw.get("ports"), raw), labels, when)


def _namespace(raw: dict[str, Any]) -> Namespace:
    _, name, labels = _meta(raw, namespaced=False)
    return Namespace(name, labels)


def _pod(raw: dict[str, Any]) -> Pod:
    ns, name, labels = _meta(raw)
    status = raw.get("status") or {}
    ips = [p["ip"] for p in status.get("podIPs") or ()] or ([status["podIP"]] if status.get("podIP") else [])
    return Pod(ns, name, tuple(_ip(i) for i in ips), sys.intern(str(status.get("phase") or "")), labels)


_PARSERS = {"Service": _service, "Namespace": _namespace, "Pod": _pod}
