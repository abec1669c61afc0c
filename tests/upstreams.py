"""Real upstream resolvers for tests: dnsmasq and unbound on loopback ports, with query counts.

Both run in the foreground with query logging; ``queries(name)`` counts how many times the
upstream was asked for ``name`` (so a test can prove a cache hit never left clusterdns).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import dns.message
import dns.query

from tests.procs import free_port


def _binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        raise RuntimeError(f"{name} is not installed (scripts/dev.sh tools installs it)")
    return path


class Upstream:
    """A resolver process on host:port (127.0.0.1 unless told) whose log lines are collected."""

    def __init__(self, cmd: list[str], port: int, query_marker: str, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = port
        self.cmd = cmd
        self.marker = query_marker
        self.lines: list[str] = []
        self._markers = 0
        self.proc: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     stdin=subprocess.DEVNULL)
        self._reader = threading.Thread(target=self._read, args=(self.proc,), daemon=True)
        self._reader.start()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                dns.query.udp(dns.message.make_query("probe.invalid.", "A"), self.host, port=self.port, timeout=0.05)
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"{self.cmd[0]} exited:\n" + "\n".join(self.lines)) from None
                time.sleep(0.05)
        raise RuntimeError(f"{self.cmd[0]} did not answer:\n" + "\n".join(self.lines))

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def queries(self, name: str) -> int:
        """How many queries for ``name`` (any type) the upstream was asked, once its log has caught up
        with everything sent so far: a marker query sent now is logged after all of them (the log is
        read by a thread, which can lag behind the answers on a loaded machine)."""
        self._markers += 1
        marker = f"sync{self._markers}.invalid."
        dns.query.udp(dns.message.make_query(marker, "A"), self.host, port=self.port, timeout=2)
        deadline = time.monotonic() + 5
        while self._logged(marker) == 0 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert self._logged(marker) == 1, f"{self.cmd[0]} did not log the marker query {marker}"
        return self._logged(name)

    def _logged(self, name: str) -> int:
        name = name.rstrip(".").lower()
        return sum(1 for ln in list(self.lines) if self.marker in ln and f" {name}" in ln.lower())

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc is not None and self.proc.stdout is not None:
            self._reader.join(2)  # it ends at EOF; then the pipe can be closed
            if not self._reader.is_alive():
                self.proc.stdout.close()


def dnsmasq(records: dict[str, list[str]], port: int | None = None, nxdomain: tuple[str, ...] = (),
            host: str = "127.0.0.1") -> Upstream:
    """dnsmasq answering ``records`` ({name: [ip, ...]}) on ``host``; names under ``nxdomain`` get NXDOMAIN."""
    port = port or free_port()
    # --keep-in-foreground, not --no-daemon: in debug mode dnsmasq serves TCP in its main process,
    # so one idle pooled TCP connection (as forward keeps) would stall every UDP query.
    cmd = [_binary("dnsmasq"), "--keep-in-foreground", f"--port={port}", f"--listen-address={host}",
           "--bind-interfaces", "--no-resolv", "--no-hosts", "--log-queries", "--log-facility=-", "--pid-file=",
           "--user=root", "--cache-size=0"]
    cmd += [f"--host-record={name},{ip}" for name, ips in records.items() for ip in ips]
    cmd += [f"--address=/{d}/" for d in nxdomain]
    return Upstream(cmd, port, "query[", host)


def unbound(local_data: list[str], zone: str, workdir: Path, port: int | None = None) -> Upstream:
    """unbound serving ``zone`` as a static local zone (NXDOMAIN answers carry its SOA)."""
    port = port or free_port()
    conf = workdir / f"unbound-{port}.conf"
    lines = [
        "server:", "  interface: 127.0.0.1", f"  port: {port}", "  do-daemonize: no", "  use-syslog: no",
        '  chroot: ""', '  username: ""', f'  directory: "{workdir}"', '  pidfile: ""', '  logfile: ""',
        "  verbosity: 1", "  log-queries: yes", "  do-ip6: no", "  msg-cache-size: 0", "  rrset-cache-size: 0",
        "  incoming-num-tcp: 100", f'  local-zone: "{zone}" static',
    ]
    lines += [f'  local-data: "{d}"' for d in local_data]
    conf.write_text("\n".join(lines) + "\n")
    return Upstream([_binary("unbound"), "-d", "-c", str(conf)], port, " info: 127.0.0.1 ")


class Blackhole:
    """A loopback port that swallows queries: a bound UDP socket never read, and a TCP listener
    never accepting (connects succeed, nothing comes back). ``close()`` frees the port."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        for s in (self.udp, self.tcp):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", self.port))
        self.tcp.listen(16)

    def close(self) -> None:
        self.udp.close()
        self.tcp.close()
