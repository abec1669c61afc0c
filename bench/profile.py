"""Where clusterdns spends its time under load: py-spy samples, summarised per function.

py-spy's ``raw`` format is one collapsed stack per line, ``frame;frame;... COUNT``, each frame
``function (file:line)``. Hot spots are ranked per function (lines folded) and per line. Self time is
the leaf frame's; total time counts a function once per stack it appears in. C code (socket calls,
the event loop) shows up as the Python frame that called it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

OUR_CODE = "clusterdns/"


@dataclass(frozen=True)
class Hotspot:
    """One function's share of the samples."""

    function: str  # "name (file:line)"
    self_pct: float
    total_pct: float


def py_spy() -> str | None:
    """The py-spy next to this interpreter, else on PATH."""
    here = Path(sys.executable).parent / "py-spy"
    return str(here) if here.exists() else shutil.which("py-spy")


def record_cmd(exe: str, pid: int, out: Path, fmt: str, seconds: int, core: str, rate: int = 250) -> list[str]:
    """py-spy on ``core``, sampling without pausing the server (``--nonblocking``) so it perturbs least."""
    return ["taskset", "-c", core, exe, "record", "--pid", str(pid), "-d", str(seconds), "-r", str(rate),
            "-f", fmt, "-o", str(out), "--nonblocking"]


def function_of(frame: str) -> str:
    """``name (file:line)`` -> ``name (file)``: py-spy records lines; hot spots are ranked per function."""
    name, sep, rest = frame.rpartition(" (")
    if not sep or not rest.endswith(")"):
        return frame
    path, colon, line = rest[:-1].rpartition(":")
    return f"{name} ({path})" if colon and line.isdigit() else frame


def parse_raw(text: str, by_line: bool = False) -> tuple[Counter[str], Counter[str], int]:
    """(self samples, total samples, all samples) per function (or per line) from py-spy raw output."""
    self_n: Counter[str] = Counter()
    total_n: Counter[str] = Counter()
    samples = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";") if by_line else [function_of(f) for f in stack.split(";")]
        samples += n
        self_n[frames[-1]] += n
        for f in set(frames):
            total_n[f] += n
    return self_n, total_n, samples


def hotspots(text: str, top: int = 15, ours_only: bool = False, by_line: bool = False) -> list[Hotspot]:
    """The ``top`` functions (or lines) by self time, only clusterdns's own with ``ours_only``."""
    self_n, total_n, samples = parse_raw(text, by_line)
    if not samples:
        return []
    ranked = [f for f, _ in self_n.most_common() if not ours_only or OUR_CODE in f]
    return [Hotspot(f, 100 * self_n[f] / samples, 100 * total_n[f] / samples) for f in ranked[:top]]


def inclusive(text: str, top: int = 15) -> list[Hotspot]:
    """clusterdns's own functions by total (inclusive) time: which layers the time passes through.

    The start-up frames every sample passes through (``main``, ``run``...) are left out.
    """
    self_n, total_n, samples = parse_raw(text)
    ours = [f for f, _ in total_n.most_common() if OUR_CODE in f]
    if not ours:
        return []
    outermost = total_n[ours[0]]
    ranked = [f for f in ours if total_n[f] < 0.99 * outermost]
    return [Hotspot(f, 100 * self_n[f] / samples, 100 * total_n[f] / samples) for f in ranked[:top]]


def record(exe: str, pid: int, out: Path, fmt: str, seconds: int, core: str) -> bool:
    """Run py-spy for ``seconds``; False (with its message printed) when it could not sample."""
    res = subprocess.run(record_cmd(exe, pid, out, fmt, seconds, core), capture_output=True, text=True,
                         timeout=seconds + 60, stdin=subprocess.DEVNULL)
    if res.returncode != 0 or not out.exists():
        print(f"py-spy failed ({res.returncode}): {(res.stderr or res.stdout).strip()[-500:]}", file=sys.stderr)
        return False
    return True
