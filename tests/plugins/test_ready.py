"""The ready plugin: which plugins it waits for, what /ready answers before and after their first
sync and from the moment of SIGTERM, its log line, and its syntax. In-process with real sockets;
the kubernetes plugin's source is replaced by a gate the test opens."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import pytest

from clusterdns.corefile import CorefileError, parse
from clusterdns.k8s.store import Store
from clusterdns.plugins import ready
from clusterdns.plugins.ready import Ready
from clusterdns.server.app import App, Process
from tests.plugins.inprocess import get, rcode, runner, stop, write
from tests.procs import free_port


class FakeApp:
    def __init__(self, state: dict[str, bool]) -> None:
        self.state = state
        self.process = Process()

    def readiness(self, sites: Any) -> dict[str, bool]:
        return dict(self.state)


def test_names_are_sorted_and_comma_separated() -> None:
    r = Ready(FakeApp({"kubernetes": False, "autopath": False, "cache": True}), continuously=False)
    assert r.handle().status == 503 and r.handle().body == b"autopath,kubernetes"


def test_until_ready_never_asks_again_but_continuously_does() -> None:
    state = {"kubernetes": True}
    once, always = Ready(FakeApp(state), continuously=False), Ready(FakeApp(state), continuously=True)
    assert once.handle().body == b"OK" and always.handle().body == b"OK"
    state["kubernetes"] = False
    once.app.state = always.app.state = state
    assert once.handle().status == 200
    assert always.handle().status == 503 and always.handle().body == b"kubernetes"


def test_shutting_down_is_503_even_when_ready() -> None:
    app = FakeApp({"kubernetes": True})
    r = Ready(app, continuously=False)
    assert r.handle().status == 200
    app.process.stopping = True
    reply = r.handle()
    assert (reply.status, reply.body) == (503, b"Shutting down")


class Gate:
    """A kubernetes source that syncs when the test says so."""

    def __init__(self) -> None:
        self.opened = asyncio.Event()

    def synced(self) -> bool:
        return self.opened.is_set()

    async def run(self, store: Store) -> None:
        await asyncio.Event().wait()


COREFILE = """\
cluster.local:{dns} {{
    bind 127.0.0.1
    ready 127.0.0.1:{ready}
    kubernetes {{
        objects cluster.yaml
        startup_timeout 100ms
    }}
}}
example.org:{dns} {{
    bind 127.0.0.1
    kubernetes example.org {{
        objects cluster.yaml
        startup_timeout 100ms
    }}
}}
"""


def test_ready_waits_for_the_first_sync_of_its_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(ready, "LOG_EVERY", 0.05)
    dns, rport = free_port(), free_port()
    path = write(tmp_path, COREFILE, dns=dns, ready=rport)
    gate, other = Gate(), Gate()

    async def main() -> None:
        from clusterdns.server.run import Runner

        r = Runner(str(path), 53)
        r.app = app = r.load()
        app.sites[0].config.plugins["kubernetes"].source = gate  # type: ignore[attr-defined]
        app.sites[1].config.plugins["kubernetes"].source = other  # type: ignore[attr-defined]
        await app.start()
        try:
            assert await get(rport, "/ready") == (503, "kubernetes")
            assert await rcode(dns, "nope.default.svc.cluster.local.") == "SERVFAIL"  # unsynced, as CoreDNS
            await asyncio.sleep(0.2)
            gate.opened.set()
            # the block without `ready` does not count: its source never syncs
            assert await get(rport, "/ready") == (200, "OK")
            lines = caplog.text.count('plugin/ready: Still waiting on: "kubernetes"')
            await asyncio.sleep(0.2)
            assert caplog.text.count("Still waiting on") == lines  # quiet once ready
        finally:
            await stop(r)

    with caplog.at_level(logging.INFO, logger="clusterdns.ready"):
        asyncio.run(main())
    assert 'plugin/ready: Still waiting on: "kubernetes"' in caplog.text


def test_ready_after_a_real_sync(tmp_path: Path) -> None:
    dns, rport = free_port(), free_port()
    path = write(tmp_path, COREFILE, dns=dns, ready=rport)

    async def main() -> None:
        r = await runner(path)
        try:
            assert await get(rport, "/ready") == (200, "OK")
            assert await rcode(dns, "web.default.svc.cluster.local.") == "NOERROR"
        finally:
            await stop(r)

    asyncio.run(main())


def configure(text: str, tmp_path: Path) -> App:
    app = App(str(tmp_path / "Corefile"))
    app.configure(parse(text, str(tmp_path / "Corefile")))
    return app


def test_defaults_and_monitor(tmp_path: Path) -> None:
    text = ".:1053 {\n    ready\n}\na.:1053 {\n    ready {\n        monitor continuously\n    }\n}\n"
    app = configure(text, tmp_path)
    assert list(app.routes) == [("", 8181)] and list(app.routes[("", 8181)]) == ["/ready"]
    endpoint = app.services[("ready", ("", 8181))]
    assert endpoint.continuously and len(endpoint.sites) == 2


@pytest.mark.parametrize(("text", "error"), [
    ("ready a b", "2: ready: wrong argument count"),
    ("ready localhost", "2: ready: address localhost: missing port"),
    ("ready {\n        monitor\n    }", "3: ready: wrong argument count"),
    ("ready {\n        monitor sometimes\n    }", "3: ready: monitor type 'sometimes' not supported"),
    ("ready {\n        lameduck 5s\n    }", "3: ready: unknown property 'lameduck'"),
])
def test_syntax_errors(text: str, error: str, tmp_path: Path) -> None:
    with pytest.raises(CorefileError, match=f"Corefile:{error}"):
        configure(f".:1053 {{\n    {text}\n}}\n", tmp_path)
