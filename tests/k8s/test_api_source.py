"""The API source in-process: HTTP reading, list/watch, 410 relists, errors, backoff, stalls.

Everything runs against the fake API server on 127.0.0.1 (or a raw asyncio server for HTTP framing),
with a real Store and Index; the end-to-end behaviour through the process is in tests/e2e/test_watch.py.
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clusterdns.k8s.index import Index
from clusterdns.k8s.objects import Object, from_dict, key_of
from clusterdns.k8s.records import Options
from clusterdns.k8s.resources import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES
from clusterdns.k8s.sources.api import ApiSource, Client, Credentials, Health, HttpError, credentials, watches
from clusterdns.k8s.sources.reflector import BATCH, Reflector, Watch
from clusterdns.k8s.store import Store
from clusterdns.plugins.kubernetes import Config
from clusterdns.wire import T_A
from tests.k8sapi.server import FakeApiServer
from tests.procs import ROOT

ZONE = "cluster.local."
FAST = (0.02, 0.1)  # backoff for tests: base, cap


def svc(name: str, ip: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"clusterIP": ip, "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def a_of(store: Store, name: str) -> set[str]:
    return {str(v) for t, v in store.index.records(f"{name}.default.svc.{ZONE}") if t == T_A}


def new_store() -> Store:
    return Store(Index([ZONE, "in-addr.arpa."], 5), Options((ZONE,)))


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval=0.1)
    srv.start()
    try:
        yield srv
    finally:
        # Let the server's loop take in the connections we just closed: FakeApiServer.stop() can
        # otherwise leave a just-accepted socket unclosed (ResourceWarning; reported to its owner).
        time.sleep(0.05)
        srv.stop()
        gc.collect()  # any leak is then blamed on the test that caused it


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> float:
    """Seconds until ``cond()`` holds; fails the test after ``timeout``."""
    start = time.monotonic()
    while not cond():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.005)
    return time.monotonic() - start


def running(api: FakeApiServer, body: Callable[[ApiSource, Store], Awaitable[None]],
            watched: tuple[Watch, ...] = (Watch(SERVICES),), idle_timeout: float = 30.0,
            backoff: tuple[float, float] = FAST) -> None:
    """Run an ApiSource for ``api`` around ``body(source, store)``, then cancel it."""
    async def main() -> None:
        src = ApiSource(Credentials(api.url), list(watched), idle_timeout, backoff)
        store = new_store()
        task = asyncio.get_running_loop().create_task(src.run(store))
        try:
            await body(src, store)
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(main())


def watch_requests(api: FakeApiServer, plural: str = "services") -> list[str]:
    return [p for _, p in api.requests if f"/{plural}?" in p and "watch=true" in p]


# ------------------------------------------------------------------------------ list and watch

def test_list_then_watch_keeps_the_store_in_step(api: FakeApiServer) -> None:
    api.apply(svc("web", "10.0.0.1"))

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        assert a_of(store, "web") == {"10.0.0.1"}
        api.apply(svc("web", "10.0.0.2"))
        api.apply(svc("db", "10.0.0.3"))
        await until(lambda: a_of(store, "web") == {"10.0.0.2"} and a_of(store, "db") == {"10.0.0.3"}, 1)
        api.delete("Service", "default", "web")
        await until(lambda: not a_of(store, "web"), 1)

    running(api, body)
    lst, w = api.requests[0][1], watch_requests(api)[0]
    assert lst == "/api/v1/services?limit=500"
    assert "resourceVersion=101" in w and "allowWatchBookmarks=true" in w and "timeoutSeconds=" in w


def test_list_is_paginated_by_500(api: FakeApiServer) -> None:
    for i in range(1203):
        api.apply(svc(f"s{i}", f"10.1.{i // 250}.{i % 250 + 1}"))

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        assert a_of(store, "s1202") == {"10.1.4.203"}
        assert sum(1 for k in store.objects if k[0] == "Service") == 1203

    running(api, body)
    lists = [p for _, p in api.requests if "watch=" not in p]
    assert len(lists) == 3 and all("limit=500" in p for p in lists)
    assert "continue=" not in lists[0] and all("continue=" in p for p in lists[1:])


def test_bookmarks_advance_the_resource_version(api: FakeApiServer) -> None:
    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        listed = src.reflectors[0].rv
        api.apply(svc("other", "10.0.0.9", ns="elsewhere"))  # a change the selector hides from us
        await until(lambda: src.reflectors[0].rv != listed, 2)  # only a BOOKMARK can tell us
        assert not store.objects

    running(api, body, (Watch(SERVICES, label_selector="app=dns"),))


def test_410_relists_and_removes_what_was_deleted_in_the_gap(api: FakeApiServer,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    api.apply(svc("gone", "10.0.0.1"))
    api.apply(svc("kept", "10.0.0.2"))

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        api.delete_silently("Service", "default", "gone")  # no event, history compacted
        api.drop_watches()
        # only once the old stream is gone: an event it carried would move us past the gap (no 410)
        await until(lambda: len(watch_requests(api)) >= 2, 2)
        api.apply(svc("new", "10.0.0.3"))
        await until(lambda: not a_of(store, "gone") and a_of(store, "new") == {"10.0.0.3"}, 2)
        assert a_of(store, "kept") == {"10.0.0.2"}

    with caplog.at_level(logging.INFO, "clusterdns.kubernetes"):
        running(api, body)
    assert "expired; listing again" in caplog.text
    assert len([p for _, p in api.requests if "watch=" not in p]) == 2


def test_in_band_error_other_than_410_rewatches_without_relisting(api: FakeApiServer) -> None:
    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        await until(lambda: api.watch_count() == 1)
        api.inject_raw_event("Service", json.dumps({"type": "ERROR", "object": {
            "kind": "Status", "code": 500, "reason": "InternalError", "message": "etcd hiccup"}}))
        await until(lambda: len(watch_requests(api)) == 2, 2)
        api.apply(svc("after", "10.0.0.4"))
        await until(lambda: a_of(store, "after") == {"10.0.0.4"}, 2)

    running(api, body)
    assert len([p for _, p in api.requests if "watch=" not in p]) == 1


# ------------------------------------------------------------------------------ bad objects

def test_malformed_events_are_skipped_and_nothing_else_is_lost(api: FakeApiServer,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        await until(lambda: api.watch_count() == 1)
        api.inject_raw_event("Service", "{not json")
        api.inject_raw_event("Service", json.dumps({"type": "ADDED", "object": {
            "kind": "Service", "metadata": {"name": "bad", "namespace": "team"}, "spec": {"clusterIP": "bogus"}}}))
        api.apply(svc("good", "10.0.0.5"))
        await until(lambda: a_of(store, "good") == {"10.0.0.5"}, 1)

    with caplog.at_level(logging.WARNING, "clusterdns.kubernetes"):
        running(api, body)
    assert "skipping a watch line that is not JSON" in caplog.text
    assert "skipping Service team/bad" in caplog.text
    assert len(watch_requests(api)) == 1  # the stream went on


def test_a_malformed_update_keeps_the_last_good_version_also_on_relist(api: FakeApiServer,
                                                                       caplog: pytest.LogCaptureFixture) -> None:
    api.apply(svc("web", "10.0.0.1"))

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        api.apply(svc("web", "not-an-ip"))
        api.apply(svc("marker", "10.0.0.7"))
        await until(lambda: bool(a_of(store, "marker")), 1)
        assert a_of(store, "web") == {"10.0.0.1"}
        api.compact()
        api.drop_watches()
        await until(lambda: len([p for _, p in api.requests if "watch=" not in p]) == 2, 2)
        await until(lambda: len(watch_requests(api)) >= 3, 2)  # relisted and watching again
        assert a_of(store, "web") == {"10.0.0.1"}

    with caplog.at_level(logging.WARNING, "clusterdns.kubernetes"):
        running(api, body)
    assert caplog.text.count("skipping Service default/web") == 2  # once in the watch, once in the list


# ------------------------------------------------------------------------------ failures

def test_429_honours_retry_after(api: FakeApiServer) -> None:
    api.fail_next(1, 429, retry_after=1)

    async def body(src: ApiSource, store: Store) -> None:
        took = await until(src.synced)
        assert 1.0 <= took < 2.0

    running(api, body)


def test_500s_back_off_then_recover(api: FakeApiServer, caplog: pytest.LogCaptureFixture) -> None:
    api.fail_next(4, 500)

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced, 3)
        await until(lambda: api.watch_count() == 1)

    with caplog.at_level(logging.INFO, "clusterdns.kubernetes"):
        running(api, body)
    assert len(api.requests) == 5 + 1  # 4 failed lists, the good one, the watch
    assert caplog.text.count("API unreachable") == 1
    assert "HTTP 500 InternalError: injected failure (500)" in caplog.text
    assert caplog.text.count("reachable again") == 1


def test_403_is_logged_once_with_the_missing_rbac_rule(api: FakeApiServer,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    api.fail_next(5, 403)

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced, 3)

    with caplog.at_level(logging.INFO, "clusterdns.kubernetes"):
        running(api, body, (Watch(ENDPOINTSLICES),))
    rule = ("cannot list endpointslices.discovery.k8s.io: RBAC needs list,watch on endpointslices "
            "in apiGroup discovery.k8s.io")
    assert caplog.text.count(rule) == 1
    assert "API unreachable" not in caplog.text  # a permission problem, not an outage


def test_outage_is_logged_once_and_the_store_is_kept(api: FakeApiServer,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    api.apply(svc("web", "10.0.0.1"))

    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        await asyncio.to_thread(api.stop)
        api.apply(svc("web", "10.0.0.2"))  # changed while we cannot see it
        await asyncio.sleep(1.0)  # many retries at the 0.1 s cap
        assert a_of(store, "web") == {"10.0.0.1"} and src.synced()
        await asyncio.to_thread(api.start)
        await until(lambda: a_of(store, "web") == {"10.0.0.2"}, 2)
        await until(lambda: not src.health.failing, 2)  # the namespaces watch is back too

    with caplog.at_level(logging.INFO, "clusterdns.kubernetes"):
        running(api, body, (Watch(SERVICES), Watch(NAMESPACES)))
    assert caplog.text.count("API unreachable") == 1
    assert caplog.text.count("reachable again") == 1


def test_stalled_watch_is_detected_and_reconnected(api: FakeApiServer, caplog: pytest.LogCaptureFixture) -> None:
    async def body(src: ApiSource, store: Store) -> None:
        await until(src.synced)
        api.stall_watches(60)
        api.apply(svc("late", "10.0.0.8"))
        await until(lambda: len(watch_requests(api)) >= 2, 2)  # gave up on the silent stream
        api.stall_watches(0)
        await until(lambda: a_of(store, "late") == {"10.0.0.8"}, 2)

    with caplog.at_level(logging.INFO, "clusterdns.kubernetes"):
        running(api, body, idle_timeout=0.5)
    assert "not even a bookmark, for 0.5s" in caplog.text


def test_backoff_is_jittered_exponential_capped_and_honours_retry_after() -> None:
    r = Reflector(Client(Credentials("http://127.0.0.1:1")), Watch(SERVICES), Health(""), 1.0, (0.2, 30.0))
    delays = [r._delay() for _ in range(12)]
    for n, d in enumerate(delays, 1):
        top = min(30.0, 0.2 * 2 ** (n - 1))
        assert top / 2 <= d <= top
    r.failures = 0
    assert r._delay(retry_after=5) == 5
    assert r._delay(retry_after=45) == 45  # above the backoff cap: the server knows best
    assert r._delay(retry_after=3600) == 60


# ------------------------------------------------------------------------------ the event loop

def test_a_big_relist_yields_to_the_event_loop_between_batches() -> None:
    objs = [from_dict(svc(f"s{i}", f"10.2.{i // 250}.{i % 250 + 1}")) for i in range(5000)]
    r = Reflector(Client(Credentials("http://127.0.0.1:1")), Watch(SERVICES), Health(""), 1.0, FAST)
    store = new_store()

    async def ticks_during(fresh: list[Object]) -> int:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0)
                ticks += 1

        tick = asyncio.get_running_loop().create_task(ticker())
        await asyncio.sleep(0)
        await r._replace(store, {key_of(o): o for o in fresh})
        tick.cancel()
        return ticks

    assert asyncio.run(ticks_during(objs)) >= len(objs) // BATCH
    assert a_of(store, "s4999") == {"10.2.19.250"}
    assert asyncio.run(ticks_during(objs[:1000])) >= 4000 // BATCH  # the deletions yield too
    assert sum(1 for k in store.objects if k[0] == "Service") == 1000 and not a_of(store, "s4999")


# ------------------------------------------------------------------------------ HTTP framing

async def raw_server(payload: bytes) -> tuple[asyncio.Server, str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for i in range(0, len(payload), 7):  # dribble it out in odd pieces
            writer.write(payload[i:i + 7])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("payload", [
    b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\nhello world",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nhello world",
])
def test_http_bodies_in_every_framing(payload: bytes) -> None:
    async def main() -> bytes:
        server, url = await raw_server(payload)
        async with server:
            resp = await Client(Credentials(url)).get("/x")
            try:
                return await resp.read(2)
            finally:
                resp.close()

    assert asyncio.run(main()) == b"hello world"


def test_a_non_http_peer_is_an_error() -> None:
    async def main() -> None:
        server, url = await raw_server(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
        async with server:
            with pytest.raises(HttpError, match="not an HTTP"):
                await Client(Credentials(url)).get("/x", timeout=2)

    asyncio.run(main())


def test_watch_events_split_across_chunks_and_joined_in_one() -> None:
    events = [{"type": "ADDED", "object": svc(f"s{i}", f"10.3.0.{i + 1}") | {"metadata": {
        "name": f"s{i}", "namespace": "default", "resourceVersion": str(200 + i)}}} for i in range(3)]
    body = b"".join(json.dumps(e).encode() + b"\n" for e in events)
    cut = len(body) // 3  # chunk boundaries fall inside events; the second chunk holds two line ends
    chunks = [body[:cut], body[cut:]]
    payload = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
        b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"

    async def main() -> tuple[int, Store, str]:
        server, url = await raw_server(payload)
        async with server:
            r = Reflector(Client(Credentials(url)), Watch(SERVICES), Health(url), 2.0, FAST)
            r.rv = "199"
            store = new_store()
            return await r.stream(store), store, r.rv

    seen, store, rv = asyncio.run(main())
    assert seen == 3 and rv == "202"
    assert {k[2] for k in store.objects} == {"s0", "s1", "s2"}


# ------------------------------------------------------------------------------ configuration

def test_what_is_watched_follows_the_options() -> None:
    base = watches(Config(zones=[ZONE]))
    assert [w.resource for w in base] == [SERVICES, ENDPOINTSLICES, NAMESPACES]
    cfg = Config(zones=[ZONE], noendpoints=True, pods="verified", labels="app=dns", namespace_labels="team in (a,b)")
    got = {w.resource.kind: w for w in watches(cfg)}
    assert set(got) == {"Service", "Namespace", "Pod"}
    assert got["Service"].query(limit="500") == "/api/v1/services?labelSelector=app%3Ddns&limit=500"
    assert got["Namespace"].label_selector == "team in (a,b)"
    assert got["Pod"].query() == ("/api/v1/pods?labelSelector=app%3Ddns&fieldSelector=status.phase%21%3DSucceeded"
                                  "%2Cstatus.phase%21%3DFailed%2Cstatus.phase%21%3DUnknown")
    assert got["Pod"].resource is PODS


def test_kubeconfig_with_a_token_authenticates(tmp_path: Path) -> None:
    srv = FakeApiServer(token="s3cret")
    srv.start()
    try:
        path = srv.write_kubeconfig(tmp_path / "kubeconfig")
        creds = credentials(Config(zones=[ZONE], kubeconfig=path))
        assert creds.url == srv.url and creds.ssl is None
        assert creds.authorization() == "Bearer s3cret"

        async def main() -> None:
            src = ApiSource(creds, [Watch(SERVICES)], 5.0, FAST)
            task = asyncio.get_running_loop().create_task(src.run(new_store()))
            await until(src.synced)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

        asyncio.run(main())
    finally:
        srv.stop()


def test_bad_kubeconfig_context_is_a_configuration_error(fake_kubeconfig_path: str) -> None:
    with pytest.raises(ValueError, match="kubeconfig .*nope"):
        credentials(Config(zones=[ZONE], kubeconfig=fake_kubeconfig_path, context="nope"))


def test_endpoint_needs_no_kubernetes_package_and_no_auth() -> None:
    code = ("import sys; from clusterdns.k8s.sources.api import credentials; "
            "from clusterdns.plugins.kubernetes import Config; "
            "c = credentials(Config(zones=['cluster.local.'], endpoint='http://127.0.0.1:8001')); "
            "assert c.url == 'http://127.0.0.1:8001' and c.authorization() is None and c.ssl is None; "
            "assert 'kubernetes' not in sys.modules, 'the kubernetes package was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=30)
    with pytest.raises(ValueError, match="http"):
        Client(Credentials("ftp://example"))


@pytest.fixture
def fake_kubeconfig_path(tmp_path: Path) -> str:
    return FakeApiServer().write_kubeconfig(tmp_path / "kubeconfig")
