"""The process's life: load the Corefile, start, print one ready line, serve until a signal.

SIGTERM/SIGINT shut down (after the shutdown hooks, e.g. health's lameduck); SIGUSR1 reloads
the Corefile (``Runner.reload``), as CoreDNS does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from clusterdns import __version__
from clusterdns.corefile import CorefileError, parse_file
from clusterdns.server.app import App, StartError

log = logging.getLogger("clusterdns")


class Runner:
    """Owns the current App and the process's signals."""

    def __init__(self, corefile: str, default_port: int) -> None:
        self.corefile = corefile
        self.default_port = default_port
        self.app: App | None = None
        self.stop = asyncio.Event()
        self.reload_requested = asyncio.Event()

    def load(self) -> App:
        """Parse and configure; raises CorefileError."""
        app = App(self.corefile, self.default_port)
        app.runner = self  # type: ignore[attr-defined]
        app.configure(parse_file(self.corefile))
        return app

    async def serve(self, quiet: bool) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig)
        loop.add_signal_handler(signal.SIGUSR1, self.reload_requested.set)
        self.app = self.load()
        await self.app.start()
        if not quiet:
            print(f"clusterdns-{__version__} ready: {self.app.describe()}", flush=True)
        while not self.stop.is_set():
            waiter = asyncio.ensure_future(self.reload_requested.wait())
            stopper = asyncio.ensure_future(self.stop.wait())
            await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            stopper.cancel()
            if self.reload_requested.is_set() and not self.stop.is_set():
                self.reload_requested.clear()
                await self.reload()
        await self.app.shutdown()
        return 0

    def _on_stop(self, sig: int) -> None:
        log.info("%s: Shutting down servers then terminating", signal.Signals(sig).name)
        self.stop.set()

    async def reload(self) -> bool:
        """Load the Corefile again and swap it in; on any error keep the running one."""
        assert self.app is not None
        try:
            new = self.load()
        except CorefileError as e:
            log.error("plugin/reload: Corefile changed but reload failed: %s", e)
            return False
        old = self.app
        old.close_listeners()
        try:
            await new.start()
        except (StartError, OSError) as e:
            log.error("plugin/reload: Corefile changed but reload failed: %s", e)
            await old.start()
            return False
        self.app = new
        await old.drain()
        for s in old.sites:
            for hook in s.config.on_shutdown:
                await hook()
        return True


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
