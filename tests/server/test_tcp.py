"""The TCP transport (clusterdns/server/tcp.py): the cap on connections, through the real process.
Real sockets on 127.0.0.1."""

from __future__ import annotations

import socket
import time
from contextlib import ExitStack

import dns.message
import dns.query
import pytest

from clusterdns.server.tcp import MAX_CONNECTIONS_ENV
from tests.conftest import DEMO_COREFILE, StartServer
from tests.procs import ROOT, answers

# --- the cap on connections, through the real process -----------------------------------------

CAP = 5
NAME = "nginx-service.default.svc.cluster.local."
WANT = {"10.0.0.228"}


def ask(s: socket.socket) -> set[str]:
    """One query on an open connection; its answer's addresses."""
    dns.query.send_tcp(s, dns.message.make_query(NAME, "A"))
    reply, _ = dns.query.receive_tcp(s, expiration=time.time() + 5)
    return answers(reply)


def connect_when_served(port: int, timeout: float = 5.0) -> socket.socket:
    """A connection that is answered; the server frees a slot only once it has seen a close, so
    until then a new connection may still be over the cap."""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            if ask(s) == WANT:
                return s
        except (EOFError, ConnectionResetError, BrokenPipeError):
            pass
        s.close()
        assert time.monotonic() < deadline, "no connection served again"
        time.sleep(0.05)


def assert_closed_at_once(port: int) -> None:
    """The kernel completes the handshake; the server then closes without reading or answering."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        try:
            dns.query.send_tcp(s, dns.message.make_query(NAME, "A"))
            assert s.recv(1) == b""  # a timeout here means the server kept the connection open
        except (ConnectionResetError, BrokenPipeError):  # reset: the query was unread at the close
            pass


@pytest.mark.e2e
def test_connections_over_the_cap_are_closed(start_server: StartServer) -> None:
    srv = start_server(
        DEMO_COREFILE,
        files={"cluster.yaml": (ROOT / "examples" / "cluster.yaml").read_text()},
        env={MAX_CONNECTIONS_ENV: str(CAP)},
    )
    with ExitStack() as stack:
        conns = [stack.enter_context(socket.create_connection(("127.0.0.1", srv.port), timeout=5)) for _ in range(CAP)]
        for s in conns:  # answered, so the server holds each of them
            assert ask(s) == WANT
        assert_closed_at_once(srv.port)
        for s in conns:  # the refusal cost those already in nothing
            assert ask(s) == WANT
        conns.pop().close()
        conns.pop().close()
        conns += [stack.enter_context(connect_when_served(srv.port)) for _ in range(2)]
        assert_closed_at_once(srv.port)  # full again: the count follows closes exactly
        for s in conns:
            assert ask(s) == WANT


@pytest.mark.e2e
def test_invalid_cap_fails_the_start(start_server: StartServer) -> None:
    srv = start_server(DEMO_COREFILE, files={"cluster.yaml": ""}, env={MAX_CONNECTIONS_ENV: "many"}, ready=False)
    srv.proc.wait(20)
    assert srv.stop() == 1
    assert f"clusterdns: {MAX_CONNECTIONS_ENV}: not a positive integer: 'many'" in srv.output()
