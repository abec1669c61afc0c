"""Binding listening sockets: DNS (UDP and TCP) and the HTTP listeners share these rules."""

from __future__ import annotations

import socket


class StartError(Exception):
    """The server cannot start (a port cannot be bound, a start-up hook failed)."""


def bind_socket(host: str, port: int, sock_type: int) -> socket.socket:
    """Bind one socket; "" means every address (dual-stack IPv6, else IPv4). Raises StartError."""
    proto = "udp" if sock_type == socket.SOCK_DGRAM else "tcp"
    candidates: list[tuple[int, str]]
    if host == "":
        candidates = [(socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")]
    else:
        candidates = [(socket.AF_INET6 if ":" in host else socket.AF_INET, host)]
    last: OSError | None = None
    for family, addr in candidates:
        sock = socket.socket(family, sock_type)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and host == "":
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            sock.bind((addr, port))
            if sock_type == socket.SOCK_STREAM:
                sock.listen(1024)
            sock.setblocking(False)
            return sock
        except OSError as e:
            sock.close()
            last = e
    raise StartError(f"listen {proto} {host}:{port}: {last.strerror if last else 'failed'}")
