"""The kubernetes plugin through the real process, with dig and dnspython, rule by rule."""

from __future__ import annotations

import dns.flags
import dns.rcode
import dns.rdatatype
import pytest

from tests.procs import Server, answers

pytestmark = pytest.mark.e2e
NGINX = "nginx-service.default.svc.cluster.local."
HEADLESS = "nginx-headless.default.svc.cluster.local."
POD_IPS = {"172.17.66.2", "172.17.66.4", "172.17.66.5"}


def test_dig_answers_the_seed_service(demo: Server) -> None:
    out = demo.dig("nginx-service.default.svc.cluster.local", "+noall", "+answer", "+comments")
    assert "10.0.0.228" in out and "status: NOERROR" in out
    assert "flags: qr aa rd;" in out  # authoritative; RA unset as CoreDNS (dig warns about recursion)


def test_cluster_ip_a_with_ttl_and_authority_flag(demo: Server) -> None:
    r = demo.query(NGINX)
    assert r.rcode() == dns.rcode.NOERROR and r.flags & dns.flags.AA and not r.flags & dns.flags.RA
    assert answers(r) == {"10.0.0.228"}
    assert r.answer[0].ttl == 5


def test_case_insensitive_and_case_echoed(demo: Server) -> None:
    r = demo.query("NGINX-Service.Default.SVC.cluster.LOCAL.")
    assert answers(r) == {"10.0.0.228"}
    assert r.question[0].name.to_text() == "NGINX-Service.Default.SVC.cluster.LOCAL."
    assert r.answer[0].name.to_text() == "NGINX-Service.Default.SVC.cluster.LOCAL."


def test_tcp_answers_too(demo: Server) -> None:
    assert answers(demo.query("kubernetes.default.svc.cluster.local.", tcp=True)) == {"10.0.0.1"}


def test_nodata_for_other_type_of_existing_name(demo: Server) -> None:
    r = demo.query(NGINX, "AAAA")
    assert r.rcode() == dns.rcode.NOERROR and not r.answer
    assert r.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize(
    "name",
    [
        "svc.cluster.local.",
        "default.svc.cluster.local.",
        "kube-system.svc.cluster.local.",
        "_tcp.nginx-headless.default.svc.cluster.local.",
        "pod.cluster.local.",
    ],
)
def test_empty_non_terminals_are_nodata(demo: Server, name: str) -> None:
    r = demo.query(name)
    assert r.rcode() == dns.rcode.NOERROR and not r.answer and r.authority[0].rdtype == dns.rdatatype.SOA


@pytest.mark.parametrize(
    "name",
    [
        "nope.default.svc.cluster.local.",
        "nginx-service.nons.svc.cluster.local.",
        "x.nginx-service.default.svc.cluster.local.",
        "www.cluster.local.",
        "_http._udp.nginx-service.default.svc.cluster.local.",
    ],
)
def test_nxdomain_with_soa(demo: Server, name: str) -> None:
    r = demo.query(name)
    assert r.rcode() == dns.rcode.NXDOMAIN
    soa = r.authority[0]
    assert soa.rdtype == dns.rdatatype.SOA and soa.name.to_text() == "cluster.local."
    rd = soa[0]
    assert rd.mname.to_text() == "ns.dns.cluster.local." and rd.rname.to_text() == "hostmaster.cluster.local."
    assert (rd.refresh, rd.retry, rd.expire, rd.minimum) == (7200, 1800, 86400, 5)


def test_headless_returns_every_ready_endpoint(demo: Server) -> None:
    assert answers(demo.query(HEADLESS)) == POD_IPS
    assert answers(demo.query("web-0." + HEADLESS)) == {"172.17.66.2"}
    assert answers(demo.query("172-17-66-4." + HEADLESS)) == {"172.17.66.4"}


def test_srv_for_cluster_ip_targets_the_service_with_glue(demo: Server) -> None:
    r = demo.query("_http._tcp." + NGINX, "SRV")
    assert answers(r) == {f"0 100 80 {NGINX}"}
    assert {x.to_text() for rr in r.additional for x in rr} == {"10.0.0.228"}


def test_srv_for_headless_targets_each_endpoint(demo: Server) -> None:
    r = demo.query("_http._tcp." + HEADLESS, "SRV")
    targets = {a.split()[3] for a in answers(r)}
    assert targets == {"web-0." + HEADLESS, "172-17-66-4." + HEADLESS, "172-17-66-5." + HEADLESS}
    assert all(a.startswith("0 33 80 ") for a in answers(r))
    glue = {rr.name.to_text(): {x.to_text() for x in rr} for rr in r.additional}
    assert glue["web-0." + HEADLESS] == {"172.17.66.2"}


def test_ptr_for_cluster_ip_and_endpoint(demo: Server) -> None:
    assert answers(demo.query("228.0.0.10.in-addr.arpa.", "PTR")) == {NGINX}
    assert "web-0." + HEADLESS in answers(demo.query("2.66.17.172.in-addr.arpa.", "PTR"))
    out = demo.dig("-x", "10.0.0.2", "+short")
    assert out.strip() == "kube-dns.kube-system.svc.cluster.local."


def test_external_name_is_a_cname(demo: Server) -> None:
    r = demo.query("external-db.default.svc.cluster.local.")
    assert r.rcode() == dns.rcode.NOERROR
    assert answers(r, "CNAME") == {"db.example.com."}


def test_pods_insecure(demo: Server) -> None:
    assert answers(demo.query("172-17-66-9.default.pod.cluster.local.")) == {"172.17.66.9"}
    assert demo.query("172-17-66-9.nons.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN
    assert demo.query("not-an-ip.default.pod.cluster.local.").rcode() == dns.rcode.NXDOMAIN


def test_dns_version_and_apex(demo: Server) -> None:
    r = demo.query("dns-version.cluster.local.", "TXT")
    assert answers(r) == {'"1.1.0"'}
    soa = demo.query("cluster.local.", "SOA")
    assert soa.answer[0].rdtype == dns.rdatatype.SOA
    assert answers(demo.query("cluster.local.", "NS")) == {"ns.dns.cluster.local."}
    assert answers(demo.query("ns.dns.cluster.local.")) == {"10.0.0.2"}


def test_axfr_refused_and_other_class_refused(demo: Server) -> None:
    r = demo.query("cluster.local.", "AXFR", tcp=True)
    assert r.rcode() == dns.rcode.REFUSED
    r = demo.query(NGINX, "A", rdclass="CH")
    assert r.rcode() == dns.rcode.REFUSED


def test_edns_is_echoed(demo: Server) -> None:
    r = demo.query(NGINX, use_edns=0, payload=1232)
    assert r.edns == 0 and answers(r) == {"10.0.0.228"}
