"""The kubernetes plugin's query path in-process: names remembered as missing stop being missing
the moment the cluster changes, and the memo stays bounded."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from clusterdns.corefile import parse_file
from clusterdns.k8s.objects import from_dict
from clusterdns.plugin import NOERROR, NXDOMAIN, REFUSED, Request, Response
from clusterdns.plugins import kubernetes as k8s
from clusterdns.server.app import App
from clusterdns.wire import T_A, T_AXFR, encode_name, parse_query
from tests.plugins.inprocess import write
from tests.procs import free_port

COREFILE = """\
cluster.local:{port} {{
    bind 127.0.0.1
    kubernetes cluster.local {{
        objects cluster.yaml
    }}
}}
"""


def request(name: str, qtype: int = T_A) -> Request:
    data = struct.pack(">HHHHHH", 9, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", qtype, 1)
    return parse_query(data, "udp", ("127.0.0.1", 5300))


def end(req: Request) -> Response:
    raise AssertionError(f"{req.qname} fell through")


def service(name: str, ip: str) -> dict[str, object]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": "default"}, "spec": {"clusterIP": ip}}


def rcode(plugin: k8s.Kubernetes, name: str, qtype: int = T_A) -> int:
    res = plugin.serve(request(name, qtype), end)
    assert isinstance(res, Response)  # cluster names never wait
    return res.rcode


def with_plugin(tmp_path: Path, test: object) -> None:
    async def main() -> None:
        app = App(str(write(tmp_path, COREFILE, port=free_port())))
        app.configure(parse_file(app.corefile))
        await app.start()
        try:
            plugin = next(p for p in app.sites[0].plugins if isinstance(p, k8s.Kubernetes))
            test(plugin)  # type: ignore[operator]
        finally:
            await app.shutdown()
            app.process.http.close()

    asyncio.run(main())


def test_a_missing_name_resolves_as_soon_as_it_is_created(tmp_path: Path) -> None:
    def test(plugin: k8s.Kubernetes) -> None:
        name = "new.default.svc.cluster.local."
        assert rcode(plugin, name) == NXDOMAIN
        assert name in plugin._nx  # remembered
        assert rcode(plugin, name) == NXDOMAIN  # from the memo
        assert rcode(plugin, name, T_AXFR) == REFUSED  # zone transfers are refused, memo or not
        plugin.store.upsert(from_dict(service("new", "10.0.0.77")))
        assert rcode(plugin, name) == NOERROR
        assert name not in plugin._nx
        plugin.store.delete(("Service", "default", "new"))
        assert rcode(plugin, name) == NXDOMAIN

    with_plugin(tmp_path, test)


def test_the_memo_of_missing_names_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(k8s, "NX_MEMO", 50)

    def test(plugin: k8s.Kubernetes) -> None:
        for i in range(500):
            assert rcode(plugin, f"gone-{i}.default.svc.cluster.local.") == NXDOMAIN
            assert len(plugin._nx) <= 50
        assert rcode(plugin, "web.default.svc.cluster.local.") == NOERROR

    with_plugin(tmp_path, test)
