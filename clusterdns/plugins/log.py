"""The ``log`` plugin: one line per query, in CoreDNS's Common Log Format by default::

    [INFO] 127.0.0.1:50759 - 29008 "A IN example.org. udp 41 false 4096" NOERROR qr,aa,rd 68 0.000037990s

Syntax: ``log [NAMES...] [FORMAT] { class success|denial|error|all }``. FORMAT may use {remote}
{port} {>id} {type} {class} {name} {proto} {size} {>do} {>bufsize} {rcode} {>rflags} {rsize}
{duration} {>opcode}, or be {common} / {combined}.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Awaitable
from typing import ClassVar

from clusterdns.corefile import Directive
from clusterdns.plugin import NOERROR, NXDOMAIN, Next, Request, Response, Result, SiteConfig, register
from clusterdns.wire import RCODE_NAMES, TYPE_NAMES

log = logging.getLogger("clusterdns.log")

COMMON = (
    '{remote}:{port} - {>id} "{type} {class} {name} {proto} {size} {>do} {>bufsize}" '
    "{rcode} {>rflags} {rsize} {duration}"
)
COMBINED = COMMON + ' "{>opcode}"'
CLASSES = ("success", "denial", "error", "all")
_FLAG_BITS = (("qr", 0x8000), ("aa", 0x0400), ("tc", 0x0200), ("rd", 0x0100), ("ra", 0x0080),
              ("z", 0x0040), ("ad", 0x0020), ("cd", 0x0010))
_PLACEHOLDER = re.compile(r"\{>?[a-z]+\}")


def question_name(req: Request) -> str:
    """The question's name in the client's own case."""
    data, off, labels = req.data, 12, []
    while data[off]:
        ln = data[off]
        labels.append(data[off + 1 : off + 1 + ln].decode("latin-1"))
        off += 1 + ln
    return ".".join(labels) + "."


def _remote(host: str) -> str:
    """The client as CoreDNS prints it: IPv4-mapped IPv6 as plain IPv4, IPv6 in brackets."""
    if host.startswith("::ffff:") and "." in host:
        return host[7:]
    return f"[{host}]" if ":" in host else host


def response_class(resp: Response) -> str:
    if resp.rcode == NXDOMAIN or (resp.rcode == NOERROR and resp.wire[6:8] == b"\x00\x00"):
        return "denial"
    return "success" if resp.rcode == NOERROR else "error"


class Log:
    name: ClassVar[str] = "log"

    def __init__(self, names: list[str], fmt: str, classes: set[str]) -> None:
        self.names = names
        self.fmt = fmt
        self.classes = classes

    def serve(self, req: Request, call_next: Next) -> Result:
        start = time.perf_counter()
        res = call_next(req)
        if isinstance(res, Response):
            return self._logged(req, res, start)
        return self._later(req, res, start)

    async def _later(self, req: Request, pending: Awaitable[Response], start: float) -> Response:
        return self._logged(req, await pending, start)

    def _logged(self, req: Request, resp: Response, start: float) -> Response:
        """Log the answer when its name and class are selected; the answer itself is unchanged."""
        if self.names and not any(n == "." or req.qname == n or req.qname.endswith("." + n) for n in self.names):
            return resp
        if "all" not in self.classes and response_class(resp) not in self.classes:
            return resp
        log.info("%s", self.line(req, resp, time.perf_counter() - start))
        return resp

    def line(self, req: Request, resp: Response, duration: float) -> str:
        flags = resp.wire[2] << 8 | resp.wire[3]
        rsize = len(resp.wire) + (11 if req.edns and not resp.has_opt else 0)
        values = {
            "{remote}": _remote(str(req.client[0])),
            "{port}": str(req.client[1]),
            "{>id}": str(req.id),
            "{type}": TYPE_NAMES.get(req.qtype, f"TYPE{req.qtype}"),
            "{class}": "IN" if req.qclass == 1 else f"CLASS{req.qclass}",
            "{name}": question_name(req),
            "{proto}": req.proto,
            "{size}": str(len(req.data)),
            "{>do}": "true" if req.do else "false",
            "{>bufsize}": str(req.udp_size),
            "{rcode}": RCODE_NAMES.get(resp.rcode, str(resp.rcode)),
            "{>rflags}": ",".join(n for n, bit in _FLAG_BITS if flags & bit),
            "{rsize}": str(rsize),
            "{duration}": f"{duration:.9f}s",
            "{>opcode}": str((req.flags >> 11) & 0xF),
        }
        return _PLACEHOLDER.sub(lambda m: values.get(m[0], m[0]), self.fmt)


@register("log")
def setup(d: Directive, site: SiteConfig) -> Log:
    names, fmt = [], COMMON
    for a in d.args:
        if a == "{common}":
            fmt = COMMON
        elif a == "{combined}":
            fmt = COMBINED
        elif "{" in a:
            fmt = a
        else:
            names.append(a.lower() if a.endswith(".") else a.lower() + ".")
    classes: set[str] = set()
    for opt in d.options():
        if opt.name != "class":
            raise opt.error(f"unknown property {opt.name!r}")
        if not opt.args or any(c not in CLASSES for c in opt.args):
            raise opt.error(f"class takes {', '.join(CLASSES)}")
        classes.update(opt.args)
    return Log(names, fmt, classes or {"all"})
