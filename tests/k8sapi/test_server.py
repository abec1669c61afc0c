"""The fake API server, exercised through the real ``kubernetes`` client (and raw HTTP where needed)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3
from kubernetes import client, config, watch
from kubernetes.client.exceptions import ApiException

from .server import FakeApiServer

REQ_TIMEOUT = (2, 5)  # (connect, read) seconds: no client call can hang a test


def svc(name: str, ns: str = "default", **labels: str) -> dict[str, Any]:
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"clusterIP": "10.0.0.10", "ports": [{"port": 53, "protocol": "UDP"}]}}


def pod(name: str, phase: str, ns: str = "default") -> dict[str, Any]:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": phase, "podIP": "10.1.0.5"}}


@pytest.fixture
def api() -> Iterator[FakeApiServer]:
    srv = FakeApiServer(bookmark_interval=0.2)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def connect(tmp_path: Path) -> Iterator[Callable[[FakeApiServer], client.ApiClient]]:
    """``connect(srv)`` -> an ApiClient built from a kubeconfig written by the server; closed at the end."""
    clients: list[client.ApiClient] = []

    def make(srv: FakeApiServer) -> client.ApiClient:
        path = srv.write_kubeconfig(tmp_path / f"kubeconfig{len(clients)}")
        c = config.new_client_from_config(config_file=path, persist_config=False)
        clients.append(c)
        return c

    yield make
    for c in clients:
        c.close()


def later(seconds: float, fn: Callable[[], object]) -> threading.Timer:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()
    return t


def raw_get(srv: FakeApiServer, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(srv.url + path, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        with e:
            return e.code, json.loads(e.read())


# ------------------------------------------------------------------------------------------- lists

def test_load_kube_config_and_discovery(api: FakeApiServer, tmp_path: Path) -> None:
    api.apply({"kind": "Namespace", "metadata": {"name": "kube-system"}})
    saved = client.Configuration.get_default_copy()
    try:
        config.load_kube_config(api.write_kubeconfig(tmp_path / "kc"))
        with client.ApiClient() as c:
            names = [n.metadata.name for n in client.CoreV1Api(c).list_namespace(_request_timeout=REQ_TIMEOUT).items]
            assert names == ["kube-system"]
            assert client.VersionApi(c).get_code().git_version.startswith("v1.")
            groups = client.ApisApi(c).get_api_versions().groups
            assert [g.name for g in groups] == ["discovery.k8s.io"]
    finally:
        client.Configuration.set_default(saved)
    assert raw_get(api, "/api")[1]["versions"] == ["v1"]


def test_list_shape_items_without_kind(api: FakeApiServer) -> None:
    api.apply(svc("a"))
    code, body = raw_get(api, "/api/v1/services")
    assert code == 200 and body["kind"] == "ServiceList" and body["apiVersion"] == "v1"
    assert body["metadata"]["resourceVersion"] == str(api.resource_version)
    (item,) = body["items"]
    assert "kind" not in item and "apiVersion" not in item
    assert {"uid", "creationTimestamp", "resourceVersion"} <= item["metadata"].keys()
    assert raw_get(api, "/api/v1/namespaces/default/services/a")[1]["kind"] == "Service"
    assert raw_get(api, "/api/v1/namespaces/default/services/nope")[0] == 404


def test_apply_update_keeps_uid_and_bumps_rv(api: FakeApiServer) -> None:
    first = api.apply(svc("a"))
    second = api.apply(svc("a", app="x"))
    assert second["metadata"]["uid"] == first["metadata"]["uid"]
    assert int(second["metadata"]["resourceVersion"]) == int(first["metadata"]["resourceVersion"]) + 1
    assert api.objects("Service")[0]["metadata"]["labels"] == {"app": "x"}
    api.delete("Service", "default", "a")
    assert api.objects("services") == []


def test_pagination_is_a_consistent_snapshot(api: FakeApiServer, connect: Any) -> None:
    for i in range(5):
        api.apply(svc(f"s{i}"))
    v1 = client.CoreV1Api(connect(api))
    page = v1.list_service_for_all_namespaces(limit=2, _request_timeout=REQ_TIMEOUT)
    rv = page.metadata.resource_version
    names = [s.metadata.name for s in page.items]
    api.apply(svc("s9"))  # changes after the first page are not seen by later pages
    api.delete("Service", "default", "s4")
    while page.metadata._continue:
        page = v1.list_service_for_all_namespaces(limit=2, _continue=page.metadata._continue,
                                                  _request_timeout=REQ_TIMEOUT)
        assert page.metadata.resource_version == rv
        names += [s.metadata.name for s in page.items]
    assert names == [f"s{i}" for i in range(5)]
    lists = [p for m, p in api.requests if m == "GET" and p.startswith("/api/v1/services")]
    assert len(lists) == 3 and all("limit=2" in p for p in lists) and "continue=" in lists[1]


def test_expired_continue_token_is_410(api: FakeApiServer, connect: Any) -> None:
    for i in range(3):
        api.apply(svc(f"s{i}"))
    v1 = client.CoreV1Api(connect(api))
    page = v1.list_service_for_all_namespaces(limit=1, _request_timeout=REQ_TIMEOUT)
    api.compact()
    with pytest.raises(ApiException) as exc:
        v1.list_service_for_all_namespaces(limit=1, _continue=page.metadata._continue, _request_timeout=REQ_TIMEOUT)
    assert exc.value.status == 410 and json.loads(exc.value.body)["reason"] == "Expired"


def test_selectors_and_namespaced_paths(api: FakeApiServer, connect: Any) -> None:
    api.apply(svc("a", "ns1", app="web", tier="fe"))
    api.apply(svc("b", "ns1", app="db"))
    api.apply(svc("c", "ns2"))
    v1 = client.CoreV1Api(connect(api))

    def names(**kw: Any) -> list[str]:
        return sorted(s.metadata.name for s in v1.list_service_for_all_namespaces(
            _request_timeout=REQ_TIMEOUT, **kw).items)

    assert names(label_selector="app=web") == ["a"]
    assert names(label_selector="app!=web") == ["b", "c"]
    assert names(label_selector="app") == ["a", "b"]
    assert names(label_selector="!app") == ["c"]
    assert names(label_selector="app in (web, db),tier") == ["a"]
    assert names(label_selector="app notin (web)") == ["b", "c"]
    assert names(field_selector="metadata.namespace=ns2") == ["c"]
    assert names(field_selector="metadata.name=b,metadata.namespace==ns1") == ["b"]
    assert [s.metadata.name for s in v1.list_namespaced_service("ns1", _request_timeout=REQ_TIMEOUT).items] == [
        "a", "b"]
    for name, phase in [("run", "Running"), ("ok", "Succeeded"), ("bad", "Failed"), ("pend", "Pending")]:
        api.apply(pod(name, phase))
    pods = v1.list_pod_for_all_namespaces(field_selector="status.phase!=Succeeded,status.phase!=Failed,"
                                          "status.phase!=Unknown", _request_timeout=REQ_TIMEOUT)
    assert sorted(p.metadata.name for p in pods.items) == ["pend", "run"]


def test_endpointslices(api: FakeApiServer, connect: Any) -> None:
    api.apply({"kind": "EndpointSlice", "metadata": {"name": "dns-abc", "namespace": "kube-system",
                                                     "labels": {"kubernetes.io/service-name": "kube-dns"}},
               "addressType": "IPv4",
               "endpoints": [{"addresses": ["10.1.0.7"], "conditions": {"ready": True}}],
               "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}]})
    lst = client.DiscoveryV1Api(connect(api)).list_endpoint_slice_for_all_namespaces(
        label_selector="kubernetes.io/service-name=kube-dns", _request_timeout=REQ_TIMEOUT)
    (es,) = lst.items
    assert es.address_type == "IPv4" and es.endpoints[0].addresses == ["10.1.0.7"]
    assert raw_get(api, "/apis/discovery.k8s.io/v1")[1]["resources"][0]["name"] == "endpointslices"


def test_delay_list(api: FakeApiServer) -> None:
    api.delay_list(0.5)
    t = time.monotonic()
    assert raw_get(api, "/api/v1/pods")[0] == 200
    assert time.monotonic() - t >= 0.5


# ---------------------------------------------------------------------------------- auth, failures

def test_bearer_token(connect: Any) -> None:
    srv = FakeApiServer(token="s3cret")
    srv.start()
    try:
        v1 = client.CoreV1Api(connect(srv))
        assert v1.list_namespace(_request_timeout=REQ_TIMEOUT).items == []
        code, body = raw_get(srv, "/api/v1/namespaces")  # no Authorization header
        assert code == 401 and body["kind"] == "Status" and body["reason"] == "Unauthorized"
        srv.token = "rotated"
        with pytest.raises(ApiException) as exc:
            v1.list_namespace(_request_timeout=REQ_TIMEOUT)
        assert exc.value.status == 401
    finally:
        srv.stop()


def test_fail_next(api: FakeApiServer, connect: Any) -> None:
    v1 = client.CoreV1Api(connect(api))
    api.fail_next(2, 500)
    for _ in range(2):
        with pytest.raises(ApiException) as exc:
            v1.list_namespace(_request_timeout=REQ_TIMEOUT)
        assert exc.value.status == 500 and json.loads(exc.value.body)["code"] == 500
    assert v1.list_namespace(_request_timeout=REQ_TIMEOUT).items == []
    api.fail_next(1, 429, retry_after=1)
    try:
        urllib.request.urlopen(api.url + "/api/v1/namespaces", timeout=5).close()
    except urllib.error.HTTPError as e:
        with e:
            assert e.code == 429 and e.headers["Retry-After"] == "1"
            assert json.loads(e.read())["reason"] == "TooManyRequests"
    else:
        pytest.fail("no 429")
    api.fail_next(1, 429, retry_after=1)  # urllib3 (under the client) honours Retry-After on a 429 GET
    t = time.monotonic()
    assert v1.list_namespace(_request_timeout=REQ_TIMEOUT).items == []
    assert time.monotonic() - t >= 0.9 and [m for m, _ in api.requests].count("GET") == 6


# ----------------------------------------------------------------------------------------- watches

def collect(api_client: client.ApiClient, until: Callable[[list[dict[str, Any]]], bool],
            **kw: Any) -> list[dict[str, Any]]:
    """Watch Services with the sync client until ``until(events)`` holds (or the stream ends)."""
    w = watch.Watch()
    events: list[dict[str, Any]] = []
    kw.setdefault("_request_timeout", REQ_TIMEOUT)
    for ev in w.stream(client.CoreV1Api(api_client).list_service_for_all_namespaces, **kw):
        events.append(ev)
        if until(events):
            w.stop()
    return events


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_watch_added_modified_deleted_bookmark(api: FakeApiServer, connect: Any) -> None:
    rv = api.apply(svc("a"))["metadata"]["resourceVersion"]

    def churn() -> None:
        api.apply(svc("b"))
        api.apply(svc("b", app="x"))
        api.delete("Service", "default", "b")

    later(0.3, churn)
    events = collect(connect(api), lambda ev: "DELETED" in types(ev) and ev[-1]["type"] == "BOOKMARK",
                     resource_version=rv, allow_watch_bookmarks=True, timeout_seconds=5)
    assert [t for t in types(events) if t != "BOOKMARK"] == ["ADDED", "MODIFIED", "DELETED"]
    objs = [e for e in events if e["type"] != "BOOKMARK"]
    assert objs[1]["object"].metadata.labels == {"app": "x"} and objs[0]["raw_object"]["kind"] == "Service"
    assert events[-1]["raw_object"]["metadata"] == {"resourceVersion": str(api.resource_version)}
    rvs = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in objs]
    assert rvs == sorted(rvs) and rvs[0] > int(rv)


def test_watch_rv0_sends_synthetic_added_then_ends_at_timeout(api: FakeApiServer, connect: Any) -> None:
    api.apply(svc("a"))
    api.apply(svc("b"))
    t = time.monotonic()
    events = collect(connect(api), lambda ev: False, resource_version="0", timeout_seconds=1)
    assert types(events) == ["ADDED", "ADDED"]  # no bookmarks: not asked for
    assert 0.9 <= time.monotonic() - t < 4


def test_watch_too_old_rv_gets_410_after_one_retry(connect: Any) -> None:
    srv = FakeApiServer(history=3)
    srv.start()
    try:
        first = srv.apply(svc("s0"))["metadata"]["resourceVersion"]
        for i in range(1, 6):
            srv.apply(svc(f"s{i}"))
        with pytest.raises(ApiException) as exc:  # no timeout_seconds: the client retries a 410 once
            collect(connect(srv), lambda ev: False, resource_version=first)
        assert exc.value.status == 410 and "too old resource version" in str(exc.value.reason)
        watches = [p for _, p in srv.requests if "watch=" in p]
        assert len(watches) == 2 and all(f"resourceVersion={first}" in p for p in watches)
        recent = str(srv.resource_version - 2)  # still inside the history: replayed
        events = collect(connect(srv), lambda ev: len(ev) == 2, resource_version=recent, timeout_seconds=3)
        assert [e["object"].metadata.name for e in events] == ["s4", "s5"]
    finally:
        srv.stop()


def test_raw_410_event_shape(api: FakeApiServer) -> None:
    api.apply(svc("a"))
    api.compact()
    with urllib.request.urlopen(f"{api.url}/api/v1/services?watch=1&resourceVersion=101", timeout=5) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        assert r.headers["Transfer-Encoding"] == "chunked"
        lines = r.read().splitlines()
    ev = json.loads(lines[0])
    assert len(lines) == 1 and ev["type"] == "ERROR"
    assert ev["object"] == {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": f"too old resource version: 101 ({api.resource_version})",
                            "reason": "Expired", "code": 410}


def test_delete_silently_only_a_relist_notices(api: FakeApiServer, connect: Any) -> None:
    api.apply(svc("a"))
    rv = api.apply(svc("b"))["metadata"]["resourceVersion"]
    api.delete_silently("Service", "default", "a")
    with pytest.raises(ApiException) as exc:
        collect(connect(api), lambda ev: False, resource_version=rv)
    assert exc.value.status == 410
    v1 = client.CoreV1Api(connect(api))
    assert [s.metadata.name for s in v1.list_service_for_all_namespaces(_request_timeout=REQ_TIMEOUT).items] == ["b"]


def test_label_selector_watch_maps_transitions(api: FakeApiServer, connect: Any) -> None:
    rv = api.apply(svc("a", app="web"))["metadata"]["resourceVersion"]
    api.apply(svc("a", app="db"))  # leaves the selection -> DELETED
    api.apply(svc("a", app="web"))  # comes back -> ADDED
    api.apply(svc("other", app="db"))  # never selected: nothing
    events = collect(connect(api), lambda ev: len(ev) == 2, resource_version=rv, label_selector="app=web",
                     timeout_seconds=3)
    assert types(events) == ["DELETED", "ADDED"]


def test_watch_resumes_after_abrupt_drop(api: FakeApiServer, connect: Any) -> None:
    rv = api.apply(svc("a"))["metadata"]["resourceVersion"]
    v1 = client.CoreV1Api(connect(api))
    w = watch.Watch()

    def churn() -> None:
        api.apply(svc("b"))
        time.sleep(0.3)
        api.drop_watches()

    later(0.3, churn)
    seen = []
    with pytest.raises(urllib3.exceptions.ProtocolError):  # a TCP abort mid-stream, not a clean end
        for ev in w.stream(v1.list_service_for_all_namespaces, resource_version=rv, _request_timeout=REQ_TIMEOUT):
            seen.append(ev["object"].metadata.name)
    assert seen == ["b"] and w.resource_version == str(int(rv) + 1)
    api.apply(svc("c"))  # happened during the gap: replayed from history on re-watch
    events = collect(connect(api), lambda ev: True, resource_version=w.resource_version)
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "c")]


def test_server_timeout_ends_stream_and_client_rewatches(connect: Any) -> None:
    srv = FakeApiServer(watch_timeout=0.5)
    srv.start()
    try:
        rv = srv.apply(svc("a"))["metadata"]["resourceVersion"]
        later(1.2, lambda: srv.apply(svc("b")))
        # no timeout_seconds: the stream ends after the server's default timeout; the client re-watches
        events = collect(connect(srv), lambda ev: True, resource_version=rv)
        assert [e["object"].metadata.name for e in events] == ["b"]
        watches = [p for _, p in srv.requests if "watch=" in p]
        assert len(watches) >= 2 and all(f"resourceVersion={rv}" in p for p in watches)
    finally:
        srv.stop()


def test_stall_triggers_client_read_timeout(api: FakeApiServer, connect: Any) -> None:
    api.stall_watches(3)
    t = time.monotonic()
    with pytest.raises(urllib3.exceptions.HTTPError):  # ReadTimeoutError / ProtocolError
        collect(connect(api), lambda ev: True, allow_watch_bookmarks=True, timeout_seconds=10,
                _request_timeout=(2, 0.5))
    assert time.monotonic() - t < 2.5
    assert api.watch_count() <= 1


def raw_watch(srv: FakeApiServer, query: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(f"GET /api/v1/services?watch=true&{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


def read_until(s: socket.socket, marker: bytes) -> bytes:
    data = b""
    while marker not in data:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_inject_raw_event_and_abrupt_drop(api: FakeApiServer) -> None:
    api.apply(svc("a"))
    with raw_watch(api, "resourceVersion=0") as s:
        head = read_until(s, b'"ADDED"')
        assert head.startswith(b"HTTP/1.1 200") and b"Transfer-Encoding: chunked" in head
        api.inject_raw_event("Service", '{"type":"ADDED","object":{"metadata":{"name":42}}')
        assert b'{"name":42}}\n' in read_until(s, b"42")
        api.drop_watches()
        tail = read_until(s, b"never")  # until EOF
        assert not tail.endswith(b"0\r\n\r\n")  # no final chunk: an abrupt close


def test_send_initial_events_ends_with_annotated_bookmark(api: FakeApiServer) -> None:
    api.apply(svc("a"))
    with raw_watch(api, "sendInitialEvents=true&resourceVersionMatch=NotOlderThan&allowWatchBookmarks=true") as s:
        data = read_until(s, b"initial-events-end")
    lines = [json.loads(x) for x in data.split(b"\r\n") if x.startswith(b"{")]
    assert [e["type"] for e in lines] == ["ADDED", "BOOKMARK"]
    assert lines[1]["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}


def test_restart_keeps_state_and_port(api: FakeApiServer, connect: Any) -> None:
    rv = api.apply(svc("a"))["metadata"]["resourceVersion"]
    port = api.port
    v1 = client.CoreV1Api(connect(api))
    api.stop()
    with pytest.raises(urllib3.exceptions.HTTPError):
        v1.list_service_for_all_namespaces(_request_timeout=(1, 1))
    api.apply(svc("b"))  # applied while down: seen after the restart
    api.start()
    assert api.port == port
    lst = v1.list_service_for_all_namespaces(_request_timeout=REQ_TIMEOUT)
    assert [s.metadata.name for s in lst.items] == ["a", "b"]
    events = collect(connect(api), lambda ev: len(ev) == 1, resource_version=rv, timeout_seconds=3)
    assert events[0]["object"].metadata.name == "b"
    api.restart()
    assert api.port == port and raw_get(api, "/api/v1/services")[0] == 200


def test_stop_ends_open_watches_and_threads(connect: Any) -> None:
    srv = FakeApiServer()
    srv.start()
    before = threading.active_count()
    results: list[list[dict[str, Any]]] = []
    t = threading.Thread(target=lambda: results.append(
        collect(connect(srv), lambda ev: False, timeout_seconds=30)), daemon=True)
    t.start()
    deadline = time.monotonic() + 5
    while srv.watch_count() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    srv.stop()
    t.join(5)
    assert not t.is_alive() and results == [[]]
    assert threading.active_count() < before
