"""The prometheus plugin and the metrics it exports: Meter counting, the fold into CoreDNS's
families, the exposition (parsed back with prometheus-client's parser), the dispatcher's hooks
and the directive's syntax."""

from __future__ import annotations

import asyncio
import struct
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from clusterdns.corefile import CorefileError, parse
from clusterdns.metrics import (
    PROGRAMMING_BUCKETS,
    SIZE_BUCKETS,
    TIME_BUCKETS,
    Collector,
    Family,
    Registry,
    exposition,
    go_float,
)
from clusterdns.plugin import NOERROR, NXDOMAIN, REFUSED, Request, Response
from clusterdns.plugins.prometheus import Prometheus
from clusterdns.server.app import App
from clusterdns.server.dispatch import Dispatcher
from clusterdns.wire import encode_name, parse_query


def query(name: str, qtype: int = 1, do: bool = False, qid: int = 7) -> bytes:
    data = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 1 if do else 0)
    data += encode_name(name) + struct.pack(">HH", qtype, 1)
    if do:
        data += b"\x00" + struct.pack(">HHIH", 41, 1232, 0x8000, 0)
    return data


def req(name: str = "a.cluster.local.", qtype: int = 1, do: bool = False, proto: str = "udp",
        client: tuple[str, int] = ("127.0.0.1", 5353)) -> Request:
    return parse_query(query(name, qtype, do), proto, client)


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def samples(fams: dict[str, Any], family: str, suffix: str = "") -> dict[tuple[tuple[str, str], ...], float]:
    """{sorted label items: value} of the samples named family+suffix (the parser drops _total
    from a counter family's name, not from its samples)."""
    fam = fams.get(family.removesuffix("_total")) or fams[family]
    return {tuple(sorted(s.labels.items())): s.value for s in fam.samples if s.name == family + suffix}


def expose(registry: Registry) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry()
    reg.register(Collector(registry))
    return generate_latest(reg).decode()


def fresh_registry() -> Registry:
    """A registry with the DNS families of clusterdns.metrics declared (same names, labels, buckets)."""
    from clusterdns import metrics

    reg = Registry()
    for fam in metrics.REGISTRY.families.values():
        if fam.name.startswith(("coredns_dns_", "coredns_panics", "coredns_kubernetes")):
            reg.declare(fam)
    return reg


def test_meter_counts_every_family_with_coredns_labels() -> None:
    reg = fresh_registry()
    m = reg.meter("dns://:53", "cluster.local.")
    a = req()
    m.record(a, Response(b"x" * 90, NOERROR, "kubernetes"), 90, 0.0003)
    m.record(a, Response(b"x" * 90, NOERROR, "kubernetes"), 90, 0.0003)
    m.record(req(qtype=99, do=True, proto="tcp", client=("::1", 1)), Response(b"", NXDOMAIN, "kubernetes"), 600, 0.01)
    reg.meter("dns://:53", "dropped").record(req("example.org."), Response(b"", REFUSED), 40, 0.00001)
    fams = families(expose(reg))
    base = (("server", "dns://:53"), ("view", ""), ("zone", "cluster.local."))
    assert samples(fams, "coredns_dns_requests_total") == {
        tuple(sorted((*base, ("proto", "udp"), ("family", "1"), ("type", "A")))): 2,
        tuple(sorted((*base, ("proto", "tcp"), ("family", "2"), ("type", "other")))): 1,
        tuple(sorted((("server", "dns://:53"), ("view", ""), ("zone", "dropped"), ("proto", "udp"), ("family", "1"),
                      ("type", "A")))): 1,
    }
    responses = samples(fams, "coredns_dns_responses_total")
    assert responses[tuple(sorted((*base, ("rcode", "NOERROR"), ("plugin", "kubernetes"))))] == 2
    assert responses[tuple(sorted((*base, ("rcode", "NXDOMAIN"), ("plugin", "kubernetes"))))] == 1
    dropped = (("server", "dns://:53"), ("view", ""), ("zone", "dropped"))
    assert responses[tuple(sorted((*dropped, ("rcode", "REFUSED"), ("plugin", ""))))] == 1
    assert samples(fams, "coredns_dns_do_requests_total") == {tuple(sorted(base)): 1}
    duration = samples(fams, "coredns_dns_request_duration_seconds", "_bucket")
    assert duration[tuple(sorted((*base, ("le", "0.00025"))))] == 0
    assert duration[tuple(sorted((*base, ("le", "0.0005"))))] == 2
    assert duration[tuple(sorted((*base, ("le", "0.016"))))] == 3
    assert duration[tuple(sorted((*base, ("le", "+Inf"))))] == 3
    assert samples(fams, "coredns_dns_request_duration_seconds", "_sum")[tuple(sorted(base))] == pytest.approx(0.0106)
    rsize = samples(fams, "coredns_dns_response_size_bytes", "_bucket")
    assert rsize[tuple(sorted((*base, ("proto", "udp"), ("le", "100"))))] == 2
    assert rsize[tuple(sorted((*base, ("proto", "tcp"), ("le", "511"))))] == 0
    assert rsize[tuple(sorted((*base, ("proto", "tcp"), ("le", "1023"))))] == 1
    qsize = samples(fams, "coredns_dns_request_size_bytes", "_sum")
    assert qsize[tuple(sorted((*base, ("proto", "udp"))))] == 2 * len(a.data)


