"""What a round measures: dnsperf's report, a process's CPU time and RSS from /proc, percentiles."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class PerfResult:
    """The numbers of one dnsperf run."""

    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    runtime_s: float = 0.0
    avg_latency_ms: float = 0.0
    max_latency_ms: float = 0.0
    stddev_latency_ms: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    latencies_ms: list[float] = field(default_factory=list)  # one per answered query, only with -v


_INT = {"sent": r"Queries sent:\s+(\d+)", "completed": r"Queries completed:\s+(\d+)",
        "lost": r"Queries lost:\s+(\d+)"}
_FLOAT = {"qps": r"Queries per second:\s+([\d.]+)", "runtime_s": r"Run time \(s\):\s+([\d.]+)"}
# The first "Average Latency" block is the queries'; TCP runs add a second one for connections.
_LATENCY = re.compile(r"Average Latency \(s\):\s+([\d.]+) \(min [\d.]+, max ([\d.]+)\)\s+"
                      r"Latency StdDev \(s\):\s+([\d.]+)")
_RCODES = re.compile(r"Response codes:\s+(.*)")
_RCODE = re.compile(r"([A-Z]+) (\d+) \(")
_VERBOSE = re.compile(r"^> ([A-Z]+) \S+ \S+ ([\d.]+)$", re.MULTILINE)


def parse_dnsperf(text: str) -> PerfResult:
    """Read dnsperf's statistics (and with ``-v`` each query's latency); raises ValueError if absent."""
    if "Statistics:" not in text:
        raise ValueError("no statistics in dnsperf output:\n" + text[-2000:])
    r = PerfResult()
    for name, pattern in _INT.items():
        m = re.search(pattern, text)
        if m:
            setattr(r, name, int(m.group(1)))
    for name, pattern in _FLOAT.items():
        m = re.search(pattern, text)
        if m:
            setattr(r, name, float(m.group(1)))
    m = _LATENCY.search(text)
    if m:
        r.avg_latency_ms, r.max_latency_ms, r.stddev_latency_ms = (float(g) * 1000 for g in m.groups())
    m = _RCODES.search(text)
    if m:
        r.rcodes = {code: int(n) for code, n in _RCODE.findall(m.group(1))}
    r.latencies_ms = [float(s) * 1000 for _code, s in _VERBOSE.findall(text)]
    return r


def percentile(values: list[float], p: float) -> float:
    """The ``p``-th percentile (0-100), nearest-rank on the sorted values; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * p // 100))  # ceil without floats drifting
    return ordered[min(len(ordered), int(rank)) - 1]


def parse_stat_cpu(stat: str) -> float:
    """utime + stime in seconds from the text of /proc/<pid>/stat (the comm field may hold spaces)."""
    fields = stat[stat.rindex(")") + 2 :].split()
    # after "pid (comm) ", fields[0] is the state (field 3); utime and stime are fields 14 and 15
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """CPU time the process has used so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        return parse_stat_cpu(f.read())


def parse_status_rss(status: str) -> int:
    """VmRSS in KiB from the text of /proc/<pid>/status."""
    m = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    if not m:
        raise ValueError("no VmRSS line")
    return int(m.group(1))


def rss_kib(pid: int | str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        return parse_status_rss(f.read())


def cpu_us_per_query(cpu_before: float, cpu_after: float, answered: int) -> float:
    """Server CPU microseconds per answered query; 0.0 when nothing was answered."""
    return (cpu_after - cpu_before) * 1e6 / answered if answered else 0.0


def parse_core_busy(stat: str, core: int) -> tuple[int, int]:
    """(process, total) clock ticks of one core from the text of /proc/stat.

    Process time is user + nice + system: what processes ran. Interrupt and softirq time is left out,
    since on loopback much of it is the measured traffic itself, not another process's.
    """
    for line in stat.splitlines():
        if line.startswith(f"cpu{core} "):
            ticks = [int(v) for v in line.split()[1:]]
            # guest time is already counted in user/nice; leave it out of the total
            return ticks[0] + ticks[1] + ticks[2], sum(ticks[:8])
    raise ValueError(f"no cpu{core} line in /proc/stat")


def core_busy(core: int) -> tuple[int, int]:
    with open("/proc/stat") as f:
        return parse_core_busy(f.read(), core)


def foreign_share(before: tuple[int, int], after: tuple[int, int], own_cpu_s: float) -> float:
    """How much of a core, 0-1, went to processes other than the one measured (``own_cpu_s``)."""
    total = after[1] - before[1]
    if total <= 0:
        return 0.0
    busy_s = (after[0] - before[0]) / CLOCK_TICKS
    return min(1.0, max(0.0, (busy_s - own_cpu_s) / (total / CLOCK_TICKS)))
