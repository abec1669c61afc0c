"""The health plugin: syntax, the /health endpoint and its self-check metrics (in-process, real
sockets). Lameduck on SIGTERM is tested against the real process in tests/e2e/test_operability.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest

from clusterdns import metrics
from clusterdns.corefile import CorefileError, parse
from clusterdns.plugin import NOERROR, Request, Response
from clusterdns.plugins import health
from clusterdns.server.app import App
from clusterdns.wire import reply
from tests.plugins.inprocess import get, query, runner, stop, write
from tests.procs import free_port


def configure(text: str, tmp_path: Path) -> App:
    app = App(str(tmp_path / "Corefile"))
    app.configure(parse(text, str(tmp_path / "Corefile")))
    return app


def test_defaults(tmp_path: Path) -> None:
    app = configure(".:1053 {\n    health\n}\n", tmp_path)
    assert list(app.routes) == [("", 8080)] and list(app.routes[("", 8080)]) == ["/health"]
    assert app.lameduck == 0
    assert "health" not in app.sites[0].config.plugins  # not in the query path


def test_lameduck_and_one_endpoint_per_address(tmp_path: Path) -> None:
    app = configure("""\
a.:1053 {
    health :8080 {
        lameduck 5s
    }
}
b.:1053 {
    health :8080 {
        lameduck 1500ms
    }
}
c.:1053 {
    health 127.0.0.1:8081
}
""", tmp_path)
    assert app.lameduck == 5.0  # the longest one wins: it is one process
    assert sorted(app.routes) == [("", 8080), ("127.0.0.1", 8081)]
    assert len(app.sites[0].config.on_startup) == 1 and app.sites[1].config.on_startup == []


@pytest.mark.parametrize(("text", "error"), [
    ("health a b", "2: health: wrong argument count"),
    ("health 8080", "2: health: address 8080: missing port"),
    ("health {\n        lameduck\n    }", "3: health: wrong argument count"),
    ("health {\n        lameduck soon\n    }", "3: health: unable to parse lameduck duration value: 'soon'"),
    ("health {\n        overloaded\n    }", "3: health: unknown property 'overloaded'"),
])
def test_syntax_errors(text: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(CorefileError, match=f"Corefile:{error}"):
        configure(f".:1053 {{\n    {text}\n}}\n", tmp_path)


def test_endpoint_and_self_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "CHECK_EVERY", 0.05)
    hport = free_port()
    path = write(tmp_path, ".:{dns} {{\n    bind 127.0.0.1\n    health 127.0.0.1:{h}\n}}\n", dns=free_port(), h=hport)
    hist = metrics.REGISTRY.histograms[metrics.HEALTH_DURATION.name]
    before = hist[()].n if () in hist else 0
    failures = metrics.REGISTRY.values[metrics.HEALTH_FAILURES.name].get((), 0)

    async def main() -> None:
        r = await runner(path)
        try:
            assert await get(hport, "/health") == (200, "OK")
            assert (await get(hport, "/metrics"))[0] == 404
            await asyncio.sleep(0.4)
        finally:
            await stop(r)

    asyncio.run(main())
    assert hist[()].n - before >= 3  # it probed itself through the listener every 50 ms
    assert hist[()].total / hist[()].n < 1.0
    assert metrics.REGISTRY.values[metrics.HEALTH_FAILURES.name].get((), 0) == failures


def test_self_check_counts_failures(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(health, "CHECK_EVERY", 0.05)
    closed = free_port()  # nothing listens there
    failures = metrics.REGISTRY.values[metrics.HEALTH_FAILURES.name].get((), 0)

    async def main() -> None:
        h = health.Health(("127.0.0.1", closed), f"127.0.0.1:{closed}")
        await h.start()
        await asyncio.sleep(0.3)
        await h.stop()

    with caplog.at_level(logging.WARNING, logger="clusterdns.health"):
        asyncio.run(main())
    assert metrics.REGISTRY.values[metrics.HEALTH_FAILURES.name][()] - failures >= 2
    assert f'Local health request to "http://127.0.0.1:{closed}/health" failed' in caplog.text


async def slow(req: Request) -> Response:
    await asyncio.sleep(0.3)  # e.g. waiting on an upstream
    return Response(reply(req, NOERROR), NOERROR, "slow")


def _tcp_query(port: int) -> dns.message.Message:
    return dns.query.tcp(dns.message.make_query("x.example.", "A"), "127.0.0.1", port=port, timeout=2)


def test_shutdown_answers_the_queries_in_flight_then_closes(tmp_path: Path) -> None:
    port = free_port()
    path = write(tmp_path, ".:{dns} {{\n    bind 127.0.0.1\n}}\n", dns=port)

    async def main() -> None:
        r = await runner(path)
        assert r.app is not None
        disp = r.app.dispatchers[("127.0.0.1", port)]
        disp.add(".", slow, f"dns://127.0.0.1:{port}")
        udp = asyncio.ensure_future(query(port, "x.example."))
        tcp = asyncio.ensure_future(asyncio.to_thread(_tcp_query, port))
        while disp.inflight < 2:
            await asyncio.sleep(0.01)
        await stop(r)  # stop reading, drain, close, hooks
        assert (await udp).rcode() == NOERROR and (await tcp).rcode() == NOERROR
        with pytest.raises(dns.exception.Timeout):
            await query(port, "x.example.", timeout=0.3)
        with pytest.raises(ConnectionRefusedError):
            await asyncio.to_thread(_tcp_query, port)

    asyncio.run(main())
