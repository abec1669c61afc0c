"""Real processes for tests: the clusterdns server on a free loopback port, and dig."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import dns.message
import dns.query
import dns.rdatatype

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (as far as one can tell)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = u.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return int(port)
    raise RuntimeError("no free port")


class Server:
    """``clusterdns -conf FILE`` running in the background; ``lines`` collects its output."""

    def __init__(self, corefile: Path, port: int, args: tuple[str, ...] = (), env: dict[str, str] | None = None):
        self.corefile = corefile
        self.port = port
        self.lines: list[str] = []
        self._ready = threading.Event()
        cmd = [sys.executable, "-m", "clusterdns", "-conf", str(corefile), "-dns.port", str(port), *args]
        self.proc = subprocess.Popen(
            cmd, cwd=corefile.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            stdin=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if "ready:" in line:
                self._ready.set()
        self._ready.set()

    def wait_ready(self, timeout: float = 20.0) -> Server:
        if not self._ready.wait(timeout) or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError("clusterdns did not start:\n" + self.output())
        return self

    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.lines):
                if text in line:
                    return line
            time.sleep(0.05)
        raise AssertionError(f"no line containing {text!r} within {timeout}s:\n{self.output()}")

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(2)
        if self.proc.stdout is not None and not self._reader.is_alive():
            self.proc.stdout.close()
        return self.proc.returncode

    # --- clients -------------------------------------------------------------------------
    def query(self, name: str, rdtype: str = "A", tcp: bool = False, timeout: float = 3.0,
              **make_kwargs: object) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype, **make_kwargs)  # type: ignore[arg-type]
        if tcp:
            return dns.query.tcp(q, "127.0.0.1", port=self.port, timeout=timeout)
        return dns.query.udp(q, "127.0.0.1", port=self.port, timeout=timeout)

    def dig(self, *args: str) -> str:
        out = subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.port), "+time=3", "+tries=1", *args],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )
        return out.stdout

    def raw(self, payload: bytes, timeout: float = 1.0) -> bytes | None:
        """Send raw bytes over UDP; the reply, or None when the server stayed silent."""
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(timeout)
            s.sendto(payload, ("127.0.0.1", self.port))
            try:
                return s.recv(65535)
            except TimeoutError:
                return None


def have(tool: str) -> bool:
    return shutil.which(tool) is not None or os.path.exists(f"/usr/sbin/{tool}")


def answers(msg: dns.message.Message, rdtype: str | None = None) -> set[str]:
    """The answer section's rdata as text (optionally only one type), order-insensitive."""
    out = set()
    for rrset in msg.answer:
        if rdtype is None or dns.rdatatype.to_text(rrset.rdtype) == rdtype:
            out.update(r.to_text() for r in rrset)
    return out
