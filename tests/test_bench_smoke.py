"""The benchmark's own pieces: generated files agree with each other and with clusterdns's index,
dnsperf's report is read right, CPU/RSS accounting from /proc, the profile summary, the scale test.

Not a performance assertion: nothing here depends on how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import pytest

from bench import chain, gen, profile, servers
from bench.measure import (
    core_busy,
    cpu_seconds,
    cpu_us_per_query,
    foreign_share,
    parse_core_busy,
    parse_dnsperf,
    parse_stat_cpu,
    parse_status_rss,
    percentile,
    rss_kib,
)
from bench.run import Mode, ModeResult, Round, check_answers, load_result, markdown, parse_args
from bench.scale import coredns_mb
from bench.scale import run as scale_run
from clusterdns.corefile import parse_file
from clusterdns.k8s.index import Index
from clusterdns.k8s.objects import KINDS
from clusterdns.k8s.records import Options
from clusterdns.k8s.sources.files import load_objects
from clusterdns.k8s.store import Store
from clusterdns.server.app import App
from clusterdns.wire import T_A, T_SRV, parse_query
from tests.procs import have

UDP_REPORT = """\
DNS Performance Testing Tool
Version 2.10.0

[Status] Command line: dnsperf -s 127.0.0.1 -p 15353 -d q -l 2 -c 8 -q 100
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         296261
  Queries completed:    296259 (100.00%)
  Queries lost:         2 (0.00%)

  Response codes:       NOERROR 148131 (50.00%), NXDOMAIN 148128 (50.00%)
  Average packet size:  request 45, response 53
  Run time (s):         2.000348
  Queries per second:   148104.729777

  Average Latency (s):  0.000408 (min 0.000013, max 0.004647)
  Latency StdDev (s):   0.000187

"""

TCP_REPORT = """\
[Timeout] Query timed out: msg id 100
[Status] Testing complete (time limit)

Statistics:

  Queries sent:         107
  Queries completed:    7 (6.54%)
  Queries lost:         100 (93.46%)

  Response codes:       NOERROR 7 (100.00%)
  Run time (s):         2.000263
  Queries per second:   3.499540

  Average Latency (s):  0.000090 (min 0.000080, max 0.000108)
  Latency StdDev (s):   0.000010

Connection Statistics:

  Reconnections:        0

  Average Latency (s):  0.001807 (min 0.000816, max 0.001922)
  Latency StdDev (s):   0.000266
