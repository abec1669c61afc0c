"""Go-style durations as the Corefile writes them: ``500ms``, ``5s``, ``1m30s``, ``1h``."""

from __future__ import annotations

import re

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


def parse_duration(text: str) -> float:
    """Seconds in ``text``; a bare number means seconds. Raises ValueError when malformed."""
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    pos, total = 0, 0.0
    while pos < len(text):
        m = _PART.match(text, pos)
        if not m:
            raise ValueError(f"invalid duration {text!r}")
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if not text:
        raise ValueError("empty duration")
    return total
