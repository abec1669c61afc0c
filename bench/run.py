"""``python -m bench.run``: clusterdns side by side with dnsmasq (and unbound for TCP) under dnsperf.

Servers run pinned to core 0, dnsperf to core 1; rounds interleave (clusterdns, baseline, clusterdns,
baseline, ...) so drift on a noisy machine shows instead of biasing one side. Each round records qps,
server CPU microseconds per answered query (utime+stime from /proc), latency, lost queries and RSS;
the ratio clusterdns/baseline is taken within a round and its median reported. The ``scale`` mode
builds big clusters in-process (bench/scale.py). Everything listens on loopback, inside a private
network namespace when the bench can make one, every load is bounded by dnsperf's ``-l`` and a
subprocess timeout, and every process started is stopped on the way out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import Any

from bench import gen, profile, servers
from bench.measure import (
    PerfResult,
    core_busy,
    cpu_seconds,
    cpu_us_per_query,
    foreign_share,
    parse_dnsperf,
    percentile,
    rss_kib,
)

NETNS_ENV = "CLUSTERDNS_BENCH_NETNS"
RESULTS = Path(__file__).resolve().parent / "results"
TOOLS = (("dnsperf", "dnsperf"), ("dnsmasq", "dnsmasq-base"), ("unbound", "unbound"))
ALL_MODES = ("cluster", "nxdomain", "forward", "lowload", "tcp", "scale")
LOWLOAD_SECONDS = 5


@dataclass(frozen=True)
class Mode:
    """One load shape: the query file, dnsperf's load options, and what clusterdns is compared with."""

    name: str
    queries: str  # key into the generated query files
    load: tuple[str, ...]
    baseline: str = "dnsmasq"
    latency: bool = False  # per-query latencies (dnsperf -v) for p50/p99


MODES = {
    "cluster": Mode("cluster", "cluster", ("-c", "8", "-q", "100")),
    "nxdomain": Mode("nxdomain", "nxdomain", ("-c", "8", "-q", "100")),
    "forward": Mode("forward", "forward", ("-c", "8", "-q", "100")),
    "lowload": Mode("lowload", "cluster", ("-c", "8", "-q", "100", "-Q", "1000", "-v"), latency=True),
    "tcp": Mode("tcp", "cluster", ("-m", "tcp", "-c", "16", "-q", "100"), baseline="unbound"),
}


@dataclass
class Round:
    """One server's numbers in one round."""

    round: int
    server: str
    qps: float
    completed: int
    lost: int
    cpu_us_per_query: float
    avg_latency_ms: float
    stddev_latency_ms: float
    max_latency_ms: float
    rss_mb: float
    rcodes: dict[str, int]
    foreign_pct: float  # share of the server's core used by other processes meanwhile (noise)
    p50_ms: float | None = None
    p99_ms: float | None = None


@dataclass
class ModeResult:
    name: str
    baseline: str
    seconds: float
    rounds: list[Round] = field(default_factory=list)
    qps_ratios: list[float] = field(default_factory=list)
    cpu_ratios: list[float] = field(default_factory=list)
    p50_ratios: list[float] = field(default_factory=list)
    p99_ratios: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def of(self, server: str) -> list[Round]:
        return [r for r in self.rounds if r.server == server]

    def median(self, server: str, attr: str) -> float | None:
        values = [getattr(r, attr) for r in self.of(server) if getattr(r, attr) is not None]
        return statistics.median(values) if values else None


# --- environment ---------------------------------------------------------------------------------
def have(tool: str) -> bool:
    return shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}")


def ensure_tools(install: bool) -> None:
    """apt-get the missing load generator and baselines (as scripts/dev.sh does); needs the network,
    so it runs before the bench moves into its own network namespace."""
    missing = [pkg for tool, pkg in TOOLS if not have(tool)]
    if not missing:
        return
    if not install:
        raise SystemExit(f"missing tools: {' '.join(missing)} (run without --no-install or scripts/dev.sh tools)")
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)}", flush=True)
    subprocess.run([*sudo, "apt-get", "update", "-qq"], check=True, env=env, stdin=subprocess.DEVNULL, timeout=600)
    subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing], check=True,
                   env=env, stdin=subprocess.DEVNULL, timeout=900)


