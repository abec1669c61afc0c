"""The reload plugin and Runner.reload: syntax, when a reload happens (parsed content changed,
or forced), what survives it (sockets, HTTP listeners, the kubernetes plugin's index) and what a
failed one leaves behind (the old configuration, serving). In-process, real sockets on 127.0.0.1;
the periodic check and SIGUSR1 run against the real process in tests/e2e/test_operability.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import dns.exception
import pytest

from clusterdns import metrics
from clusterdns.corefile import CorefileError, parse
from clusterdns.plugin import NOERROR, Request, Response
from clusterdns.plugins.kubernetes import Kubernetes
from clusterdns.plugins.reload import Reload
from clusterdns.server.app import App
from clusterdns.server.run import Runner
from clusterdns.wire import reply
from tests.plugins.inprocess import get, query, rcode, runner, stop, write
from tests.procs import free_port


def configure(text: str, tmp_path: Path) -> App:
    app = App(str(tmp_path / "Corefile"))
    app.configure(parse(text, str(tmp_path / "Corefile")))
    return app


@pytest.mark.parametrize(("args", "interval", "jitter"), [
    ("", 30, 15),
    ("10s", 10, 5),  # jitter capped at half the interval
    ("2s 1s", 2, 1),
    ("1m 0s", 60, 0),  # no jitter
    ("5s 2s", 5, 2),
])
def test_syntax(args: str, interval: float, jitter: float, tmp_path: Path) -> None:
    r = configure(f".:1053 {{\n    reload {args}\n}}\n", tmp_path).sites[0].config.plugins["reload"]
    assert r == Reload(interval, jitter)
    delays = [r.next_delay() for _ in range(200)]
    assert all(interval - jitter / 2 <= d <= interval + jitter / 2 for d in delays)
    assert jitter == 0 or max(delays) - min(delays) > jitter / 4


@pytest.mark.parametrize(("text", "error"), [
    ("reload 1s", "2: reload: interval value must be greater or equal to 2s"),
    ("reload 5s 500ms", "2: reload: jitter value must be greater or equal to 1s"),
    ("reload 5s 1s 1s", "2: reload: wrong argument count"),
    ("reload often", "2: reload: invalid duration 'often'"),
    ("reload {\n        interval 5s\n    }", "3: reload: unknown property 'interval'"),
])
def test_syntax_errors(text: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(CorefileError, match=f"Corefile:{error}"):
        configure(f".:1053 {{\n    {text}\n}}\n", tmp_path)


COREFILE = """\
.:{dns} {{
    bind 127.0.0.1
    health 127.0.0.1:{health}
    kubernetes cluster.local {{
        objects cluster.yaml
    }}
}}
"""


def kubernetes_of(app: App | None) -> Kubernetes:
    assert app is not None
    k = app.sites[0].config.plugins["kubernetes"]
    assert isinstance(k, Kubernetes)
    return k


def sockets(app: App | None) -> set[Any]:
    assert app is not None
    return {listener.sock for listener in app.listeners}


def failures() -> float:
    return metrics.REGISTRY.values[metrics.RELOAD_FAILED.name].get((), 0)


def test_unchanged_ports_keep_their_sockets_and_kubernetes_keeps_its_index(tmp_path: Path) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)

    async def main() -> None:
        r = await runner(path)
        try:
            old, k = r.app, kubernetes_of(r.app)
            task, index, socks = k._task, k.index, sockets(r.app)
            assert task is not None
            http_listener = r.process.http.listeners[("127.0.0.1", ports["health"])]
            assert await r.reload() is False  # nothing changed
            path.write_text("# a comment\n" + path.read_text().replace("    bind", "\n\n  bind"))
            assert await r.reload() is False  # layout and comments do not count
            assert r.app is old
            path.write_text(path.read_text().replace("    health", "    errors\n    health"))
            assert await r.reload() is True
            new = kubernetes_of(r.app)
            assert r.app is not old and new is not k
            assert new.index is index and new._task is task and not task.done()  # the watch goes on
            assert sockets(r.app) == socks  # the very same sockets: no gap in listening
            assert r.process.http.listeners[("127.0.0.1", ports["health"])] is http_listener
            assert "errors" in r.app.sites[0].config.plugins  # type: ignore[union-attr]
            assert await rcode(ports["dns"], "web.default.svc.cluster.local.") == "NOERROR"
            assert await get(ports["health"], "/health") == (200, "OK")
            assert await r.reload(force=True) is True  # SIGUSR1 reloads even an unchanged file
            assert kubernetes_of(r.app).index is index
        finally:
            await stop(r)

    asyncio.run(main())


def test_changed_kubernetes_options_build_a_new_index(tmp_path: Path) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)

    async def main() -> None:
        r = await runner(path)
        try:
            k = kubernetes_of(r.app)
            assert (await query(ports["dns"], "web.default.svc.cluster.local.")).answer[0].ttl == 5
            path.write_text(path.read_text().replace("objects cluster.yaml", "objects cluster.yaml\n        ttl 30"))
            assert await r.reload() is True
            assert kubernetes_of(r.app).index is not k.index
            assert k._task is not None and k._task.done()  # the old watch was stopped
            assert (await query(ports["dns"], "web.default.svc.cluster.local.")).answer[0].ttl == 30
        finally:
            await stop(r)

    asyncio.run(main())


def test_ports_move(tmp_path: Path) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)
    new_dns, new_health = free_port(), free_port()

    async def main() -> None:
        r = await runner(path)
        try:
            path.write_text(COREFILE.format(dns=new_dns, health=new_health))
            assert await r.reload() is True
            assert await rcode(new_dns, "web.default.svc.cluster.local.") == "NOERROR"
            assert await get(new_health, "/health") == (200, "OK")
            with pytest.raises(OSError):
                await get(ports["health"], "/health")
            with pytest.raises(dns.exception.Timeout):
                await query(ports["dns"], "web.default.svc.cluster.local.", timeout=0.3)
        finally:
            await stop(r)

    asyncio.run(main())


async def slow(req: Request) -> Response:
    await asyncio.sleep(0.3)  # e.g. waiting on an upstream
    return Response(reply(req, NOERROR), NOERROR, "slow")


def test_queries_in_flight_finish_on_the_old_chain(tmp_path: Path) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)
    new_dns = free_port()

    async def main() -> None:
        r = await runner(path)
        try:
            disp = r.app.dispatchers[("127.0.0.1", ports["dns"])]  # type: ignore[union-attr]
            disp.add(".", slow, "dns://")
            pending = asyncio.ensure_future(query(ports["dns"], "x.example."))
            while disp.inflight < 1:
                await asyncio.sleep(0.01)
            path.write_text(COREFILE.format(dns=new_dns, health=ports["health"]))  # the old port goes away
            assert await r.reload() is True
            assert (await pending).rcode() == NOERROR  # answered on the old port before it closed
            assert disp.inflight == 0
            assert await rcode(new_dns, "web.default.svc.cluster.local.") == "NOERROR"
        finally:
            await stop(r)

    asyncio.run(main())


def test_broken_corefile_keeps_the_old_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)
    good = path.read_text()

    async def main() -> None:
        r = await runner(path)
        try:
            old, k, before = r.app, kubernetes_of(r.app), failures()
            path.write_text(good.replace("objects cluster.yaml", "objects cluster.yaml\n        ttl forever"))
            assert await r.reload() is False
            assert failures() == before + 1
            assert f"{path}:6: kubernetes: ttl must be an integer" in caplog.text
            assert r.app is old and k._task is not None and not k._task.done()  # handed back, still watching
            assert await r.reload() is False and failures() == before + 1  # the same content is not retried
            assert await r.reload(force=True) is False and failures() == before + 2
            path.write_text(good.replace("    health", "    health {"))  # does not even parse
            assert await r.reload() is False and failures() == before + 3
            assert await r.reload() is False and failures() == before + 3
            assert await rcode(ports["dns"], "web.default.svc.cluster.local.") == "NOERROR"
            assert await get(ports["health"], "/health") == (200, "OK")
            path.write_text(good.replace("objects cluster.yaml", "objects cluster.yaml\n        ttl 7"))
            assert await r.reload() is True  # fixed: reloads again
        finally:
            await stop(r)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert "plugin/reload: Corefile changed but reload failed" in caplog.text


def test_port_in_use_fails_the_reload_and_changes_nothing(tmp_path: Path) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)
    new_health = free_port()

    async def main() -> None:
        r = await runner(path)
        busy = await asyncio.start_server(lambda _r, _w: None, "127.0.0.1", 0)
        taken = busy.sockets[0].getsockname()[1]
        try:
            old, k, socks, before = r.app, kubernetes_of(r.app), sockets(r.app), failures()
            # a new HTTP port that binds, and a DNS port already taken: all or nothing
            path.write_text(COREFILE.format(dns=ports["dns"], health=new_health)
                            + f"example.org:{taken} {{\n    bind 127.0.0.1\n}}\n")
            assert await r.reload() is False and failures() == before + 1
            assert r.app is old and sockets(r.app) == socks
            assert k._task is not None and not k._task.done()
            assert await get(ports["health"], "/health") == (200, "OK")
            with pytest.raises(OSError):  # the listener bound for the failed configuration is gone
                await get(new_health, "/health")
        finally:
            busy.close()
            await stop(r)

    asyncio.run(main())


def test_reload_version_info_follows_the_running_configuration(tmp_path: Path) -> None:
    ports = {"dns": free_port(), "health": free_port()}
    path = write(tmp_path, COREFILE, **ports)

    async def main() -> None:
        r = await runner(path)
        try:
            r._running(r.app)  # type: ignore[arg-type]
            info = metrics.REGISTRY.values[metrics.RELOAD_VERSION.name]
            assert list(info) == [("sha512", r.app.checksum)]  # type: ignore[union-attr]
            path.write_text(path.read_text().replace("    health", "    errors\n    health"))
            assert await r.reload() is True
            assert list(info) == [("sha512", r.app.checksum)] and len(r.app.checksum) == 128  # type: ignore[union-attr]
        finally:
            await stop(r)

    asyncio.run(main())


def test_next_check_follows_the_running_configuration(tmp_path: Path) -> None:
    path = write(tmp_path, ".:1053 {{\n    reload 2s 1s\n}}\n")
    r = Runner(str(path), 53)
    r.app = r.load()
    assert 1.5 <= r._next_check() <= 2.5  # type: ignore[operator]
    path.write_text(".:1053 {\n    errors\n}\n")
    r.app = r.load()
    assert r._next_check() is None
