"""The Kubernetes API source: credentials from the ``kubernetes`` package, list/watch done here.

The ``kubernetes`` package is used only to read configuration and credentials (in-cluster service
account with its token refresh, ``kubeconfig PATH [CONTEXT]``), and is imported only then (~27 MB
RSS, 0.3 s). The requests themselves are plain HTTP/1.1 GETs over asyncio streams, parsed with
``json.loads``: the client's typed deserialisation costs ~1.3 ms per event under the GIL, and its
watches block a thread. docs/watch.md explains the choice; reflector.py speaks the protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from clusterdns import __version__
from clusterdns.duration import parse_duration
from clusterdns.k8s.resources import ENDPOINTSLICES, NAMESPACES, PODS, SERVICES
from clusterdns.k8s.sources.reflector import Reflector, Watch
from clusterdns.k8s.store import Store

if TYPE_CHECKING:
    from clusterdns.plugins.kubernetes import Config

log = logging.getLogger("clusterdns.kubernetes")
T = TypeVar("T")

# CoreDNS's pod field selector: only pods that can still hold their IP.
POD_PHASES = "status.phase!=Succeeded,status.phase!=Failed,status.phase!=Unknown"
IDLE_TIMEOUT_ENV = "CLUSTERDNS_WATCH_IDLE_TIMEOUT"
DEFAULT_IDLE_TIMEOUT = 180.0  # well above the apiserver's ~1 min bookmark period
CONNECT_TIMEOUT = 10.0
# Reconnect backoff (base, cap): the cap bounds how stale DNS stays after the API comes back;
# four watches per replica, jittered, are light enough for the apiserver at this pace.
BACKOFF = (0.2, 10.0)
READ_TIMEOUT = 60.0  # for list responses: no byte for this long means the connection is dead
MAX_HEADER = 1 << 20
MAX_BODY = 256 << 20


async def _within(aw: Awaitable[T], timeout: float) -> T:
    """``await aw``, or TimeoutError after ``timeout`` seconds. Not asyncio.wait_for: on 3.11 it can
    swallow a cancellation that lands as ``aw`` completes, and the source would then never stop."""
    async with asyncio.timeout(timeout):
        return await aw


class HttpError(OSError):
    """The response could not be read as HTTP/1.1 (a broken or non-HTTP peer)."""


@dataclass(frozen=True)
class Credentials:
    """Where the API is and how to authenticate; ``authorization`` is asked before every request."""

    url: str
    ssl: ssl.SSLContext | None = None
    server_hostname: str | None = None
    authorization: Callable[[], str | None] = lambda: None


class Response:
    """An HTTP response whose body is read incrementally; always ``close()`` it."""

    def __init__(self, status: int, reason: str, headers: dict[str, str],
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.status = status
        self.reason = reason
        self.headers = headers
        self._reader = reader
        self._writer = writer

    def close(self) -> None:
        self._writer.close()

    async def chunks(self, timeout: float) -> AsyncGenerator[bytes, None]:
        """The body as it arrives; TimeoutError when nothing comes for ``timeout`` seconds."""
        r = self._reader
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            while True:
                line = await _within(r.readuntil(b"\r\n"), timeout)
                try:
                    size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise HttpError(f"bad chunk size line {line[:40]!r}") from None
                if size == 0:
                    return
                data = await _within(r.readexactly(size + 2), timeout)
                yield data[:-2]
        elif "content-length" in self.headers:
            left = int(self.headers["content-length"])
            while left > 0:
                data = await _within(r.read(min(left, 1 << 16)), timeout)
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                yield data
        else:
            while data := await _within(r.read(1 << 16), timeout):
                yield data

    async def read(self, timeout: float = READ_TIMEOUT) -> bytes:
        """The whole body (bounded by MAX_BODY)."""
        parts, size = [], 0
        async for data in self.chunks(timeout):
            size += len(data)
            if size > MAX_BODY:
                raise HttpError(f"response body larger than {MAX_BODY} bytes")
            parts.append(data)
        return b"".join(parts)


class Client:
    """One GET per connection (``Connection: close``): watches hold theirs for minutes anyway."""

    def __init__(self, creds: Credentials) -> None:
        u = urlsplit(creds.url)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise ValueError(f"API URL must be http(s)://HOST[:PORT], not {creds.url!r}")
        self.creds = creds
        self.host = u.hostname
        self.port = u.port or (443 if u.scheme == "https" else 80)
        self.netloc = u.netloc.rsplit("@", 1)[-1]
        self.prefix = u.path.rstrip("/")
        self.ssl = (creds.ssl or ssl.create_default_context()) if u.scheme == "https" else None

    async def get(self, path: str, timeout: float = READ_TIMEOUT) -> Response:
        """Send ``GET path`` and read the status line and headers."""
        sni = (self.creds.server_hostname or self.host) if self.ssl else None
        reader, writer = await _within(
            asyncio.open_connection(self.host, self.port, ssl=self.ssl, server_hostname=sni, limit=MAX_HEADER),
            CONNECT_TIMEOUT)
        try:
            head = [f"GET {self.prefix}{path} HTTP/1.1", f"Host: {self.netloc}",
                    f"User-Agent: clusterdns/{__version__}", "Accept: application/json", "Connection: close"]
            auth = self.creds.authorization()
            if auth:
                head.append(f"Authorization: {auth}")
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
            raw = await _within(reader.readuntil(b"\r\n\r\n"), timeout)
            lines = raw.decode("latin-1").split("\r\n")
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise HttpError(f"not an HTTP/1.x response: {lines[0][:60]!r}")
            headers = {}
            for line in lines[1:]:
                name, sep, value = line.partition(":")
                if sep:
                    headers[name.strip().lower()] = value.strip()
            return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, reader, writer)
        except BaseException:
            writer.close()
            raise


# ------------------------------------------------------------------------------ configuration

def _ssl_context(cafile: str | None, cert: str | None, key: str | None, verify: bool = True) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile or None)
    if cert:
        ctx.load_cert_chain(cert, key or None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _from_configuration(c: Any) -> Credentials:
    """Credentials from a kubernetes.client.Configuration; its refresh hook runs before each request
    (the in-cluster loader re-reads the rotated service-account token once a minute)."""
    https = str(c.host).startswith("https:")
    return Credentials(
        url=str(c.host),
        ssl=_ssl_context(c.ssl_ca_cert, c.cert_file, c.key_file, bool(c.verify_ssl)) if https else None,
        server_hostname=c.tls_server_name or None,
        authorization=lambda: c.get_api_key_with_prefix("BearerToken", alias="authorization"),
    )


def credentials(cfg: Config) -> Credentials:
    """``kubeconfig``, else ``endpoint`` (+ ``tls``), else the in-cluster service account, as CoreDNS."""
    if cfg.endpoint and not cfg.kubeconfig:
        ctx = _ssl_context(cfg.tls[2], cfg.tls[0], cfg.tls[1]) if cfg.tls else None
        return Credentials(cfg.endpoint, ctx)
    import kubernetes.client
    import kubernetes.config

    c = kubernetes.client.Configuration()
    try:
        if cfg.kubeconfig:
            kubernetes.config.load_kube_config(config_file=cfg.kubeconfig, context=cfg.context or None,
                                               client_configuration=c, persist_config=False)  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_incluster_config(client_configuration=c)  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException as e:
        where = f"kubeconfig {cfg.kubeconfig}" if cfg.kubeconfig else "in-cluster config (no kubeconfig/endpoint)"
        raise ValueError(f"{where}: {e}") from None
    return _from_configuration(c)


def watches(cfg: Config) -> list[Watch]:
    """What to list/watch for this configuration (``namespaces`` is filtered by the Store)."""
    out = [Watch(SERVICES, cfg.labels)]
    if not cfg.noendpoints:
        out.append(Watch(ENDPOINTSLICES, cfg.labels))
    out.append(Watch(NAMESPACES, cfg.namespace_labels))
    if cfg.pods == "verified":
        out.append(Watch(PODS, cfg.labels, POD_PHASES))
    return out


# ------------------------------------------------------------------------------------ the source

class Health:
    """Logs an outage once when it starts and once when every watch works again, not per retry."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.failing: dict[str, str] = {}
        self.since = 0.0

    def fail(self, who: str, reason: str) -> None:
        if not self.failing:
            self.since = time.monotonic()
            log.warning("plugin/kubernetes: Kubernetes API unreachable at %s (%s: %s); serving the last known "
                        "state and retrying", self.url, who, reason)
        self.failing[who] = reason

    def ok(self, who: str) -> None:
        if self.failing.pop(who, None) is not None and not self.failing:
            log.info("plugin/kubernetes: Kubernetes API reachable again after %.1fs", time.monotonic() - self.since)


class ApiSource:
    """Lists then watches every resource DNS needs, each in its own reflector task."""

    def __init__(self, creds: Credentials, watched: list[Watch], idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
                 backoff: tuple[float, float] = BACKOFF) -> None:
        self.client = Client(creds)
        self.health = Health(creds.url)
        self.reflectors = [Reflector(self.client, w, self.health, idle_timeout, backoff) for w in watched]

    @classmethod
    def from_config(cls, cfg: Config) -> ApiSource:
        """Credentials are read now, so that a bad kubeconfig fails the start with a clear line."""
        idle = os.environ.get(IDLE_TIMEOUT_ENV, "")
        try:
            idle_timeout = parse_duration(idle) if idle else DEFAULT_IDLE_TIMEOUT
        except ValueError as e:
            raise ValueError(f"{IDLE_TIMEOUT_ENV}: {e}") from None
        return cls(credentials(cfg), watches(cfg), idle_timeout)

    def synced(self) -> bool:
        return all(r.synced for r in self.reflectors)

    async def run(self, store: Store) -> None:
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(r.run(store), name=f"watch {r.watch.resource.plural}") for r in self.reflectors]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
