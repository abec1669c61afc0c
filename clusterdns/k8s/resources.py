"""The Kubernetes resources clusterdns reads, and the only verbs it needs on them.

The API source watches exactly these, and manifests/ grants exactly these (a test derives the
ClusterRole's rules from this table so the two cannot drift apart).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Resource:
    """One watched resource: its API group, version, plural, kind and cluster-wide list path."""

    group: str
    version: str
    plural: str
    kind: str

    @property
    def path(self) -> str:
        """The cluster-wide collection path, e.g. ``/apis/discovery.k8s.io/v1/endpointslices``."""
        if self.group:
            return f"/apis/{self.group}/{self.version}/{self.plural}"
        return f"/api/{self.version}/{self.plural}"


SERVICES = Resource("", "v1", "services", "Service")
ENDPOINTSLICES = Resource("discovery.k8s.io", "v1", "endpointslices", "EndpointSlice")
NAMESPACES = Resource("", "v1", "namespaces", "Namespace")
PODS = Resource("", "v1", "pods", "Pod")

# Pods are always granted, although only `pods verified` watches them, so that switching the
# ConfigMap to `pods verified` cannot leave the server never-ready.
WATCHED: tuple[Resource, ...] = (SERVICES, ENDPOINTSLICES, NAMESPACES, PODS)
VERBS: tuple[str, ...] = ("list", "watch")
