"""The servers under test, each a real process on 127.0.0.1 pinned to a core with ``taskset``.

clusterdns runs the production chain (as far as this build has its plugins); dnsmasq serves the same
names from a hosts file; unbound serves them as local-data (the TCP baseline: dnsmasq forks per TCP
connection). Every process writes its output to a log file in the work directory, never to a pipe
nobody reads, and ``stop`` always ends it.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from clusterdns.wire import encode_name

ROOT = Path(__file__).resolve().parent.parent
SERVER_CORE = "0"
CLIENT_CORE = "1"
NICE = 0  # set once by bench.run (--nice): other work on a shared machine then steals less of a round
TTL = 30  # kubeadm's Corefile serves the cluster zone with ttl 30; the other servers get the same

# The production chain of kubeadm's kube-dns Corefile, in the order CoreDNS runs it.
PRODUCTION = ("errors", "health", "ready", "prometheus", "kubernetes", "cache", "loadbalance", "forward")


def binary(name: str) -> str:
    path = shutil.which(name) or f"/usr/sbin/{name}"
    if not Path(path).exists():
        raise RuntimeError(f"{name} is not installed")
    return path


def pinned(core: str, cmd: list[str]) -> list[str]:
    """``cmd`` on one core (and at the bench's priority): ``nice`` and ``taskset`` exec it, same pid."""
    return (["nice", "-n", str(NICE)] if NICE else []) + ["taskset", "-c", core, *cmd]


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1 (as far as one can tell)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
                try:
                    t.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


def probe(port: int, name: str, timeout: float = 0.3) -> int | None:
    """Ask 127.0.0.1:port for ``name`` A over UDP; the reply's rcode, or None without a reply."""
    qid = random.getrandbits(16)
    query = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + encode_name(name) + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(query, ("127.0.0.1", port))
        try:
            data = s.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            return None
    if len(data) < 12 or struct.unpack_from(">H", data)[0] != qid:
        return None
    return data[3] & 0x0F


def clusterdns_plugins() -> list[str]:
    """The plugins this build of clusterdns lists with ``-plugins``."""
    res = subprocess.run([sys.executable, "-m", "clusterdns", "-plugins"], capture_output=True, text=True,
                         timeout=60, cwd=ROOT, env=_env(), stdin=subprocess.DEVNULL)
    if res.returncode != 0:
        raise RuntimeError(f"clusterdns -plugins failed ({res.returncode}):\n{res.stderr.strip()[-1500:]}")
    return [ln.strip()[len("dns."):] for ln in res.stdout.splitlines() if ln.strip().startswith("dns.")]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def corefile(port: int, objects: Path, available: list[str], origin: int | None) -> tuple[str, list[str]]:
    """The production Corefile limited to ``available`` plugins; also returns the missing ones.

    ``forward`` is used only with an ``origin`` port (the loopback upstream of the forward mode).
    """
    missing = [p for p in PRODUCTION if p not in available]
    lines = [f".:{port} {{", "    bind 127.0.0.1"]
    for name in PRODUCTION:
        if name in missing:
            continue
        match name:
            case "health" | "ready" | "prometheus":
                lines.append(f"    {name} 127.0.0.1:{free_port()}")
            case "kubernetes":
                lines += ["    kubernetes cluster.local in-addr.arpa ip6.arpa {", f"        objects {objects}",
                          "        pods insecure", "        fallthrough in-addr.arpa ip6.arpa", f"        ttl {TTL}",
                          "    }"]
            case "cache":  # as Corefile.example and kubeadm: cluster names are never cached
                lines += ["    cache 30 {", "        disable success cluster.local",
                          "        disable denial cluster.local", "    }"]
            case "forward":
                if origin is not None:
                    lines.append(f"    forward . 127.0.0.1:{origin}")
            case _:
                lines.append(f"    {name}")
    lines.append("}")
    return "\n".join(lines) + "\n", missing


@dataclass
class Proc:
    """One server process; ``name`` labels it in results."""

    name: str
    cmd: list[str]
    port: int
    log_path: Path
    probe_name: str
    cwd: Path | None = None
    env: dict[str, str] | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 60.0) -> Proc:
        """Start and wait until it answers ``probe_name`` with NOERROR; raises RuntimeError with its log."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=self.cwd, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}")
            if probe(self.port, self.probe_name) == 0:  # NOERROR: listening and loaded
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def clusterdns(workdir: Path, objects: Path, available: list[str], origin: int | None,
               probe_name: str) -> tuple[Proc, list[str]]:
    """clusterdns on core 0 with the production chain; also returns the plugins it lacks."""
    port = free_port()
    text, missing = corefile(port, objects, available, origin)
    conf = workdir / f"Corefile-{port}"
    conf.write_text(text)
    cmd = pinned(SERVER_CORE, [sys.executable, "-m", "clusterdns", "-conf", str(conf)])
    return Proc("clusterdns", cmd, port, workdir / f"clusterdns-{port}.log", probe_name, cwd=workdir,
                env=_env()), missing


def dnsmasq(workdir: Path, hosts: Path | None, origin: int | None, probe_name: str,
            core: str = SERVER_CORE, name: str = "dnsmasq", local_ttl: int = TTL) -> Proc:
    """dnsmasq answering the hosts file (NXDOMAIN for the rest of cluster.local), forwarding to ``origin``."""
    port = free_port()
    cmd = pinned(core, [binary("dnsmasq"), "--no-daemon", f"--port={port}", "--listen-address=127.0.0.1",
                        "--bind-interfaces", "--no-resolv", "--no-hosts", "--pid-file=", "--user=root",
                        "--cache-size=10000", f"--local-ttl={local_ttl}", "--local=/cluster.local/"])
    if hosts is not None:
        cmd.append(f"--addn-hosts={hosts}")
    if origin is not None:
        cmd.append(f"--server=127.0.0.1#{origin}")
    return Proc(name, cmd, port, workdir / f"{name}-{port}.log", probe_name)


def origin(workdir: Path, hosts: Path, probe_name: str) -> Proc:
    """The upstream of the forward mode: dnsmasq on the client core, answering external names (TTL 1 h)."""
    return dnsmasq(workdir, hosts, None, probe_name, core=CLIENT_CORE, name="origin", local_ttl=3600)


def unbound(workdir: Path, local_data: list[str], probe_name: str) -> Proc:
    """unbound, one thread, serving the cluster names as a static local zone; TCP-ready."""
    port = free_port()
    conf = workdir / f"unbound-{port}.conf"
    lines = [
        "server:", "  interface: 127.0.0.1", f"  port: {port}", "  do-daemonize: no", "  use-syslog: no",
        '  chroot: ""', '  username: ""', f'  directory: "{workdir}"', '  pidfile: ""', '  logfile: ""',
        "  verbosity: 0", "  num-threads: 1", "  do-ip6: no", "  incoming-num-tcp: 100",
        "  so-reuseport: no", '  local-zone: "cluster.local." static',
    ]
    lines += [f'  local-data: "{d}"' for d in local_data]
    conf.write_text("\n".join(lines) + "\n")
    cmd = pinned(SERVER_CORE, [binary("unbound"), "-d", "-c", str(conf)])
    return Proc("unbound", cmd, port, workdir / f"unbound-{port}.log", probe_name)
