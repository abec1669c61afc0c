"""The ``errors`` plugin: an exception below it becomes SERVFAIL and one log line, never a stack
trace to the client. Line format as CoreDNS: ``[ERROR] plugin/errors: 2 example.org. A: <error>``.

Syntax: ``errors { stacktrace }`` (``consolidate`` is accepted; see docs/plugins/errors.md).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import ClassVar

from clusterdns.corefile import Directive
from clusterdns.plugin import SERVFAIL, Next, Request, Response, Result, SiteConfig, register
from clusterdns.wire import TYPE_NAMES, reply

log = logging.getLogger("clusterdns.errors")


class Errors:
    name: ClassVar[str] = "errors"

    def __init__(self, stacktrace: bool = False) -> None:
        self.stacktrace = stacktrace

    def serve(self, req: Request, call_next: Next) -> Result:
        try:
            res = call_next(req)
        except Exception as e:
            return self._failed(req, e)
        return res if isinstance(res, Response) else self._guard(req, res)

    async def _guard(self, req: Request, pending: Awaitable[Response]) -> Response:
        try:
            return await pending
        except Exception as e:
            return self._failed(req, e)

    def _failed(self, req: Request, e: Exception) -> Response:
        """One log line, and SERVFAIL for the client."""
        qtype = TYPE_NAMES.get(req.qtype, str(req.qtype))
        log.error("[ERROR] plugin/errors: %d %s %s: %s", SERVFAIL, req.qname, qtype, str(e) or type(e).__name__,
                  exc_info=self.stacktrace)
        return Response(reply(req, SERVFAIL), SERVFAIL)


@register("errors")
def setup(d: Directive, site: SiteConfig) -> Errors:
    if d.args:
        raise d.arg_error()
    stacktrace = False
    for opt in d.options():
        match opt.name:
            case "stacktrace":
                stacktrace = True
            case "consolidate":
                if len(opt.args) < 2:
                    raise opt.arg_error()
            case _:
                raise opt.error(f"unknown property {opt.name!r}")
    return Errors(stacktrace)