"""

VERBOSE_LINES = """\
> NOERROR svc-1.ns-0.svc.cluster.local. A 0.000134
> NXDOMAIN gone-3.ns-0.svc.cluster.local. A 0.000210
> NOERROR svc-2.ns-0.svc.cluster.local. A 0.000100
"""


# --- generated cluster ---------------------------------------------------------------------------
def _index_of(manifests: Path) -> Index:
    index = Index(["cluster.local.", "in-addr.arpa.", "ip6.arpa."], 30)
    Store(index, Options(("cluster.local.",))).replace(KINDS, load_objects(str(manifests)))
    return index


def test_manifests_and_hosts_file_describe_the_same_names(tmp_path: Path) -> None:
    c = gen.Cluster(services=30, endpoints_per_service=3)
    index = _index_of(gen.write_manifests(c, tmp_path / "cluster.yaml"))
    from_hosts: dict[str, set[str]] = defaultdict(set)
    for line in gen.hosts_lines(c):
        ip, name = line.split()
        from_hosts[name + "."].add(ip)
    assert len(from_hosts) == 30
    assert sum(c.headless(i) for i in range(30)) == 3
    for name, ips in from_hosts.items():
        served = {str(v) for t, v in index.records(name) if t == T_A}
        assert served == ips, name
        assert any(t == T_SRV for t, _ in index.records(name))  # the ports made it in too
    headless = c.fqdn(9)
    assert len(from_hosts[headless]) == 3 and from_hosts[headless] == set(c.endpoint_ips(9))


def test_unbound_local_data_matches_hosts() -> None:
    c = gen.Cluster(services=12, endpoints_per_service=2)
    hosts = {(ln.split()[1] + ".", ln.split()[0]) for ln in gen.hosts_lines(c)}
    data = {(d.split()[0], d.split()[4]) for d in gen.unbound_local_data(c)}
    assert hosts == data


def test_query_files(tmp_path: Path) -> None:
    c = gen.Cluster(services=90, endpoints_per_service=1)
    index = _index_of(gen.write_manifests(c, tmp_path / "cluster.yaml"))
    cluster = gen.cluster_queries(c, random.Random(1))
    assert sorted(cluster) == sorted(f"{c.fqdn(i)} A" for i in range(90))
    assert cluster == gen.cluster_queries(c, random.Random(1))  # reproducible
    mixed = gen.nxdomain_queries(c, random.Random(1))
    missing = [q.split()[0] for q in mixed if not index.exists(q.split()[0])]
    assert len(mixed) == 100 and len(missing) == 10
    assert all(name.endswith(".svc.cluster.local.") for name in missing)
    fwd = gen.forward_queries(5, random.Random(1))
    assert sorted(fwd) == sorted(f"ext-{i}.bench.test. A" for i in range(5))
    path = gen.write_lines(tmp_path / "q.txt", fwd)
    assert path.read_text().splitlines() == fwd


# --- dnsperf's report ----------------------------------------------------------------------------
def test_parse_dnsperf_udp() -> None:
    r = parse_dnsperf(UDP_REPORT)
    assert (r.sent, r.completed, r.lost) == (296261, 296259, 2)
    assert r.qps == pytest.approx(148104.729777)
    assert r.runtime_s == pytest.approx(2.000348)
    assert r.avg_latency_ms == pytest.approx(0.408)
    assert r.max_latency_ms == pytest.approx(4.647)
    assert r.stddev_latency_ms == pytest.approx(0.187)
    assert r.rcodes == {"NOERROR": 148131, "NXDOMAIN": 148128}
    assert r.latencies_ms == []


def test_parse_dnsperf_tcp_reads_the_query_latency_not_the_connection_one() -> None:
    r = parse_dnsperf(TCP_REPORT)
    assert (r.completed, r.lost) == (7, 100)
    assert r.avg_latency_ms == pytest.approx(0.090)


def test_parse_dnsperf_verbose_latencies() -> None:
    r = parse_dnsperf(VERBOSE_LINES + UDP_REPORT)
    assert r.latencies_ms == pytest.approx([0.134, 0.210, 0.100])


def test_parse_dnsperf_without_statistics_fails() -> None:
    with pytest.raises(ValueError, match="no statistics"):
        parse_dnsperf("[Status] Sending queries\nError: could not open file\n")


def test_percentile_nearest_rank() -> None:
    values = [float(v) for v in range(100, 0, -1)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([3.0], 99) == 3.0
    assert percentile([], 50) == 0.0


# --- /proc accounting ----------------------------------------------------------------------------
def test_parse_stat_cpu_with_a_hostile_comm() -> None:
    ticks = os.sysconf("SC_CLK_TCK")
    fields = ["S"] + ["0"] * 10 + [str(3 * ticks), str(ticks)] + ["0"] * 30
    stat = "4242 (a) b (c) " + " ".join(fields)
    assert parse_stat_cpu(stat) == pytest.approx(4.0)


def test_cpu_and_rss_of_this_process() -> None:
    before = cpu_seconds(os.getpid())
    end = time.process_time() + 0.15
    while time.process_time() < end:  # bounded busy loop: 0.15 s of CPU
        pass
    after = cpu_seconds(os.getpid())
    assert 0.05 <= after - before <= 2.0
    assert cpu_us_per_query(before, before + 0.5, 100_000) == pytest.approx(5.0)
    assert cpu_us_per_query(before, after, 0) == 0.0
    assert rss_kib() > 1024 and rss_kib(os.getpid()) > 1024  # KiB: a Python process is megabytes
    assert parse_status_rss("Name:\tx\nVmRSS:\t  12345 kB\n") == 12345


def test_core_accounting() -> None:
    stat = "cpu  9 9 9 9 9 0 0 0 0 0\ncpu0 100 5 20 800 10 1 2 0 7 0\ncpu1 1 1 1 1 1 1 1 1 0 0\n"
    assert parse_core_busy(stat, 0) == (125, 938)  # user+nice+system; guest not double-counted
    with pytest.raises(ValueError):
        parse_core_busy(stat, 5)
    ticks = os.sysconf("SC_CLK_TCK")
    # one second of wall time, 0.6 s busy of which 0.25 s was the measured process
    assert foreign_share((0, 0), (int(0.6 * ticks), ticks), 0.25) == pytest.approx(0.35, abs=0.02)
    assert foreign_share((0, 0), (ticks, ticks), 2.0) == 0.0  # tick rounding never goes negative
    busy, total = core_busy(0)
    assert 0 <= busy <= total


# --- the servers' configuration ------------------------------------------------------------------
def test_corefile_leaves_out_missing_plugins_and_is_accepted(tmp_path: Path) -> None:
    c = gen.Cluster(services=3)
    manifests = gen.write_manifests(c, tmp_path / "cluster.yaml")
    text, missing = servers.corefile(5300, manifests, ["errors", "kubernetes", "cache", "bind"], origin=None)
    assert missing == ["health", "ready", "prometheus", "loadbalance", "forward"]
    assert "cache 30" in text and "forward" not in text and "health" not in text
    available = servers.clusterdns_plugins()
    text, missing = servers.corefile(5300, manifests, available, origin=5301)
    assert ("forward . 127.0.0.1:5301" in text) == ("forward" in available)
    assert servers.pinned("1", ["dnsperf"])[-4:] == ["taskset", "-c", "1", "dnsperf"]
    path = tmp_path / "Corefile"
    path.write_text(text)
    App(str(path), 53).configure(parse_file(str(path)))  # every directive set up, nothing bound


@pytest.mark.skipif(not (have("dnsperf") and have("dnsmasq")), reason="needs dnsperf and dnsmasq")
def test_dnsmasq_baseline_answers_the_hosts_file_under_dnsperf(tmp_path: Path) -> None:
    c = gen.Cluster(services=20, endpoints_per_service=2)
    hosts = gen.write_lines(tmp_path / "hosts", gen.hosts_lines(c))
    queries = gen.write_lines(tmp_path / "q.txt", gen.nxdomain_queries(c, random.Random(2)))
    proc = servers.dnsmasq(tmp_path, hosts, None, c.fqdn(0))
    try:
        proc.start(timeout=10)
        assert servers.probe(proc.port, "gone.ns-0.svc.cluster.local.") == 3  # NXDOMAIN, not REFUSED
        from bench.run import dnsperf

        r = dnsperf(proc.port, queries, ("-c", "1", "-q", "10", "-Q", "200"), 1)
        assert r.completed > 50 and r.lost == 0
        assert set(r.rcodes) == {"NOERROR", "NXDOMAIN"}
    finally:
        proc.stop()
    assert proc.proc is not None and proc.proc.poll() is not None


def test_chain_feeds_the_real_query_path(tmp_path: Path) -> None:
    c = gen.Cluster(services=20, endpoints_per_service=2)
    manifests = gen.write_manifests(c, tmp_path / "cluster.yaml")
    qfile = gen.write_lines(tmp_path / "q.txt", gen.nxdomain_queries(c, random.Random(3)))
    wire = chain.read_queries(qfile)
    assert len(wire) == 22
    req = parse_query(wire[0], "udp", chain.CLIENT)
    assert f"{req.qname} A" == qfile.read_text().splitlines()[0] and req.qtype == T_A
    text, _ = servers.corefile(servers.free_port(), manifests, servers.clusterdns_plugins(), None)
    conf = tmp_path / "Corefile"
    conf.write_text(text)
    row = asyncio.run(chain.measure(conf, [qfile], count=400, top=5))["q.txt"]
    assert row["answered_at_once"] == 400 and row["us_per_query"] > 0
    assert len(row["profile"]) == 5 and any("clusterdns/" in r["function"] for r in row["profile"])
    assert all(0 <= r["self_pct"] <= 100 for r in row["profile"])


# --- profile summary -----------------------------------------------------------------------------
RAW = """\
<module> (clusterdns/__main__.py:1);run (clusterdns/server/run.py:88);_readable (clusterdns/server/udp.py:44) 30
<module> (clusterdns/__main__.py:1);run (clusterdns/server/run.py:88);_readable (clusterdns/server/udp.py:47) 20
<module> (clusterdns/__main__.py:1);run (clusterdns/server/run.py:88);_readable (clusterdns/server/udp.py:47);\
handle (clusterdns/server/dispatch.py:50) 30
<module> (clusterdns/__main__.py:1);run (clusterdns/server/run.py:90);select (selectors.py:451) 20
"""


def test_profile_summary() -> None:
    assert profile.function_of("handle (clusterdns/server/dispatch.py:50)") == "handle (clusterdns/server/dispatch.py)"
    assert profile.function_of("<lambda> (<string>:2)") == "<lambda> (<string>)"
    assert profile.function_of("odd frame") == "odd frame"
    self_n, total_n, samples = profile.parse_raw(RAW + "garbage line\n")
    assert samples == 100
    assert self_n["_readable (clusterdns/server/udp.py)"] == 50  # two lines folded into one function
    assert total_n["_readable (clusterdns/server/udp.py)"] == 80
    assert total_n["run (clusterdns/server/run.py)"] == 100  # counted once per stack
    top = profile.hotspots(RAW, 2)
    assert [h.function for h in top] == ["_readable (clusterdns/server/udp.py)",
                                         "handle (clusterdns/server/dispatch.py)"]
    assert top[0].self_pct == 50.0 and top[0].total_pct == 80.0
    assert [h.function.split()[0] for h in profile.hotspots(RAW, 5, ours_only=True)] == ["_readable", "handle"]
    lines = profile.hotspots(RAW, 5, ours_only=True, by_line=True)
    assert [(h.function, h.self_pct) for h in lines] == [("_readable (clusterdns/server/udp.py:44)", 30.0),
                                                         ("handle (clusterdns/server/dispatch.py:50)", 30.0),
                                                         ("_readable (clusterdns/server/udp.py:47)", 20.0)]
    # the frames every sample passes through are no hot spot
    assert [h.function.split()[0] for h in profile.inclusive(RAW)] == ["_readable", "handle"]
    cmd = profile.record_cmd("py-spy", 7, Path("out.txt"), "raw", 3, "1")
    assert cmd[:3] == ["taskset", "-c", "1"] and "--nonblocking" in cmd
    assert cmd[cmd.index("-f") + 1] == "raw" and cmd[cmd.index("--pid") + 1] == "7"


# --- scale and report ----------------------------------------------------------------------------
def test_scale_run_small() -> None:
    out = scale_run(services=50, endpoints_per_service=2, updates=10)
    assert out["services"] == 50 and out["endpoints"] == 100
    assert out["names"] > 50 + 100  # service names, endpoint names, PTRs, namespaces
    assert out["service_update"]["median_us"] > 0 and out["slice_update"]["median_us"] > 0
    assert out["coredns_formula_mb"] == pytest.approx(coredns_mb(50, 100))
    assert coredns_mb(10_000, 50_000) == pytest.approx(60_000 * 0.000858 + 49.1)


def _round(rnd: int, server: str, qps: float, rcodes: dict[str, int]) -> Round:
    return Round(rnd, server, qps, 100, 0, 10.0, 0.5, 0.1, 2.0, 30.0, rcodes, 3.0)


def test_report_and_answer_check() -> None:
    res = ModeResult("cluster", "dnsmasq", 8)
    res.rounds = [_round(1, "clusterdns", 60_000, {"NOERROR": 95, "SERVFAIL": 5}),
                  _round(1, "dnsmasq", 120_000, {"NOERROR": 100})]
    res.qps_ratios, res.cpu_ratios = [0.5], [1.0]
    check_answers(res)
    assert res.notes == ["NOERROR: clusterdns 95.0% vs dnsmasq 100.0% of answers",
                         "SERVFAIL: clusterdns 5.0% vs dnsmasq 0.0% of answers"]
    result = {"host": {"commit": "abc", "cpu": "cpu"}, "config": {"services": 10, "duration": 8, "rounds": 1},
              "netns": True, "plugins_missing": ["forward"], "scale": [], "profile": {}}
    text = markdown(result, [res])
    assert "| cluster | dnsmasq | 60,000 | 120,000 | **0.50** (0.50) |" in text
    assert "clusterdns lacked: forward" in text and "SERVFAIL" in text
    assert "| 100k / 100k |" in text  # 10 µs per query: 100k qps per free core
    assert Mode("x", "cluster", ()).baseline == "dnsmasq"


def test_result_json_reads_back(tmp_path: Path) -> None:
    res = ModeResult("lowload", "dnsmasq", 5, p50_ratios=[1.5], p99_ratios=[1.2])
    res.rounds = [_round(1, "clusterdns", 1000, {"NOERROR": 10}), _round(1, "dnsmasq", 1000, {"NOERROR": 10})]
    res.rounds[0].p50_ms, res.rounds[0].p99_ms = 0.09, 0.4
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"modes": {"lowload": {**asdict(res), "median_p50_ratio": 1.5}}}))
    _, modes = load_result(path)
    assert modes == [res]


def test_parse_args() -> None:
    a = parse_args(["--duration", "2", "--rounds", "1", "--modes", "cluster,scale", "--scale-sizes", "10,20"])
    assert a.modes == ["cluster", "scale"] and a.scale_sizes == [10, 20] and a.duration == 2
    with pytest.raises(SystemExit):
        parse_args(["--modes", "cluster,warp"])
