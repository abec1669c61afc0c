"""The container's command as the image runs it: ``clusterdns -conf <the ConfigMap's Corefile>``,
changed only where a test on this machine must (unprivileged ports on loopback, a kubeconfig for
the test API server, forward to a loopback upstream), then dig a Service, /health, /ready, /metrics.
"""

from __future__ import annotations

import re
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import dns.rcode
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.k8sapi import FakeApiServer
from tests.procs import ROOT, Server, answers, free_port
from tests.upstreams import Upstream, dnsmasq

pytestmark = pytest.mark.e2e


def deployment_args() -> list[str]:
    docs = yaml.safe_load_all((ROOT / "manifests" / "deployment.yaml").read_text())
    dep = next(d for d in docs if d and d.get("kind") == "Deployment")
    container = dep["spec"]["template"]["spec"]["containers"][0]
    return list(container["args"])


def configmap_corefile() -> str:
    """The Corefile the ConfigMap carries (the generator's source, a byte copy of Corefile.example)."""
    return (ROOT / "manifests" / "Corefile").read_text()


def adapt(text: str, dns_port: int, http: dict[str, int], kubeconfig: str, upstream: int) -> str:
    """The only edits: ports, a kubeconfig line, the forward target."""
    text = text.replace(".:53 {", f".:{dns_port} {{\n    bind 127.0.0.1", 1)
    text = re.sub(r"(?m)^(\s*)health(\s*\{)", rf"\1health 127.0.0.1:{http['health']}\2", text)
    text = re.sub(r"(?m)^(\s*)ready\s*$", rf"\1ready 127.0.0.1:{http['ready']}", text)
    text = re.sub(r"(?m)^(\s*)prometheus :9153\s*$", rf"\1prometheus 127.0.0.1:{http['metrics']}", text)
    text = re.sub(r"(?m)^(\s*)(kubernetes cluster\.local .*\{)$", rf"\1\2\n\1    kubeconfig {kubeconfig}", text)
    text = text.replace("forward . /etc/resolv.conf", f"forward . 127.0.0.1:{upstream}")
    return text


@pytest.fixture
def cluster() -> Iterator[FakeApiServer]:
    api = FakeApiServer()
    api.start()
    api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}})
    api.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "nginx-service", "namespace": "default"},
               "spec": {"type": "NodePort", "clusterIP": "10.0.0.228", "clusterIPs": ["10.0.0.228"],
                        "ports": [{"name": "http", "port": 80, "protocol": "TCP", "nodePort": 41583}]}})
    try:
        yield api
    finally:
        api.stop()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    up = dnsmasq({"www.example": ["192.0.2.7"]})
    try:
        yield up
    finally:
        up.stop()


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_the_images_command_with_the_configmaps_corefile(tmp_path: Path, cluster: FakeApiServer,
                                                          upstream: Upstream) -> None:
    args = deployment_args()
    assert args == ["-conf", "/etc/coredns/Corefile"]
    http = {"health": free_port(), "ready": free_port(), "metrics": free_port()}
    port = free_port()
    kubeconfig = cluster.write_kubeconfig(tmp_path / "kubeconfig")
    corefile = tmp_path / "Corefile"
    corefile.write_text(adapt(configmap_corefile(), port, http, kubeconfig, upstream.port))
    srv = Server(corefile, port)  # `-conf PATH` exactly as the Deployment passes it (plus -dns.port)
    try:
        srv.wait_ready()
        out = srv.dig("nginx-service.default.svc.cluster.local", "+short")
        assert out.split() == ["10.0.0.228"]
        assert answers(srv.query("www.example.")) == {"192.0.2.7"}  # forward
        assert srv.query("nope.default.svc.cluster.local.").rcode() == dns.rcode.NXDOMAIN
        assert get(http["health"], "/health") == (200, "OK")
        assert get(http["ready"], "/ready")[0] == 200
        status, text = get(http["metrics"], "/metrics")
        names = {f.name for f in text_string_to_metric_families(text)}
        assert status == 200 and {"coredns_dns_requests", "coredns_build_info", "coredns_cache_requests"} <= names
        cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "late", "namespace": "default"},
                       "spec": {"clusterIP": "10.0.0.99", "clusterIPs": ["10.0.0.99"]}})
        for _ in range(40):  # cache is disabled for cluster.local: the new Service shows at once
            if answers(srv.query("late.default.svc.cluster.local.")) == {"10.0.0.99"}:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("a new Service did not resolve within 2 s")
    finally:
        assert srv.stop(timeout=15) == 0