def test_bucket_bounds_are_written_as_go_does() -> None:
    assert [go_float(b) for b in SIZE_BUCKETS][-4:] == ["16000", "32000", "48000", "64000"]
    assert go_float(TIME_BUCKETS[0]) == "0.00025" and go_float(TIME_BUCKETS[-1]) == "8.192"
    assert go_float(PROGRAMMING_BUCKETS[-1]) == "524.288"


def test_unlabelled_families_are_exported_at_zero_and_no_created_series() -> None:
    reg = Registry()
    reg.declare(Family("coredns_x_total", "counter", "x"))
    reg.declare(Family("coredns_h_seconds", "histogram", "h", (), (0.1, 1.0)))
    reg.declare(Family("coredns_l_total", "counter", "l", ("a",)))
    text = expose(reg)
    assert "coredns_x_total 0.0" in text
    assert 'coredns_h_seconds_bucket{le="+Inf"} 0.0' in text
    assert "coredns_l_total{" not in text  # a labelled family has no series until counted
    assert "_created" not in text


def test_gauge_functions_are_read_at_scrape_time_and_a_broken_one_is_skipped() -> None:
    reg = Registry()
    reg.declare(Family("coredns_cache_entries", "gauge", "e", ("server", "type")))
    size = [3]
    reg.set_fn("coredns_cache_entries", ("dns://:53", "success"), lambda: size[0])
    reg.set_fn("coredns_cache_entries", ("dns://:53", "denial"), lambda: 1 / 0)
    size[0] = 5
    got = samples(families(expose(reg)), "coredns_cache_entries")
    assert got == {(("server", "dns://:53"), ("type", "success")): 5}


def test_exposition_has_process_metrics_and_the_core_families() -> None:
    body, content_type = exposition()
    assert content_type.startswith("text/plain; version=0.0.4")
    fams = families(body.decode())
    for name in ("process_cpu_seconds", "process_resident_memory_bytes", "process_start_time_seconds",
                 "coredns_build_info", "coredns_panics", "coredns_health_request_duration_seconds",
                 "coredns_health_request_failures", "coredns_reload_failed",
                 "coredns_kubernetes_dns_programming_duration_seconds"):
        assert name in fams, name
    (info,) = fams["coredns_build_info"].samples
    assert set(info.labels) == {"version", "revision", "goversion"} and info.value == 1
    assert fams["coredns_kubernetes_dns_programming_duration_seconds"].type == "histogram"


def test_programming_latency_hook() -> None:
    reg = fresh_registry()
    reg.observe_programming("cluster_ip", 0.003)
    reg.observe_programming("headless_with_selector", 700.0)
    got = samples(families(expose(reg)), "coredns_kubernetes_dns_programming_duration_seconds", "_bucket")
    assert got[(("le", "0.004"), ("service_kind", "cluster_ip"))] == 1
    assert got[(("le", "0.002"), ("service_kind", "cluster_ip"))] == 0
    assert got[(("le", "524.288"), ("service_kind", "headless_with_selector"))] == 0
    assert got[(("le", "+Inf"), ("service_kind", "headless_with_selector"))] == 1


# --- the dispatcher's hooks ------------------------------------------------------------------