def ensure_py_spy() -> str | None:
    """py-spy for the profile: pip-installed into this interpreter's environment when missing."""
    exe = profile.py_spy()
    if exe is None:
        print("installing py-spy (for the profile)", flush=True)
        res = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "py-spy"],
                             stdin=subprocess.DEVNULL, timeout=600, capture_output=True, text=True)
        if res.returncode != 0:
            print(f"py-spy unavailable, no profile: {res.stderr.strip()[-300:]}", file=sys.stderr)
        exe = profile.py_spy()
    return exe


def enter_netns(argv: list[str], allowed: bool) -> bool:
    """Re-exec under ``unshare -n`` when root and able; inside, bring loopback up. True when inside."""
    if os.environ.get(NETNS_ENV) == "1":
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True, timeout=10, stdin=subprocess.DEVNULL)
        return True
    if not allowed or os.geteuid() != 0 or not have("unshare") or not have("ip"):
        return False
    if subprocess.run(["unshare", "-n", "true"], capture_output=True, timeout=10).returncode != 0:
        return False
    os.environ[NETNS_ENV] = "1"
    sys.stdout.flush()
    os.execvp("unshare", ["unshare", "-n", sys.executable, "-m", "bench.run", *argv])


def tool_version(cmd: list[str]) -> str:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    lines = [ln for ln in (res.stdout + res.stderr).splitlines() if "ersion" in ln]
    return lines[0].strip() if lines else "?"


def host_info() -> dict[str, str]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")
    except OSError:
        pass
    commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True, text=True,
                            cwd=servers.ROOT, timeout=10, stdin=subprocess.DEVNULL).stdout.strip()
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "kernel": platform.release(), "python": platform.python_version(),
        "commit": commit or "?",
        "dnsperf": tool_version(["dnsperf", "-h"]), "dnsmasq": tool_version([servers.binary("dnsmasq"), "--version"]),
        "unbound": tool_version([servers.binary("unbound"), "-V"]),
    }


# --- load ----------------------------------------------------------------------------------------
def dnsperf(port: int, queries: Path, load: tuple[str, ...], seconds: float | None) -> PerfResult:
    """dnsperf on the client core against 127.0.0.1:port; ``seconds=None`` runs the file once."""
    limit = ["-l", f"{seconds:g}"] if seconds is not None else ["-n", "1"]
    cmd = servers.pinned(servers.CLIENT_CORE, ["dnsperf", "-s", "127.0.0.1", "-p", str(port), "-d", str(queries),
                                               "-t", "2", *limit, *load])
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=(seconds or 60) + 30, stdin=subprocess.DEVNULL)
    return parse_dnsperf(res.stdout)


def measure(server: servers.Proc, mode: Mode, queries: Path, seconds: float, rnd: int) -> Round:
    """Warm the server on the query file, then one measured dnsperf run with CPU accounting."""
    dnsperf(server.port, queries, ("-c", "1", "-q", "20"), None)
    core = int(servers.SERVER_CORE)
    before, core_before = cpu_seconds(server.pid), core_busy(core)
    r = dnsperf(server.port, queries, mode.load, seconds)
    after, core_after = cpu_seconds(server.pid), core_busy(core)
    out = Round(rnd, server.name, r.qps, r.completed, r.lost, cpu_us_per_query(before, after, r.completed),
                r.avg_latency_ms, r.stddev_latency_ms, r.max_latency_ms, rss_kib(server.pid) / 1024, r.rcodes,
                100 * foreign_share(core_before, core_after, after - before))
    if mode.latency:
        out.p50_ms, out.p99_ms = percentile(r.latencies_ms, 50), percentile(r.latencies_ms, 99)
    return out


def rcode_share(rounds: list[Round], code: str) -> float:
    total = sum(sum(r.rcodes.values()) for r in rounds)
    return sum(r.rcodes.get(code, 0) for r in rounds) / total if total else 0.0


def check_answers(res: ModeResult) -> None:
    """A fast wrong answer is no result: flag rcode mixes that differ from the baseline's."""
    codes = {c for r in res.rounds for c in r.rcodes}
    for code in sorted(codes):
        ours, theirs = rcode_share(res.of("clusterdns"), code), rcode_share(res.of(res.baseline), code)
        if abs(ours - theirs) > 0.01:
            res.notes.append(f"{code}: clusterdns {ours:.1%} vs {res.baseline} {theirs:.1%} of answers")


