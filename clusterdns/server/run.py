"""The process's life: load the Corefile, start, print one ready line, serve until a signal.

SIGTERM/SIGINT: /ready answers 503 at once; health's lameduck keeps DNS and /health serving for its
duration; then the DNS listeners close, queries in flight finish (bounded), plugins stop, exit 0.
A second SIGTERM/SIGINT cuts the lameduck short. SIGUSR1 reloads the Corefile now; the reload
plugin has it checked every INTERVAL ± JITTER/2 and reloaded when its parsed content changed.

A reload builds a new App next to the running one (``App.configure`` with ``previous``), starts
its plugins, then lets it take over the old one's sockets; any failure on the way leaves the old
configuration serving, logs the error with its file:line and counts coredns_reload_failed_total.
"""

from __future__ import annotations

import asyncio
import gc
import hashlib
import logging
import os
import signal
import sys

from clusterdns import __version__
from clusterdns.corefile import CorefileError, ServerBlock, checksum, parse_file
from clusterdns.metrics import REGISTRY, RELOAD_FAILED, RELOAD_VERSION
from clusterdns.plugins.reload import Reload
from clusterdns.server.app import App, Process, StartError

log = logging.getLogger("clusterdns")


class Runner:
    """Owns the current App and the process's signals."""

    def __init__(self, corefile: str, default_port: int) -> None:
        self.corefile = corefile
        self.default_port = default_port
        self.process = Process()
        self.app: App | None = None
        self.stop = asyncio.Event()
        self.reload_requested = asyncio.Event()
        self.hurry = asyncio.Event()  # a second stop signal: skip the rest of the lameduck
        self.failed = ""  # digest of the last Corefile that failed to load; not retried until it changes

    def load(self, blocks: list[ServerBlock] | None = None, previous: App | None = None) -> App:
        """Parse (unless given the blocks) and configure; raises CorefileError."""
        if blocks is None:
            blocks = parse_file(self.corefile)
        app = App(self.corefile, self.default_port, self.process)
        app.checksum = checksum(blocks)
        app.configure(blocks, previous)
        return app

    async def serve(self, quiet: bool) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGUSR1, self._on_reload_signal)
        self.app = self.load()
        try:
            await self.app.start()
        except BaseException:
            self.process.http.close()
            raise
        self._running(self.app)
        gc.freeze()  # start-up's objects (plugins, the index) need no more scans by the collector
        if not quiet:
            print(f"clusterdns-{__version__} ready: {self.app.describe()}", flush=True)
        while not self.stop.is_set():
            await self._wait(self._next_check())
            if self.stop.is_set():
                break
            forced = self.reload_requested.is_set()
            self.reload_requested.clear()
            await self.reload(force=forced)
        await self.shutdown()
        return 0

    async def _wait(self, timeout: float | None) -> None:
        """Until a stop or reload signal, or ``timeout`` seconds (the next reload check)."""
        waiters = {asyncio.ensure_future(self.stop.wait()), asyncio.ensure_future(self.reload_requested.wait())}
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()

    def _next_check(self) -> float | None:
        """Seconds until the reload plugin's next look at the Corefile; None without the plugin."""
        assert self.app is not None
        for s in self.app.sites:
            r = s.config.plugins.get("reload")
            if isinstance(r, Reload):
                return r.next_delay()
        return None

    def _on_stop(self, sig: int) -> None:
        if self.stop.is_set():
            self.hurry.set()
            return
        log.info("%s: Shutting down servers then terminating", signal.Signals(sig).name)
        self.process.stopping = True  # before anything else: /ready must say 503 from now on
        self.stop.set()

    def _on_reload_signal(self) -> None:
        log.info("SIGUSR1: Reloading")
        self.reload_requested.set()

    async def reload(self, force: bool = False) -> bool:
        """Load the Corefile again and swap it in if it changed (always when ``force``); on any
        error keep the running configuration. Returns whether a new one is serving."""
        old = self.app
        assert old is not None
        try:
            blocks = parse_file(self.corefile)
        except CorefileError as e:
            digest = _text_digest(self.corefile)
            return False if digest == self.failed and not force else self._fail(e, digest)
        digest = checksum(blocks)
        if not force and digest in (old.checksum, self.failed):
            return False
        new = App(self.corefile, self.default_port, self.process)
        new.checksum = digest
        try:
            new.configure(blocks, previous=old)
            await new.run_startup()
            await new.take_over(old)
        except Exception as e:  # a Corefile error, a port in use, a plugin that cannot start
            await new.discard()
            return self._fail(e, digest)
        self.app = new
        self.failed = ""
        await old.retire()
        self._running(new)
        return True

    def _fail(self, error: Exception, digest: str) -> bool:
        self.failed = digest
        REGISTRY.inc(RELOAD_FAILED.name)
        log.error("plugin/reload: Corefile changed but reload failed: %s", error)
        return False

    def _running(self, app: App) -> None:
        log.info("plugin/reload: Running configuration SHA512 = %s", app.checksum)
        versions = REGISTRY.values[RELOAD_VERSION.name]
        versions.clear()
        versions[("sha512", app.checksum)] = 1

    async def shutdown(self) -> None:
        """Lameduck (DNS and /health still serving, /ready 503), then stop everything."""
        assert self.app is not None
        if self.app.lameduck > 0:
            log.info("plugin/health: Going into lameduck mode for %s", _go_duration(self.app.lameduck))
            try:
                await asyncio.wait_for(self.hurry.wait(), self.app.lameduck)
            except TimeoutError:
                pass
        await self.app.shutdown()
        self.process.http.close()


def _text_digest(path: str) -> str:
    """Identifies a Corefile that does not parse, so the same broken text is reported once."""
    try:
        with open(path, "rb") as f:
            return "text:" + hashlib.sha512(f.read()).hexdigest()
    except OSError as e:
        return f"unreadable:{e.errno}"


def _go_duration(seconds: float) -> str:
    """``5s``, ``1.5s``, ``500ms``: how CoreDNS prints a duration."""
    return f"{seconds:g}s" if seconds >= 1 else f"{seconds * 1000:g}ms"


def run(corefile: str, default_port: int, quiet: bool = False, pidfile: str = "") -> int:
    """Run until stopped; returns the process exit code."""
    if not os.path.exists(corefile):
        print(f"clusterdns: Corefile not found: {corefile}", file=sys.stderr)
        return 1
    if pidfile:
        with open(pidfile, "w") as f:
            f.write(f"{os.getpid()}\n")
    try:
        return asyncio.run(_main(corefile, default_port, quiet))
    except CorefileError as e:
        print(f"clusterdns: {e}", file=sys.stderr)
        return 1
    except StartError as e:
        print(f"clusterdns: {e}", file=sys.stderr)
        return 1
    finally:
        if pidfile and os.path.exists(pidfile):
            os.unlink(pidfile)


async def _main(corefile: str, default_port: int, quiet: bool) -> int:
    return await Runner(corefile, default_port).serve(quiet)