def test_dispatcher_meters_routed_dropped_and_failed_queries() -> None:
    from clusterdns import metrics

    async def answer(r: Request) -> Response:
        from clusterdns.wire import reply

        if r.qname.startswith("boom."):
            raise RuntimeError("bug")
        if r.qname.startswith("slow."):
            await asyncio.sleep(0.02)
        return Response(reply(r, NXDOMAIN), NXDOMAIN, "kubernetes")

    zone_meter = metrics.Meter("dns://:1", "cluster.local.")
    dropped = metrics.Meter("dns://:1", "dropped")
    disp = Dispatcher()
    disp.add("cluster.local.", answer, "dns://:1", zone_meter)
    disp.dropped = dropped
    sent: list[bytes] = []
    panics = metrics.REGISTRY.values[metrics.PANICS.name].get((), 0)

    async def main() -> None:
        for name in ("a.cluster.local.", "slow.cluster.local.", "boom.cluster.local.", "example.org."):
            disp.handle(query(name), "udp", ("127.0.0.1", 9), lambda wire, _a: sent.append(wire))
        await asyncio.sleep(0.1)

    asyncio.run(main())
    assert len(sent) == 4
    by_rcode: dict[tuple[int, str], int] = {}
    slowest = 0
    for key, (n, *_rest) in zone_meter.counts.items():
        by_rcode[(key[4], key[5])] = by_rcode.get((key[4], key[5]), 0) + int(n)
        slowest = max(slowest, key[8])
    assert by_rcode == {(NXDOMAIN, "kubernetes"): 2, (2, ""): 1}  # the exception became a server SERVFAIL
    assert TIME_BUCKETS[slowest] >= 0.016  # the suspended query was timed until it finished
    assert [(k[4], int(v[0])) for k, v in dropped.counts.items()] == [(REFUSED, 1)]
    assert metrics.REGISTRY.values[metrics.PANICS.name][()] == panics + 1


def test_only_blocks_with_prometheus_are_metered(tmp_path: Any) -> None:
    text = """\
cluster.local:1053 {
    prometheus 127.0.0.1:9999
}
example.org:1053 {
    errors
}
"""
    app = App(str(tmp_path / "Corefile"))
    app.configure(parse(text, str(tmp_path / "Corefile")))
    disp = app.dispatchers[("", 1053)]
    assert disp.route("a.cluster.local.")[3] is not None  # type: ignore[index]
    assert disp.route("a.example.org.")[3] is None  # type: ignore[index]
    assert disp.dropped is not None and disp.dropped.zone == "dropped"
    assert ("127.0.0.1", 9999) in app.routes and "/metrics" in app.routes[("127.0.0.1", 9999)]
    app.publish()
    from clusterdns import metrics

    enabled = metrics.REGISTRY.values[metrics.PLUGIN_ENABLED.name]
    assert set(enabled) == {("dns://:1053", "cluster.local.", "", "prometheus")}


# --- syntax ----------------------------------------------------------------------------------


def configure(text: str, tmp_path: Any) -> App:
    app = App(str(tmp_path / "Corefile"))
    app.configure(parse(text, str(tmp_path / "Corefile")))
    return app


@pytest.mark.parametrize(("arg", "address"), [
    ("", ("localhost", 9153)),
    (":9153", ("", 9153)),
    ("[::1]:9253", ("::1", 9253)),
])
def test_address(arg: str, address: tuple[str, int], tmp_path: Any) -> None:
    app = configure(f".:1053 {{\n    prometheus {arg}\n}}\n", tmp_path)
    prom = app.sites[0].config.plugins["prometheus"]
    assert isinstance(prom, Prometheus) and prom.address == address
    assert list(app.routes) == [address]


@pytest.mark.parametrize(("text", "error"), [
    ("prometheus a b", "2: prometheus: wrong argument count"),
    ("prometheus 9153", "2: prometheus: address 9153: missing port"),
    ("prometheus {\n        tls cert key\n    }", "3: prometheus: unknown property 'tls'"),
])
def test_syntax_errors(text: str, error: str, tmp_path: Any) -> None:
    with pytest.raises(CorefileError, match=f"Corefile:{error}"):
        configure(f".:1053 {{\n    {text}\n}}\n", tmp_path)