# --- the run -------------------------------------------------------------------------------------
class Bench:
    """Owns the work directory, the generated files and every process started."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        self.deadline = time.monotonic() + args.max_seconds
        self.cluster = gen.Cluster(args.services, args.endpoints)
        self.started: list[servers.Proc] = []
        self.available = servers.clusterdns_plugins()
        self.missing: list[str] = []
        self.origin: servers.Proc | None = None
        self.profile: dict[str, Any] = {}
        self.files: dict[str, Path] = {}

    def generate(self) -> None:
        c, rng = self.cluster, random.Random(self.args.seed)
        self.manifests = gen.write_manifests(c, self.work / "cluster.yaml")
        self.hosts = gen.write_lines(self.work / "cluster.hosts", gen.hosts_lines(c))
        self.external_hosts = gen.write_lines(self.work / "external.hosts", gen.external_hosts_lines(c.services))
        self.files = {
            "cluster": gen.write_lines(self.work / "q-cluster.txt", gen.cluster_queries(c, rng)),
            "nxdomain": gen.write_lines(self.work / "q-nxdomain.txt", gen.nxdomain_queries(c, rng)),
            "forward": gen.write_lines(self.work / "q-forward.txt", gen.forward_queries(c.services, rng)),
        }

    def start(self, proc: servers.Proc) -> servers.Proc:
        self.started.append(proc)
        return proc.start()

    def stop_all(self) -> None:
        for p in reversed(self.started):
            p.stop()
        self.started.clear()

    def start_origin(self) -> None:
        """The forward mode's upstream; started only when this build has ``forward``."""
        if "forward" in self.available and self.origin is None:
            self.origin = self.start(servers.origin(self.work, self.external_hosts, gen.external_name(0)))

    def run_mode(self, mode: Mode) -> ModeResult:
        seconds = min(self.args.duration, LOWLOAD_SECONDS) if mode.latency else self.args.duration
        res = ModeResult(mode.name, mode.baseline, seconds)
        origin_port = self.origin.port if self.origin else None
        probe = self.cluster.fqdn(0)
        ours, self.missing = servers.clusterdns(self.work, self.manifests, self.available, origin_port, probe)
        if mode.baseline == "unbound":
            theirs = servers.unbound(self.work, gen.unbound_local_data(self.cluster), probe)
        else:
            theirs = servers.dnsmasq(self.work, self.hosts, origin_port, probe)
        pair = [self.start(ours), self.start(theirs)]
        try:
            queries = self.files[mode.queries]
            for rnd in range(1, self.args.rounds + 1):
                if time.monotonic() + 2 * (seconds + 5) > self.deadline:
                    res.notes.append(f"stopped before round {rnd}: --max-seconds reached")
                    break
                for server in pair:
                    r = measure(server, mode, queries, seconds, rnd)
                    res.rounds.append(r)
                    print(f"  {mode.name:8} round {rnd} {server.name:10} {r.qps:9.0f} qps "
                          f"{r.cpu_us_per_query:6.1f} us/q  avg {r.avg_latency_ms:.3f} ms  lost {r.lost}"
                          f"  others {r.foreign_pct:.0f}% of core {servers.SERVER_CORE}"
                          + (f"  p50 {r.p50_ms:.3f} p99 {r.p99_ms:.3f} ms" if r.p50_ms is not None else ""),
                          flush=True)
                a, b = res.rounds[-2], res.rounds[-1]
                if b.qps and not mode.latency:
                    res.qps_ratios.append(a.qps / b.qps)
                if b.cpu_us_per_query:
                    res.cpu_ratios.append(a.cpu_us_per_query / b.cpu_us_per_query)
                if a.p50_ms and b.p50_ms and a.p99_ms and b.p99_ms:
                    res.p50_ratios.append(a.p50_ms / b.p50_ms)
                    res.p99_ratios.append(a.p99_ms / b.p99_ms)
            check_answers(res)
            if mode.name == "cluster" and self.args.profile:
                self.run_profile(ours, queries)
                self.run_chain()
        finally:
            for p in pair:
                p.stop()
                self.started.remove(p)
        return res

    def run_profile(self, ours: servers.Proc, queries: Path) -> None:
        """py-spy on clusterdns while dnsperf loads it as in the cluster mode (an extra, unmeasured run)."""
        exe = profile.py_spy()
        if exe is None:
            return
        secs = self.args.profile_seconds
        stamp = self.args.stamp
        for fmt, suffix in (("raw", "profile.txt"), ("flamegraph", "profile.svg")):
            out = self.args.results / f"{stamp}-{suffix}"
            load = subprocess.Popen(
                servers.pinned(servers.CLIENT_CORE, ["dnsperf", "-s", "127.0.0.1", "-p", str(ours.port), "-d",
                                                     str(queries), "-l", str(secs + 2), "-t", "2",
                                                     *MODES["cluster"].load]),
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
            try:
                time.sleep(0.5)
                ok = profile.record(exe, ours.pid, out, fmt, secs, servers.CLIENT_CORE)
            finally:
                load.wait(secs + 30)
            if ok:
                self.profile[fmt] = str(out)
        raw = self.profile.get("raw")
        if raw:
            text = Path(raw).read_text()
            self.profile["top_self"] = [asdict(h) for h in profile.hotspots(text, 15)]
            self.profile["top_self_ours"] = [asdict(h) for h in profile.hotspots(text, 15, ours_only=True)]
            self.profile["top_total_ours"] = [asdict(h) for h in profile.inclusive(text, 15)]
            self.profile["top_lines_ours"] = [asdict(h) for h in profile.hotspots(text, 15, True, by_line=True)]

    def run_chain(self) -> None:
        """The Corefile in-process without sockets (bench/chain.py): the Python side of a query.

        Twice: the production chain, where ``cache`` answers every repeated name, and ``errors`` +
        ``kubernetes`` alone, the index's prepared-answer path the cache hides.
        """
        variants = {"production": (self.available, ["cluster", "nxdomain"]),
                    "errors + kubernetes": (["bind", "errors", "kubernetes"], ["cluster"])}
        self.profile["chain"] = {}
        for variant, (plugins, keys) in variants.items():
            text, _ = servers.corefile(servers.free_port(), self.manifests, plugins, None)
            conf = self.work / f"Corefile-chain-{len(self.profile['chain'])}"
            conf.write_text(text)
            res = subprocess.run(
                servers.pinned(servers.SERVER_CORE, [sys.executable, "-m", "bench.chain", "--conf", str(conf),
                                                     *[a for k in keys for a in ("--queries", str(self.files[k]))]]),
                capture_output=True, text=True, cwd=self.work, timeout=300, stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONPATH": str(servers.ROOT)})
            if res.returncode != 0:
                print(f"  chain ({variant}): failed:\n{res.stderr[-1500:]}", file=sys.stderr)
                continue
            rows = json.loads(res.stdout.strip().splitlines()[-1])
            self.profile["chain"][variant] = rows
            for name, row in rows.items():
                print(f"  chain    {variant}, {name}: {row['us_per_query']:.1f} us/query in-process, no sockets",
                      flush=True)

    def run_scale(self) -> list[dict[str, Any]]:
        out = []
        for n in self.args.scale_sizes:
            if time.monotonic() + 60 > self.deadline:
                print(f"  scale {n}: skipped, --max-seconds reached", flush=True)
                continue
            res = subprocess.run(
                [sys.executable, "-m", "bench.scale", "--services", str(n), "--endpoints-per-service", "5",
                 "--updates", "200"], capture_output=True, text=True, cwd=servers.ROOT, timeout=600,
                stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(servers.ROOT)})
            if res.returncode != 0:
                raise RuntimeError(f"bench.scale {n} failed:\n{res.stderr[-2000:]}")
            row = json.loads(res.stdout)
            print(f"  scale    {n:>7} services: build {row['build_s']:.1f}s, +{row['rss_warm_delta_mb']:.0f} MB "
                  f"(CoreDNS formula {row['coredns_formula_mb']:.0f} MB total), update median "
                  f"{row['service_update']['median_us']:.0f} us", flush=True)
            out.append(row)
        return out


# --- report --------------------------------------------------------------------------------------
def _fmt(v: float | None, spec: str) -> str:
    return "–" if v is None else format(v, spec)


def _ratio(values: list[float]) -> str:
    if not values:
        return "–"
    return f"**{statistics.median(values):.2f}** ({', '.join(f'{v:.2f}' for v in values)})"


def markdown(result: dict[str, Any], modes: list[ModeResult]) -> str:
    """The short report: throughput, low-load latency, scale, profile."""
    out = [f"clusterdns {result['host']['commit']} · {result['host']['cpu']} · {result['config']['services']} "
           f"Services · {result['config']['duration']}s × {result['config']['rounds']} interleaved rounds · "
           f"{'private netns' if result['netns'] else 'host loopback'}", ""]
    if result["plugins_missing"]:
        out += [f"clusterdns lacked: {', '.join(result['plugins_missing'])} (left out of its Corefile)", ""]
    load = [m for m in modes if m.name != "lowload"]
    if load:
        out += ["| mode | vs | clusterdns qps | vs qps | qps ratio, median (rounds) | µs/query clusterdns | µs/query vs"
                " | CPU ratio | qps per free core, est. | avg ms clusterdns | avg ms vs | lost | RSS MB clusterdns / vs"
                " | others max % |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for m in load:
            b = m.baseline
            lost = sum(r.lost for r in m.rounds)
            out.append(
                f"| {m.name} | {b} | {_fmt(m.median('clusterdns', 'qps'), ',.0f')} | {_fmt(m.median(b, 'qps'), ',.0f')}"
                f" | {_ratio(m.qps_ratios)} | {_fmt(m.median('clusterdns', 'cpu_us_per_query'), '.1f')}"
                f" | {_fmt(m.median(b, 'cpu_us_per_query'), '.1f')} | {_fmt(_med(m.cpu_ratios), '.2f')}"
                f" | {_per_core(m.median('clusterdns', 'cpu_us_per_query'))}"
                f" / {_per_core(m.median(b, 'cpu_us_per_query'))}"
                f" | {_fmt(m.median('clusterdns', 'avg_latency_ms'), '.3f')}"
                f" | {_fmt(m.median(b, 'avg_latency_ms'), '.3f')}"
                f" | {lost} | {_fmt(m.median('clusterdns', 'rss_mb'), '.0f')} / {_fmt(m.median(b, 'rss_mb'), '.0f')}"
                f" | {max((r.foreign_pct for r in m.rounds), default=0):.0f} |")
        out.append("")
    for m in modes:
        if m.name == "lowload":
            b = m.baseline
            out += [f"Low load ({m.seconds:g}s at 1,000 qps per round):", "",
                    "| server | p50 ms | p99 ms | avg ms | µs/query | RSS MB | others max % |",
                    "|---|---|---|---|---|---|---|"]
            for s in ("clusterdns", b):
                out.append(f"| {s} | {_fmt(m.median(s, 'p50_ms'), '.3f')} | {_fmt(m.median(s, 'p99_ms'), '.3f')}"
                           f" | {_fmt(m.median(s, 'avg_latency_ms'), '.3f')}"
                           f" | {_fmt(m.median(s, 'cpu_us_per_query'), '.1f')}"
                           f" | {_fmt(m.median(s, 'rss_mb'), '.0f')}"
                           f" | {max((r.foreign_pct for r in m.of(s)), default=0):.0f} |")
            out += ["", f"clusterdns/{b}: p50 {_ratio(m.p50_ratios)}, p99 {_ratio(m.p99_ratios)}", ""]
    notes = [f"- {m.name}: {n}" for m in modes for n in m.notes]
    if notes:
        out += ["Notes:", *notes, ""]
    if result.get("scale"):
        out += ["Scale (in-process Store + Index, 5 endpoints per Service, 10 % headless):", "",
                "| Services | endpoints | names | build s | RSS Δ MB (answers prepared) | process RSS MB |"
                " CoreDNS formula MB | Service update µs median (p90) | EndpointSlice update µs median (p90) |",
                "|---|---|---|---|---|---|---|---|---|"]
        for s in result["scale"]:
            su, sl = s["service_update"], s.get("slice_update") or {}
            out.append(f"| {s['services']:,} | {s['endpoints']:,} | {s['names']:,} | {s['build_s']:.1f}"
                       f" | {s['rss_warm_delta_mb']:.0f} | {s['rss_total_mb']:.0f} | {s['coredns_formula_mb']:.0f}"
                       f" | {su['median_us']:.0f} ({su['p90_us']:.0f}) | "
                       + (f"{sl['median_us']:.0f} ({sl['p90_us']:.0f}) |" if sl else "– |"))
        out.append("")
    prof = result.get("profile") or {}
    chain = prof.get("chain") or {}
    if chain:
        cpu = {m.name: m.median("clusterdns", "cpu_us_per_query") for m in modes}
        out += ["The query path in-process, no sockets (bench/chain.py: the Corefile's App, queries fed to"
                " Dispatcher.handle; CPU time):", "",
                "| chain | queries | µs/query in-process | µs/query process CPU under dnsperf"
                " | rest: kernel + event loop |", "|---|---|---|---|---|"]
        for variant, rows in chain.items():
            for name, row in rows.items():
                under = cpu.get(name.removeprefix("q-").removesuffix(".txt")) if variant == "production" else None
                rest = None if under is None else under - row["us_per_query"]
                out.append(f"| {variant} | {name} | {row['us_per_query']:.1f} | {_fmt(under, '.1f')}"
                           f" | {_fmt(rest, '.1f')} |")
        for variant, rows in chain.items():
            first = next(iter(rows.values()))
            out += ["", f"cProfile of that path, {variant} chain, cluster names (shares of profiled time):", "",
                    "| function | calls/query | self % | total % |", "|---|---|---|---|"]
            out += [f"| `{r['function']}` | {r['calls_per_query']:.1f} | {r['self_pct']:.1f} | {r['total_pct']:.1f} |"
                    for r in first["profile"]]
        out.append("")
    if prof.get("top_self"):
        out += ["Profile of clusterdns under the cluster load (py-spy, share of samples):", "",
                "| function | self % | total % |", "|---|---|---|"]
        out += [f"| `{h['function']}` | {h['self_pct']:.1f} | {h['total_pct']:.1f} |" for h in prof["top_self"]]
        out += ["", "clusterdns's own functions by total time:", "", "| function | self % | total % |", "|---|---|---|"]
        out += [f"| `{h['function']}` | {h['self_pct']:.1f} | {h['total_pct']:.1f} |" for h in prof["top_total_ours"]]
        out += ["", "clusterdns's own lines by self time:", "", "| line | self % |", "|---|---|"]
        out += [f"| `{h['function']}` | {h['self_pct']:.1f} |" for h in prof["top_lines_ours"]]
        out.append("")
    return "\n".join(out)


def _per_core(us_per_query: float | None) -> str:
    """1e6 / CPU µs per query: the qps one core would give the server alone (kernel work on the
    client's side and softirq time not charged to the server are not in it)."""
    return "–" if not us_per_query else f"{1e6 / us_per_query / 1000:.0f}k"


def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def plot(modes: list[ModeResult], path: Path) -> bool:
    """qps per round per server (p99 latency for the low-load mode), when matplotlib is importable."""
    try:  # optional, and not a dependency: imported by name so type checkers need no stubs
        matplotlib = importlib.import_module("matplotlib")
        matplotlib.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
    except ImportError:
        return False
    shown = [m for m in modes if m.rounds]
    if not shown:
        return False
    fig, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.5), squeeze=False)
    for ax, m in zip(axes[0], shown, strict=True):
        attr = "p99_ms" if m.name == "lowload" else "qps"
        for server in ("clusterdns", m.baseline):
            rs = m.of(server)
            ax.plot([r.round for r in rs], [getattr(r, attr) for r in rs], marker="o", label=server)
        ax.set_title(f"{m.name} (vs {m.baseline})")
        ax.set_xlabel("round")
        ax.set_xticks(sorted({r.round for r in m.rounds}))
        ax.set_ylabel("p99 ms" if attr == "p99_ms" else "qps")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


