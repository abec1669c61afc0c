"""The loadbalance plugin in the real process: a headless Service's endpoints come back complete, in
changing order, whether answered by the kubernetes plugin or from the cache below loadbalance."""

from __future__ import annotations

import pytest

from tests.conftest import StartServer
from tests.procs import Server

pytestmark = pytest.mark.e2e

IPS = [f"10.7.0.{i}" for i in range(1, 6)]
OBJECTS = """\
apiVersion: v1
kind: Namespace
metadata: {name: default}
---
apiVersion: v1
kind: Service
metadata: {name: web-headless, namespace: default}
spec: {clusterIP: None, ports: [{name: http, port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: web-headless-1
  namespace: default
  labels: {kubernetes.io/service-name: web-headless}
addressType: IPv4
ports: [{name: http, port: 80, protocol: TCP}]
endpoints:
""" + "".join(f"  - addresses: ['{ip}']\n    conditions: {{ready: true}}\n" for ip in IPS)

COREFILE = """\
.:{port} {
    bind 127.0.0.1
    errors
    kubernetes cluster.local {
        objects objects.yaml
    }
    %s
}
"""
NAME = "web-headless.default.svc.cluster.local."


def orders(srv: Server, n: int = 40, tcp: bool = False) -> list[tuple[str, ...]]:
    out = []
    for _ in range(n):
        r = srv.query(NAME, tcp=tcp)
        assert len(r.answer) == 1
        out.append(tuple(rd.address for rd in r.answer[0]))
    return out


@pytest.mark.parametrize("plugins", ["loadbalance", "loadbalance round_robin\n    cache 30"], ids=["plain", "cached"])
def test_headless_records_all_there_in_changing_order(start_server: StartServer, plugins: str) -> None:
    srv = start_server(COREFILE % plugins, {"objects.yaml": OBJECTS})
    seen = orders(srv) + orders(srv, 10, tcp=True)
    assert all(sorted(o) == sorted(IPS) for o in seen)
    assert len(set(seen)) > 10  # 120 orders possible; 50 draws give many different ones
    assert len({o[0] for o in seen}) == len(IPS)  # every endpoint comes first at some point


def test_without_loadbalance_the_order_is_fixed(start_server: StartServer) -> None:
    srv = start_server(COREFILE % "", {"objects.yaml": OBJECTS})
    assert len(set(orders(srv, 10))) == 1
