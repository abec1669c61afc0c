"""Record derivation, rule by rule (spec 1.1.0 and CoreDNS where the spec is silent)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clusterdns.k8s import records
from clusterdns.k8s.objects import ObjectError, from_dict
from clusterdns.k8s.records import Options, address_of, dashed, pod_ip_from_label, reverse_name
from clusterdns.wire import T_A, T_AAAA, T_CNAME, T_PTR, T_SRV

OPTS = Options(("cluster.local.",))


def svc(name: str = "web", ns: str = "default", **spec: object) -> dict:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns}, "spec": spec}


def eps(service: str = "web", ns: str = "default", endpoints: list | None = None, ports: list | None = None) -> dict:
    return {
        "kind": "EndpointSlice",
        "metadata": {"name": f"{service}-abc", "namespace": ns, "labels": {"kubernetes.io/service-name": service}},
        "endpoints": endpoints or [],
        "ports": ports or [],
    }


def derive(service: dict, *slices: dict, opts: Options = OPTS) -> records.Records:
    return records.service_records(from_dict(service), [from_dict(s) for s in slices], opts)  # type: ignore[arg-type]


def test_cluster_ip_a_srv_ptr() -> None:
    r = derive(svc(clusterIP="10.0.0.228", ports=[{"name": "http", "port": 80}]))
    assert r["web.default.svc.cluster.local."] == [
        (T_A, "10.0.0.228"),
        (T_SRV, (0, 100, 80, "web.default.svc.cluster.local.")),
    ]
    assert r["_http._tcp.web.default.svc.cluster.local."] == [(T_SRV, (0, 100, 80, "web.default.svc.cluster.local."))]
    assert r["228.0.0.10.in-addr.arpa."] == [(T_PTR, "web.default.svc.cluster.local.")]


def test_dual_stack_cluster_ips() -> None:
    r = derive(svc(clusterIPs=["10.0.0.5", "fd00::5"], clusterIP="10.0.0.5"))
    assert set(r["web.default.svc.cluster.local."]) == {(T_A, "10.0.0.5"), (T_AAAA, "fd00::5")}
    assert "5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa." in r


def test_headless_only_ready_endpoints_with_names() -> None:
    r = derive(
        svc(clusterIP="None", ports=[{"name": "http", "port": 80}]),
        eps(
            endpoints=[
                {"addresses": ["10.1.0.1"], "hostname": "web-0", "conditions": {"ready": True}},
                {"addresses": ["10.1.0.2"], "conditions": {}},  # unset ready counts as ready
                {"addresses": ["10.1.0.3"], "conditions": {"ready": False}},
            ],
            ports=[{"name": "http", "port": 8080, "protocol": "TCP"}],
        ),
    )
    base = "web.default.svc.cluster.local."
    assert set(r[base]) >= {(T_A, "10.1.0.1"), (T_A, "10.1.0.2")}
    assert (T_A, "10.1.0.3") not in r[base]
    assert r[f"web-0.{base}"] == [(T_A, "10.1.0.1")]
    assert r[f"10-1-0-2.{base}"] == [(T_A, "10.1.0.2")]
    assert set(r[f"_http._tcp.{base}"]) == {
        (T_SRV, (0, 50, 8080, f"web-0.{base}")),
        (T_SRV, (0, 50, 8080, f"10-1-0-2.{base}")),
    }
    assert r["1.0.1.10.in-addr.arpa."] == [(T_PTR, f"web-0.{base}")]
    assert "3.0.1.10.in-addr.arpa." not in r


def test_headless_without_ready_endpoints_does_not_exist() -> None:
    r = derive(svc(clusterIP="None"), eps(endpoints=[{"addresses": ["10.1.0.3"], "conditions": {"ready": False}}]))
    assert r == {}


def test_external_name_is_a_cname() -> None:
    r = derive(svc(type="ExternalName", externalName="DB.Example.com."))
    assert r == {"web.default.svc.cluster.local.": [(T_CNAME, "db.example.com.")]}


def test_endpoint_pod_names() -> None:
    slice_ = eps(endpoints=[{"addresses": ["10.1.0.9"], "targetRef": {"kind": "Pod", "name": "web-abc"}}])
    r = derive(svc(clusterIP="None"), slice_, opts=Options(("cluster.local.",), endpoint_pod_names=True))
    assert "web-abc.web.default.svc.cluster.local." in r


def test_pod_names_are_left_out_unless_asked_for() -> None:
    slice_ = eps(endpoints=[{"addresses": ["10.1.0.9"], "targetRef": {"kind": "Pod", "name": "web-abc"}}])
    assert from_dict(slice_).endpoints[0].pod_name == "web-abc"  # type: ignore[union-attr]
    assert from_dict(slice_, pod_names=False).endpoints[0].pod_name == ""  # type: ignore[union-attr]


@given(st.ip_addresses())
def test_reverse_name_and_address_of_are_inverse(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    name = reverse_name(str(ip))
    assert name == ip.reverse_pointer + "."
    assert address_of(name) == str(ip)


@pytest.mark.parametrize(
    "name",
    [
        "0.0.10.in-addr.arpa.",  # partial: an empty non-terminal, not an address
        "1.0.0.0.10.in-addr.arpa.",
        "1.0.0.010.in-addr.arpa.",  # not the canonical spelling
        "1.0.0.256.in-addr.arpa.",
        "x.0.0.10.in-addr.arpa.",
        "\u0661.0.0.10.in-addr.arpa.",
        "1.0.ip6.arpa.",
        "g" + ".0" * 31 + ".ip6.arpa.",
        "web.default.svc.cluster.local.",
    ],
)
def test_address_of_rejects_other_names(name: str) -> None:
    assert address_of(name) is None


def test_ignore_empty_service_and_noendpoints() -> None:
    assert derive(svc(clusterIP="10.0.0.9"), opts=Options(("cluster.local.",), ignore_empty_service=True)) == {}
    r = derive(
        svc(clusterIP="None"),
        eps(endpoints=[{"addresses": ["10.1.0.1"]}]),
        opts=Options(("cluster.local.",), noendpoints=True),
    )
    assert r == {}


def test_srv_weights_split_evenly() -> None:
    r = derive(
        svc(clusterIP="None", ports=[{"name": "p", "port": 1}]),
        eps(endpoints=[{"addresses": [f"10.1.0.{i}"]} for i in range(1, 4)], ports=[{"name": "p", "port": 1}]),
    )
    assert {v[1] for t, v in r["_p._tcp.web.default.svc.cluster.local."]} == {33}  # type: ignore[index]


@pytest.mark.parametrize(
    "ip,label",
    [("172.17.66.2", "172-17-66-2"), ("2001:db8::1", "2001-db8--1"), ("::1", "0--1"), ("2001:db8::", "2001-db8--0")],
)
def test_dashed_labels(ip: str, label: str) -> None:
    assert dashed(ip) == label


@pytest.mark.parametrize(
    "label,ip", [("1-2-3-4", "1.2.3.4"), ("2001-db8--1", "2001:db8::1"), ("x-y", None), ("1-2-3", None)]
)
def test_pod_ip_from_label(label: str, ip: str | None) -> None:
    assert pod_ip_from_label(label) == ip


def test_pod_records_skip_finished_pods() -> None:
    pod = {
        "kind": "Pod",
        "metadata": {"name": "p", "namespace": "ns"},
        "status": {"podIP": "10.2.0.7", "phase": "Running"},
    }
    assert records.pod_records(from_dict(pod), OPTS) == {"10-2-0-7.ns.pod.cluster.local.": [(T_A, "10.2.0.7")]}  # type: ignore[arg-type]
    pod["status"]["phase"] = "Succeeded"  # type: ignore[index]
    assert records.pod_records(from_dict(pod), OPTS) == {}  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "raw",
    [
        {"kind": "Service", "metadata": {}},
        {"kind": "Service", "metadata": {"name": 5}},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": {"clusterIP": "not-an-ip"}},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": {"type": "ExternalName"}},
        {"kind": "Service", "metadata": {"name": "x"}, "spec": {"ports": [{"port": "eighty"}]}},
        {"kind": "EndpointSlice", "metadata": {"name": "x"}, "endpoints": [{"addresses": "10.0.0.1"}]},
        {"kind": "EndpointSlice", "metadata": {"name": "x"}, "endpoints": [{}]},
        {"kind": "Pod", "metadata": {"name": "x"}, "status": {"podIP": 7}},
        "not a mapping",
    ],
)
def test_bad_objects_raise_object_error_naming_them(raw: object) -> None:
    with pytest.raises(ObjectError):
        from_dict(raw)