# --- entry ---------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=7, help="seconds per measured dnsperf run (default 7)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved clusterdns/baseline pairs per mode (default 3)")
    p.add_argument("--modes", default=",".join(ALL_MODES), help=f"comma-separated subset of {','.join(ALL_MODES)}")
    p.add_argument("--services", type=int, default=1000, help="Services in the served cluster (default 1000)")
    p.add_argument("--endpoints", type=int, default=3, help="endpoints per Service (default 3)")
    p.add_argument("--scale-sizes", default="1000,10000,100000", help="Service counts for the scale mode")
    p.add_argument("--profile", action=argparse.BooleanOptionalAction, default=True,
                   help="py-spy profile of clusterdns under the cluster load (default on)")
    p.add_argument("--profile-seconds", type=int, default=6)
    p.add_argument("--netns", action=argparse.BooleanOptionalAction, default=True,
                   help="run inside a private network namespace when root (default on)")
    p.add_argument("--install", action=argparse.BooleanOptionalAction, default=True,
                   help="apt-get missing tools, pip-install py-spy (default on)")
    p.add_argument("--nice", type=int, default=-10 if os.geteuid() == 0 else 0,
                   help="niceness of servers and dnsperf, so other work on the machine steals less "
                        "(default -10 as root, else 0)")
    p.add_argument("--max-seconds", type=float, default=900, help="hard time budget; later rounds are skipped")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--report", type=Path, metavar="JSON", help="print the tables of an earlier result and exit")
    p.add_argument("--results", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    a.modes = [m.strip() for m in a.modes.split(",") if m.strip()]
    unknown = set(a.modes) - set(ALL_MODES)
    if unknown:
        p.error(f"unknown modes: {', '.join(sorted(unknown))}")
    a.scale_sizes = [int(s) for s in a.scale_sizes.split(",") if s.strip()]
    if a.duration <= 0 or a.rounds < 1 or a.services < 1:
        p.error("--duration, --rounds and --services must be positive")
    return a


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop every process


def load_result(path: Path) -> tuple[dict[str, Any], list[ModeResult]]:
    """A result JSON written by this module, with its modes as ModeResult again."""
    result = json.loads(path.read_text())
    names = {f.name for f in fields(ModeResult)}
    modes = []
    for m in result["modes"].values():
        res = ModeResult(**{k: v for k, v in m.items() if k in names})
        res.rounds = [Round(**r) for r in m["rounds"]]
        modes.append(res)
    return result, modes


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.report is not None:
        print(markdown(*load_result(args.report)))
        return 0
    inside = os.environ.get(NETNS_ENV) == "1"
    if not inside:
        ensure_tools(args.install)
        if args.profile and "cluster" in args.modes and args.install:
            ensure_py_spy()
    netns = enter_netns(argv, args.netns)
    signal.signal(signal.SIGTERM, _terminate)
    servers.NICE = args.nice
    args.results.mkdir(parents=True, exist_ok=True)
    args.stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    print(f"bench: {'private network namespace' if netns else 'host loopback'}; modes {','.join(args.modes)}; "
          f"{args.services} Services; {args.duration:g}s x {args.rounds} rounds", flush=True)
    try:
        return run_all(args, netns)
    except RuntimeError as e:  # a server that would not start, a broken clusterdns build
        print(f"bench: {e}", file=sys.stderr)
        return 1


def run_all(args: argparse.Namespace, netns: bool) -> int:
    """Every selected mode, then the report files; every process stopped on the way out."""
    began = time.monotonic()
    results: list[ModeResult] = []
    scale: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="clusterdns-bench-") as tmp:
        bench = Bench(args, Path(tmp))
        try:
            bench.generate()
            bench.start_origin()
            for name in args.modes:
                if name == "scale":
                    scale = bench.run_scale()
                elif name == "forward" and bench.origin is None:
                    print("  forward: skipped, this clusterdns has no forward plugin", flush=True)
                else:
                    results.append(bench.run_mode(MODES[name]))
                if bench.missing:
                    print(f"  (clusterdns ran without: {', '.join(bench.missing)})", flush=True)
        finally:
            bench.stop_all()
        missing = bench.missing or [p for p in servers.PRODUCTION if p not in bench.available]
        result = {
            "started": args.stamp, "elapsed_s": round(time.monotonic() - began, 1), "netns": netns,
            "host": host_info(),
            "config": {"duration": args.duration, "rounds": args.rounds, "services": args.services,
                       "endpoints_per_service": args.endpoints, "modes": args.modes, "seed": args.seed,
                       "nice": args.nice},
            "plugins_available": bench.available, "plugins_missing": missing,
            "modes": {m.name: {**asdict(m), "median_qps_ratio": _med(m.qps_ratios),
                               "median_cpu_ratio": _med(m.cpu_ratios), "median_p50_ratio": _med(m.p50_ratios),
                               "median_p99_ratio": _med(m.p99_ratios)} for m in results},
            "scale": scale, "profile": bench.profile,
        }
    json_path = args.results / f"{args.stamp}.json"
    json_path.write_text(json.dumps(result, indent=1) + "\n")
    report = markdown(result, results)
    (args.results / f"{args.stamp}.md").write_text(report + "\n")
    png = args.results / f"{args.stamp}.png"
    print("\n" + report)
    print(f"results: {json_path}" + (f", {png}" if plot(results, png) else " (no matplotlib: no PNG)")
          + (f", profile {bench.profile.get('flamegraph')}" if bench.profile.get("flamegraph") else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
