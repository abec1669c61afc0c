"""The kubernetes plugin's options, through the real process."""

from __future__ import annotations

import dns.rcode
import pytest

from tests.conftest import StartServer
from tests.procs import Server, answers

pytestmark = pytest.mark.e2e

OBJECTS = """\
apiVersion: v1
kind: List
items:
  - kind: Namespace
    metadata: {name: empty}
  - kind: Service
    metadata: {name: web, namespace: team-a, labels: {tier: front}}
    spec: {clusterIP: 10.0.1.1, ports: [{name: http, port: 80}]}
  - kind: Service
    metadata: {name: db, namespace: team-b, labels: {tier: back}}
    spec: {clusterIP: 10.0.1.2}
  - kind: Service
    metadata: {name: lonely, namespace: team-a, labels: {tier: front}}
    spec: {clusterIP: 10.0.1.3}
  - kind: Service
    metadata: {name: hl, namespace: team-a, labels: {tier: front}}
    spec: {clusterIP: None}
  - kind: EndpointSlice
    metadata: {name: web-1, namespace: team-a, labels: {kubernetes.io/service-name: web, tier: front}}
    endpoints:
      - {addresses: [10.2.0.1], targetRef: {kind: Pod, name: web-7d9f}}
  - kind: EndpointSlice
    metadata: {name: hl-1, namespace: team-a, labels: {kubernetes.io/service-name: hl, tier: front}}
    endpoints:
      - {addresses: [10.2.0.5], targetRef: {kind: Pod, name: hl-0}}
  - kind: Pod
    metadata: {name: web-7d9f, namespace: team-a, labels: {tier: front}}
    status: {phase: Running, podIP: 10.2.0.1}
  - kind: Pod
    metadata: {name: done, namespace: team-a, labels: {tier: front}}
    status: {phase: Succeeded, podIP: 10.2.0.9}
"""


def serve(start_server: StartServer, options: str, zones: str = "cluster.local in-addr.arpa") -> Server:
    corefile = f".:{{port}} {{\n  bind 127.0.0.1\n  kubernetes {zones} {{\n    objects o.yaml\n{options}\n  }}\n}}\n"
    return start_server(corefile, files={"o.yaml": OBJECTS})


def rcode(srv: Server, name: str, rdtype: str = "A") -> int:
    return srv.query(name, rdtype).rcode()


def test_pods_verified_answers_only_running_pods(start_server: StartServer) -> None:
    srv = serve(start_server, "    pods verified")
    assert answers(srv.query("10-2-0-1.team-a.pod.cluster.local.")) == {"10.2.0.1"}
    assert rcode(srv, "10-2-0-9.team-a.pod.cluster.local.") == dns.rcode.NXDOMAIN  # Succeeded
    assert rcode(srv, "10-2-0-7.team-a.pod.cluster.local.") == dns.rcode.NXDOMAIN  # no such pod


def test_pods_disabled_by_default(start_server: StartServer) -> None:
    srv = serve(start_server, "")
    assert rcode(srv, "10-2-0-1.team-a.pod.cluster.local.") == dns.rcode.NXDOMAIN


def test_namespaces_option_hides_others(start_server: StartServer) -> None:
    srv = serve(start_server, "    namespaces team-a")
    assert answers(srv.query("web.team-a.svc.cluster.local.")) == {"10.0.1.1"}
    assert rcode(srv, "db.team-b.svc.cluster.local.") == dns.rcode.NXDOMAIN
    assert rcode(srv, "team-b.svc.cluster.local.") == dns.rcode.NXDOMAIN


def test_labels_option_selects_services(start_server: StartServer) -> None:
    srv = serve(start_server, "    labels tier=back")
    assert answers(srv.query("db.team-b.svc.cluster.local.")) == {"10.0.1.2"}
    assert rcode(srv, "web.team-a.svc.cluster.local.") == dns.rcode.NXDOMAIN


def test_existing_but_empty_namespace_is_nodata(start_server: StartServer) -> None:
    srv = serve(start_server, "")
    r = srv.query("empty.svc.cluster.local.")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer


def test_ignore_empty_service(start_server: StartServer) -> None:
    srv = serve(start_server, "    ignore empty_service")
    assert rcode(srv, "lonely.team-a.svc.cluster.local.") == dns.rcode.NXDOMAIN
    assert answers(srv.query("web.team-a.svc.cluster.local.")) == {"10.0.1.1"}


def test_endpoint_pod_names(start_server: StartServer) -> None:
    srv = serve(start_server, "    endpoint_pod_names")
    assert answers(srv.query("hl-0.hl.team-a.svc.cluster.local.")) == {"10.2.0.5"}
    assert answers(srv.query("5.0.2.10.in-addr.arpa.", "PTR")) == {"hl-0.hl.team-a.svc.cluster.local."}


def test_noendpoints(start_server: StartServer) -> None:
    srv = serve(start_server, "    noendpoints")
    assert rcode(srv, "hl.team-a.svc.cluster.local.") == dns.rcode.NXDOMAIN
    assert answers(srv.query("web.team-a.svc.cluster.local.")) == {"10.0.1.1"}


def test_ttl_option(start_server: StartServer) -> None:
    srv = serve(start_server, "    ttl 30")
    assert srv.query("web.team-a.svc.cluster.local.").answer[0].ttl == 30


def test_fallthrough_hands_nxdomain_to_the_next_plugin(start_server: StartServer) -> None:
    # nothing follows kubernetes here, so a fallen-through name reaches the end of the chain: SERVFAIL
    srv = serve(start_server, "    fallthrough in-addr.arpa")
    assert rcode(srv, "9.9.9.10.in-addr.arpa.", "PTR") == dns.rcode.SERVFAIL
    assert rcode(srv, "nope.team-a.svc.cluster.local.") == dns.rcode.NXDOMAIN


def test_reverse_zone_not_served_without_it(start_server: StartServer) -> None:
    srv = serve(start_server, "", zones="cluster.local")
    # PTR names are outside the plugin's zones: the end of the chain answers
    assert rcode(srv, "1.1.0.10.in-addr.arpa.", "PTR") == dns.rcode.SERVFAIL


def test_upstream_option_is_accepted_with_a_warning(start_server: StartServer) -> None:
    srv = serve(start_server, "    upstream")
    assert "upstream is deprecated" in srv.wait_for_line("upstream")


def test_namespace_labels_option(start_server: StartServer) -> None:
    objects = OBJECTS + (
        "  - kind: Namespace\n    metadata: {name: team-a, labels: {exposed: 'yes'}}\n"
        "  - kind: Namespace\n    metadata: {name: team-b}\n"
    )
    corefile = ".:{port} {\n  bind 127.0.0.1\n  kubernetes cluster.local {\n    objects o.yaml\n"
    corefile += "    namespace_labels exposed=yes\n  }\n}\n"
    srv = start_server(corefile, files={"o.yaml": objects})
    assert answers(srv.query("web.team-a.svc.cluster.local.")) == {"10.0.1.1"}
    assert rcode(srv, "db.team-b.svc.cluster.local.") == dns.rcode.NXDOMAIN
