"""The ``bind`` plugin: listen only on the given addresses, e.g. ``bind 127.0.0.1 ::1``.

Syntax: ``bind ADDRESS... { except ADDRESS... }``. Only IP addresses are accepted (no interface
names); it never enters the query path.
"""

from __future__ import annotations

import ipaddress

from clusterdns.corefile import Directive
from clusterdns.plugin import SiteConfig, register


def _addresses(d: Directive, values: list[str]) -> list[str]:
    out = []
    for v in values:
        try:
            out.append(str(ipaddress.ip_address(v)))
        except ValueError:
            raise d.error(f"not an IP address: {v!r} (interface names are not supported)") from None
    return out


@register("bind")
def setup(d: Directive, site: SiteConfig) -> None:
    if not d.args:
        raise d.arg_error()
    addrs = _addresses(d, d.args)
    for opt in d.options():
        if opt.name != "except":
            raise opt.error(f"unknown property {opt.name!r}")
        excluded = set(_addresses(opt, opt.args))
        addrs = [a for a in addrs if a not in excluded]
    if not addrs:
        raise d.error("no address left to bind")
    site.binds = list(dict.fromkeys(addrs))
