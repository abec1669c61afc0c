"""Helpers for tests that run an App or Runner inside the test's own event loop, on real
127.0.0.1 sockets: write a Corefile, query DNS and GET HTTP paths without blocking the loop."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from pathlib import Path

import dns.message
import dns.query
import dns.rcode

from clusterdns.server.run import Runner

CLUSTER = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.0.0.80, ports: [{name: http, port: 80}]}
"""


def write(tmp_path: Path, text: str, **ports: int) -> Path:
    """The Corefile ``text`` (``{name}`` replaced by ``ports[name]``) with cluster.yaml beside it."""
    (tmp_path / "cluster.yaml").write_text(CLUSTER)
    path = tmp_path / "Corefile"
    path.write_text(text.format(**ports))
    return path


async def runner(path: Path) -> Runner:
    """A Runner with its first configuration started (signals are left to the test process)."""
    r = Runner(str(path), 53)
    r.app = r.load()
    await r.app.start()
    return r


async def stop(r: Runner) -> None:
    assert r.app is not None
    await r.app.shutdown()
    r.process.http.close()


def _query(port: int, name: str, rdtype: str, timeout: float) -> dns.message.Message:
    return dns.query.udp(dns.message.make_query(name, rdtype), "127.0.0.1", port=port, timeout=timeout)


async def query(port: int, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
    """A real UDP query from a thread, so the server in this loop can answer it."""
    return await asyncio.to_thread(_query, port, name, rdtype, timeout)


async def rcode(port: int, name: str) -> str:
    return dns.rcode.to_text((await query(port, name)).rcode())


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


async def get(port: int, path: str) -> tuple[int, str]:
    """GET ``path`` with urllib from a thread: (status, body)."""
    return await asyncio.to_thread(_get, port, path)
