"""Shared fixtures: a factory that starts the real clusterdns process on a free loopback port."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.procs import ROOT, Server, free_port

StartServer = Callable[..., Server]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """``start_server(corefile_text, files={name: text}, ready=True)`` -> a running Server.

    The Corefile is written into a fresh directory with ``files`` beside it; ``{port}`` in the
    text is replaced by the server's port. Every server started is stopped at the end.
    """
    started: list[Server] = []

    def start(corefile: str, files: dict[str, str] | None = None, ready: bool = True,
              args: tuple[str, ...] = (), env: dict[str, str] | None = None) -> Server:
        port = free_port()
        d = tmp_path / f"srv{len(started)}"
        d.mkdir()
        for name, text in (files or {}).items():
            (d / name).parent.mkdir(parents=True, exist_ok=True)
            (d / name).write_text(text)
        path = d / "Corefile"
        path.write_text(corefile.replace("{port}", str(port)))
        srv = Server(path, port, args, env)
        started.append(srv)
        return srv.wait_ready() if ready else srv

    yield start
    for srv in started:
        srv.stop()


DEMO_COREFILE = """\
.:{port} {
    bind 127.0.0.1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        objects cluster.yaml
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }
}
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The demo cluster (examples/cluster.yaml) served by one process for a whole test module."""
    d = tmp_path_factory.mktemp("demo")
    shutil.copy(ROOT / "examples" / "cluster.yaml", d / "cluster.yaml")
    port = free_port()
    (d / "Corefile").write_text(DEMO_COREFILE.replace("{port}", str(port)))
    srv = Server(d / "Corefile", port).wait_ready()
    yield srv
    srv.stop()
