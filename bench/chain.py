"""The query path without sockets: what the Python side of one query costs, and where it goes.

``python -m bench.chain --conf COREFILE --queries FILE...`` starts the App from the Corefile (its
plugins, its start-up hooks, its listeners), then feeds prebuilt queries straight to the listener's
``Dispatcher.handle`` with a ``send`` that only counts — so the time measured is parsing, routing,
the plugin chain, metrics and answer assembly, with no system call. The difference to the server's
CPU per query under dnsperf is the kernel and the event loop. A second, shorter pass runs under
cProfile to rank the functions. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import pstats
import struct
from pathlib import Path
from time import process_time
from typing import Any

from clusterdns.corefile import parse_file
from clusterdns.server.app import App
from clusterdns.wire import encode_name

CLIENT = ("127.0.0.1", 40000)
QTYPES = {"A": 1, "AAAA": 28, "SRV": 33, "PTR": 12, "TXT": 16}


def read_queries(path: Path) -> list[bytes]:
    """dnsperf's ``NAME TYPE`` lines as wire queries (RD set, no EDNS, as dnsperf sends them)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        parts = line.split()
        if len(parts) != 2:
            continue
        header = struct.pack(">HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0)
        out.append(header + encode_name(parts[0]) + struct.pack(">HH", QTYPES[parts[1].upper()], 1))
    return out


def top_functions(prof: cProfile.Profile, queries: int, top: int) -> list[dict[str, Any]]:
    """The ``top`` functions by own time: share of all profiled time, and microseconds per query as
    cProfile saw them (its overhead inflates every call, so the shares are the figures to compare)."""
    stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    whole = sum(v[2] for v in stats.values()) or 1.0
    rows = []
    for (file, line, func), (_cc, ncalls, tottime, cumtime, _callers) in stats.items():
        short = file.split("/site-packages/", 1)[-1]
        short = "clusterdns/" + short.split("/clusterdns/", 1)[1] if "/clusterdns/" in short else short
        rows.append({"function": f"{func} ({short}:{line})", "calls_per_query": ncalls / queries,
                     "self_pct": 100 * tottime / whole, "total_pct": 100 * cumtime / whole,
                     "self_us": tottime * 1e6 / queries})
    rows.sort(key=lambda r: -r["self_pct"])
    return rows[:top]


async def measure(conf: Path, files: list[Path], count: int, top: int) -> dict[str, Any]:
    app = App(str(conf))
    app.configure(parse_file(str(conf)))
    await app.start()
    try:
        disp = next(iter(app.dispatchers.values()))
        answered = 0

        def send(_wire: bytes, _addr: Any) -> None:
            nonlocal answered
            answered += 1

        out: dict[str, Any] = {}
        for path in files:
            queries = read_queries(path)
            n = len(queries)
            for q in queries:  # warm: prepared answers and the cache filled, as under dnsperf
                disp.handle(q, "udp", CLIENT, send)
            answered = 0
            # CPU time, not wall time: other work on a shared machine must not count as ours
            t0 = process_time()
            for i in range(count):
                disp.handle(queries[i % n], "udp", CLIENT, send)
            elapsed = process_time() - t0
            synchronous = answered
            profiled = max(n, count // 4)
            prof = cProfile.Profile()
            prof.enable()
            for i in range(profiled):
                disp.handle(queries[i % n], "udp", CLIENT, send)
            prof.disable()
            out[path.name] = {"queries": count, "answered_at_once": synchronous, "us_per_query": elapsed * 1e6 / count,
                              "profile": top_functions(prof, profiled, top)}
        return out
    finally:
        await app.shutdown()
        app.process.http.close()  # the health/ready/metrics listeners outlive an App, as on reload


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="clusterdns's query path in-process, without sockets")
    p.add_argument("--conf", type=Path, required=True)
    p.add_argument("--queries", type=Path, action="append", required=True)
    p.add_argument("--count", type=int, default=200_000)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    print(json.dumps(asyncio.run(measure(a.conf, a.queries, a.count, a.top))))


if __name__ == "__main__":
    main()
