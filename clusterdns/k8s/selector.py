"""Kubernetes label selectors (``a=b,c!=d,e in (x,y),f notin (z),g,!h``), parsed and matched.

The API source sends the selector string to the server; the files source matches it here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

Matcher = Callable[[Mapping[str, str]], bool]

_TERM = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[\w./-]+)"
    r"|(?P<key>[\w./-]+)\s*(?:(?P<op>==|=|!=)\s*(?P<val>[\w.-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?)\s*(?:,|$)"
)


def parse(expr: str) -> Matcher:
    """Compile ``expr``; raises ValueError on a malformed selector. An empty one matches all."""
    terms: list[Matcher] = []
    pos, expr = 0, expr.strip()
    while pos < len(expr):
        m = _TERM.match(expr, pos)
        if not m or m.end() == pos:
            raise ValueError(f"malformed label selector {expr!r} at {pos}")
        pos = m.end()
        terms.append(_term(m))
    return lambda labels: all(t(labels) for t in terms)


def _term(m: re.Match[str]) -> Matcher:
    if m["not"]:
        key = m["nkey"]
        return lambda labels: key not in labels
    key = m["key"]
    if m["op"]:
        val, neg = m["val"], m["op"] == "!="
        return lambda labels: (labels.get(key) == val) != neg
    if m["setop"]:
        values = {v.strip() for v in m["set"].split(",") if v.strip()}
        if m["setop"] == "in":
            return lambda labels: labels.get(key) in values
        return lambda labels: labels.get(key) not in values
    return lambda labels: key in labels
