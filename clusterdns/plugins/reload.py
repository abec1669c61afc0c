"""The ``reload`` plugin: reload the Corefile when its content changes, without a restart.

Syntax: ``reload [INTERVAL] [JITTER]``. Defaults 30s and 15s; INTERVAL must be at least 2s and
JITTER at least 1s (or 0 for none); JITTER is capped at INTERVAL/2. The Corefile is parsed every
INTERVAL ± JITTER/2 and the SHA-512 of the parsed configuration (so comments and layout do not
count) compared with the running one's; the runner (clusterdns/server/run.py) does the swap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from clusterdns.corefile import Directive
from clusterdns.duration import parse_duration
from clusterdns.plugin import SiteConfig, register

DEFAULT_INTERVAL, DEFAULT_JITTER = 30.0, 15.0
MIN_INTERVAL, MIN_JITTER = 2.0, 1.0


@dataclass(frozen=True)
class Reload:
    """How often to look at the Corefile."""

    name: ClassVar[str] = "reload"
    interval: float
    jitter: float

    def next_delay(self) -> float:
        """Seconds until the next check: INTERVAL moved by up to JITTER/2 either way, so replicas
        started together do not all reload at the same moment."""
        return self.interval + random.uniform(-self.jitter / 2, self.jitter / 2)


def _duration(d: Directive, text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as e:
        raise d.error(str(e)) from None


@register("reload")
def setup(d: Directive, site: SiteConfig) -> Reload:
    if len(d.args) > 2:
        raise d.arg_error()
    for opt in d.options():
        match opt.name:
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    interval = _duration(d, d.args[0]) if d.args else DEFAULT_INTERVAL
    if interval < MIN_INTERVAL:
        raise d.error("interval value must be greater or equal to 2s")
    jitter = _duration(d, d.args[1]) if len(d.args) > 1 else DEFAULT_JITTER
    if 0 < jitter < MIN_JITTER:
        raise d.error("jitter value must be greater or equal to 1s")
    return Reload(interval, min(jitter, interval / 2))
