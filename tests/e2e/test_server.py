"""The server as a whole: transports, protocol hygiene, hostile input, the command line, and the
objects source following its files while running."""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import StartServer
from tests.procs import ROOT, Server, answers

pytestmark = pytest.mark.e2e

OBJECTS_COREFILE = """\
.:{port} {
    bind 127.0.0.1
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {
        objects manifests
    }
}
"""


def service(name: str, ip: str, ns: str = "default") -> str:
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: {name}, namespace: {ns}}}
spec: {{clusterIP: {ip}, ports: [{{name: http, port: 80}}]}}
"""


def big_headless(n: int) -> str:
    eps = "\n".join(f"  - addresses: ['10.8.{i // 250}.{i % 250 + 1}']" for i in range(n))
    return f"""---
apiVersion: v1
kind: Service
metadata: {{name: big, namespace: default}}
spec: {{clusterIP: None}}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: big-1
  namespace: default
  labels: {{kubernetes.io/service-name: big}}
addressType: IPv4
endpoints:
{eps}
"""


@pytest.fixture
def objects_server(start_server: StartServer) -> Server:
    return start_server(OBJECTS_COREFILE, files={"manifests/a.yaml": service("alpha", "10.0.0.10") + big_headless(60)})


# --- transports ------------------------------------------------------------------------------


def test_udp_truncates_and_dig_retries_over_tcp(objects_server: Server) -> None:
    r = objects_server.query("big.default.svc.cluster.local.")
    assert r.flags & dns.flags.TC and not r.answer
    assert r.question[0].name.to_text() == "big.default.svc.cluster.local."
    full = objects_server.query("big.default.svc.cluster.local.", tcp=True)
    assert len(answers(full)) == 60
    out = objects_server.dig("big.default.svc.cluster.local", "+noedns", "+short")
    assert len(out.split()) == 60  # dig saw TC and asked again over TCP
    edns = objects_server.query("big.default.svc.cluster.local.", use_edns=0, payload=4096)
    assert not edns.flags & dns.flags.TC and len(answers(edns)) == 60


def test_tcp_pipelined_queries_on_one_connection(objects_server: Server) -> None:
    names = ["alpha.default.svc.cluster.local.", "nope.default.svc.cluster.local."] * 10
    with socket.create_connection(("127.0.0.1", objects_server.port), timeout=5) as s:
        queries = [dns.message.make_query(n, "A") for n in names]
        s.sendall(b"".join(struct.pack(">H", len(w)) + w for w in (q.to_wire() for q in queries)))
        got = {}
        for _ in queries:
            (size,) = struct.unpack(">H", _recv(s, 2))
            msg = dns.message.from_wire(_recv(s, size))
            got[msg.id] = msg
    for q in queries:
        want = dns.rcode.NOERROR if q.question[0].name.to_text().startswith("alpha") else dns.rcode.NXDOMAIN
        assert got[q.id].rcode() == want


def _recv(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = s.recv(n - len(buf))
        assert chunk, "connection closed"
        buf += chunk
    return buf


def test_slow_tcp_client_does_not_block_others(objects_server: Server) -> None:
    with socket.create_connection(("127.0.0.1", objects_server.port), timeout=5) as slow:
        slow.sendall(b"\x00\x40\x12")  # a frame that never completes
        for _ in range(5):
            assert answers(objects_server.query("alpha.default.svc.cluster.local.", tcp=True)) == {"10.0.0.10"}
            assert answers(objects_server.query("alpha.default.svc.cluster.local.")) == {"10.0.0.10"}


# --- protocol hygiene and hostile input ------------------------------------------------------


def _header(flags: int = 0, qd: int = 1, an: int = 0, ns: int = 0, ar: int = 0, qid: int = 0x4242) -> bytes:
    return struct.pack(">HHHHHH", qid, flags, qd, an, ns, ar)


QUESTION = b"\x05alpha\x07default\x03svc\x07cluster\x05local\x00\x00\x01\x00\x01"


@pytest.mark.parametrize(
    "payload,rcode",
    [
        (_header(qd=0), dns.rcode.FORMERR),
        (_header(qd=2) + QUESTION + QUESTION, dns.rcode.FORMERR),
        (_header() + b"\x05ab", dns.rcode.FORMERR),
        (_header() + b"\xc0\x0c\x00\x01\x00\x01", dns.rcode.FORMERR),
        (_header() + b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01", dns.rcode.FORMERR),
        (_header(flags=0x2000) + QUESTION, dns.rcode.NOTIMP),
        (_header() + QUESTION[:-2] + b"\x00\x03", dns.rcode.REFUSED),  # class CH
    ],
)
def test_malformed_packets_get_an_error_code(objects_server: Server, payload: bytes, rcode: int) -> None:
    out = objects_server.raw(payload)
    assert out is not None and out[:2] == b"\x42\x42" and out[2] & 0x80
    assert out[3] & 0xF == rcode


@pytest.mark.parametrize("payload", [b"", b"\x01", b"\x00" * 11, _header(flags=0x8000) + QUESTION])
def test_garbage_is_dropped(objects_server: Server, payload: bytes) -> None:
    assert objects_server.raw(payload, timeout=0.3) is None
    assert answers(objects_server.query("alpha.default.svc.cluster.local.")) == {"10.0.0.10"}


def test_badvers(objects_server: Server) -> None:
    q = dns.message.make_query("alpha.default.svc.cluster.local.", "A", use_edns=1)
    r = dns.query.udp(q, "127.0.0.1", port=objects_server.port, timeout=3)
    assert r.rcode() == dns.rcode.BADVERS


JUNK_BATCH = 50  # datagrams between two real queries: a fifth of what the receive buffer holds


def test_random_packets_never_stop_the_server(objects_server: Server) -> None:
    # The junk goes in batches, each followed by a query that must be answered. Sent in one burst,
    # the 2,000 datagrams overflowed the server socket's receive buffer (the default 208 KiB holds
    # ~250 small datagrams, ~830 bytes of accounting each) whenever the server ran slower than the
    # sender, as on a loaded machine: the kernel dropped most of the junk and then the query that
    # followed it (the socket's drop counter in /proc/net/udp rose by one). One socket is read in
    # order, so the answer to each query also shows that every datagram before it was read: all
    # the junk reaches the server, and no retry is needed.
    rng = random.Random(7)
    name = "alpha.default.svc.cluster.local."
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(2000):
            if i % 2:
                data = _header(qid=i) + bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 60)))
            else:
                data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 80)))
            s.sendto(data, ("127.0.0.1", objects_server.port))
            if i % JUNK_BATCH == JUNK_BATCH - 1:
                assert answers(objects_server.query(name, timeout=5.0)) == {"10.0.0.10"}
    with socket.create_connection(("127.0.0.1", objects_server.port), timeout=5) as t:
        t.sendall(b"\x00\x05hello\x00\x00" + bytes(range(40)))  # junk over TCP too
    assert answers(objects_server.query(name, timeout=5.0)) == {"10.0.0.10"}
    assert objects_server.proc.poll() is None


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=64), flags=st.integers(0, 0xFFFF), counts=st.tuples(*[st.integers(0, 3)] * 4))
def test_fuzzed_headers_answer_or_drop(
    objects_server: Server, body: bytes, flags: int, counts: tuple[int, int, int, int]
) -> None:
    objects_server.raw(_header(flags & ~0x8000, *counts) + body, timeout=0.05)
    assert objects_server.proc.poll() is None


def test_unserved_zone_is_refused(start_server: StartServer) -> None:
    srv = start_server(
        "cluster.local:{port} {\n  bind 127.0.0.1\n  kubernetes {\n    objects a.yaml\n  }\n}\n",
        files={"a.yaml": service("alpha", "10.0.0.10")},
    )
    assert srv.query("example.org.").rcode() == dns.rcode.REFUSED
    assert answers(srv.query("alpha.default.svc.cluster.local.")) == {"10.0.0.10"}


def test_end_of_chain_is_servfail(objects_server: Server) -> None:
    assert objects_server.query("example.org.").rcode() == dns.rcode.SERVFAIL


# --- the objects source while running --------------------------------------------------------


def _wait_for(server: Server, name: str, want: set[str], rcode: int = dns.rcode.NOERROR, timeout: float = 4.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = server.query(name)
        if r.rcode() == rcode and answers(r) == want:
            return
        assert time.monotonic() < deadline, f"{name}: still {r.rcode()} {answers(r)}"
        time.sleep(0.1)


def test_manifest_edits_are_followed(objects_server: Server) -> None:
    d = objects_server.corefile.parent / "manifests"
    (d / "b.yaml").write_text(service("beta", "10.0.0.11"))
    _wait_for(objects_server, "beta.default.svc.cluster.local.", {"10.0.0.11"})
    (d / "b.yaml").write_text(service("beta", "10.0.0.12"))
    _wait_for(objects_server, "beta.default.svc.cluster.local.", {"10.0.0.12"})
    (d / "b.yaml").unlink()
    _wait_for(objects_server, "beta.default.svc.cluster.local.", set(), dns.rcode.NXDOMAIN)


def test_broken_manifest_keeps_last_good_state(objects_server: Server) -> None:
    d = objects_server.corefile.parent / "manifests"
    (d / "a.yaml").write_text("kind: Service\nmetadata: [unclosed\n")
    objects_server.wait_for_line("cannot read")
    assert "a.yaml" in objects_server.wait_for_line("cannot read")
    assert answers(objects_server.query("alpha.default.svc.cluster.local.")) == {"10.0.0.10"}


def test_bad_object_is_skipped_alone(objects_server: Server) -> None:
    d = objects_server.corefile.parent / "manifests"
    bad = "---\nkind: Service\nmetadata: {name: broken, namespace: default}\nspec: {clusterIP: 999.1.1.1}\n"
    (d / "c.yaml").write_text(bad + service("gamma", "10.0.0.13"))
    _wait_for(objects_server, "gamma.default.svc.cluster.local.", {"10.0.0.13"})
    line = objects_server.wait_for_line("skipping")
    assert "Service default/broken" in line and "c.yaml" in line


# --- the command line -------------------------------------------------------------------------


def _cli(*args: str, cwd: Path = ROOT, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clusterdns", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def test_version_and_plugins() -> None:
    assert _cli("-version").stdout.startswith("clusterdns-")
    plugins = _cli("--plugins").stdout
    for name in ("dns.kubernetes", "dns.errors", "dns.log", "dns.bind"):
        assert name in plugins


def test_missing_corefile_exits_1(tmp_path: Path) -> None:
    r = _cli("-conf=" + str(tmp_path / "nope"))
    assert r.returncode == 1 and "nope" in r.stderr


def test_extra_arguments_are_fatal() -> None:
    assert _cli("-version", "surplus").returncode == 1


@pytest.mark.parametrize(
    "text,needle",
    [
        (
            "{port_block}\n    kubernetes cluster.local {{\n        podz insecure\n    }}\n}}\n",
            ':3: kubernetes: unknown property "podz"',
        ),
        ("{port_block}\n    nosuchplugin\n}}\n", ":2: unknown directive 'nosuchplugin'"),
        ("{port_block}\n    kubernetes {{\n        ttl 99999\n    }}\n}}\n", ":3: kubernetes: ttl"),
        ("{port_block}\n    kubernetes {{\n        objects missing.yaml\n    }}\n}}\n", ":3: kubernetes: objects"),
        ("{port_block}\n    errors\n", ":1:"),
    ],
)
def test_corefile_errors_name_file_line_and_plugin(tmp_path: Path, text: str, needle: str) -> None:
    (tmp_path / "Corefile").write_text(text.format(port_block=".:15353 {"))
    r = _cli("-conf", str(tmp_path / "Corefile"))
    assert r.returncode == 1
    assert needle.replace('"podz"', "'podz'") in r.stderr or needle in r.stderr, r.stderr
    assert "Corefile" in r.stderr


def test_bind_error_exits_1(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        (tmp_path / "Corefile").write_text(f".:{port} {{\n  bind 127.0.0.1\n  errors\n}}\n")
        r = _cli("-conf", str(tmp_path / "Corefile"))
    assert r.returncode == 1 and "listen udp" in r.stderr


def test_sigterm_exits_0(objects_server: Server) -> None:
    assert objects_server.stop() == 0


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback on this machine")
def test_block_without_bind_listens_on_ipv4_and_ipv6(start_server: StartServer) -> None:
    srv = start_server(".:{port} {\n  kubernetes cluster.local {\n    objects a.yaml\n  }\n}\n",
                       files={"a.yaml": service("alpha", "10.0.0.10")})
    q = dns.message.make_query("alpha.default.svc.cluster.local.", "A")
    for host in ("127.0.0.1", "::1"):
        assert answers(dns.query.udp(q, host, port=srv.port, timeout=3)) == {"10.0.0.10"}
        assert answers(dns.query.tcp(q, host, port=srv.port, timeout=3)) == {"10.0.0.10"}


def test_pidfile_written_and_removed(start_server: StartServer, tmp_path: Path) -> None:
    pidfile = tmp_path / "clusterdns.pid"
    srv = start_server(OBJECTS_COREFILE, files={"manifests/a.yaml": service("alpha", "10.0.0.10")},
                       args=("-pidfile", str(pidfile)))
    assert pidfile.read_text().strip() == str(srv.proc.pid)
    assert srv.stop() == 0
    assert not pidfile.exists()


def test_quiet_prints_no_ready_line(start_server: StartServer) -> None:
    srv = start_server(OBJECTS_COREFILE, files={"manifests/a.yaml": service("alpha", "10.0.0.10")},
                       args=("-quiet",), ready=False)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            if answers(srv.query("alpha.default.svc.cluster.local.", timeout=0.5)) == {"10.0.0.10"}:
                break
        except (dns.exception.Timeout, OSError):  # not listening yet
            pass
        time.sleep(0.1)
    else:
        raise AssertionError("no answer")
    assert not any("ready:" in line for line in srv.lines)


def test_idle_tcp_connection_is_closed(objects_server: Server) -> None:
    from clusterdns.server.tcp import IDLE_TIMEOUT

    with socket.create_connection(("127.0.0.1", objects_server.port), timeout=IDLE_TIMEOUT + 5) as s:
        start = time.monotonic()
        s.sendall(b"\x00\x40\x12")  # half a frame, then silence
        assert s.recv(1) == b""  # the server hung up
        assert IDLE_TIMEOUT - 1 <= time.monotonic() - start <= IDLE_TIMEOUT + 3
