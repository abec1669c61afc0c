"""Command line, CoreDNS-compatible: -conf, -dns.port (-p), -pidfile, -plugins, -quiet, -version.

As with Go's flag package, ``-conf x``, ``--conf x`` and ``-conf=x`` all work. Exit 0 on a clean
shutdown, 1 on a configuration or start-up error, with one line a person understands.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys

from clusterdns import __version__
from clusterdns.plugin import ORDER, load_all

log = logging.getLogger("clusterdns")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="clusterdns", allow_abbrev=False,
                                description="A cluster DNS server for Kubernetes (CoreDNS-compatible).")
    p.add_argument("-conf", "--conf", default="Corefile", metavar="PATH", help="Corefile to load (default: Corefile)")
    p.add_argument("-dns.port", "--dns.port", "-p", dest="port", type=int, default=53, metavar="N",
                   help="port of server blocks whose key names none (default: 53)")
    p.add_argument("-pidfile", "--pidfile", default="", metavar="PATH", help="write the process ID here")
    p.add_argument("-plugins", "--plugins", action="store_true", help="list the plugins of this build and exit")
    p.add_argument("-quiet", "--quiet", action="store_true", help="print nothing at start-up")
    p.add_argument("-version", "--version", action="store_true", help="show the version and exit")
    return p


def version_text() -> str:
    return (f"clusterdns-{__version__}\n{platform.system().lower()}/{platform.machine()}, "
            f"python{platform.python_version()}")


def plugins_text() -> str:
    registered = load_all()
    names = [n for n in ORDER if n in registered]
    return "Server types:\n  dns\n\nPlugins:\n" + "".join(f"  dns.{n}\n" for n in names)


class _Formatter(logging.Formatter):
    """CoreDNS's style: ``[INFO] plugin/reload: ...``."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if msg.startswith("["):  # already carries its level, like the errors plugin's lines
            return msg
        level = "WARNING" if record.levelno == logging.WARNING else record.levelname
        text = f"[{level}] {msg}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def setup_logging() -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(_Formatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(os.environ.get("CLUSTERDNS_LOG_LEVEL", "INFO").upper())


def main(argv: list[str] | None = None) -> int:
    args, extra = parser().parse_known_args(argv)
    if extra:
        print(f"clusterdns: extra command line arguments: {' '.join(extra)}", file=sys.stderr)
        return 1
    if args.version:
        print(version_text())
        return 0
    if args.plugins:
        print(plugins_text(), end="")
        return 0
    setup_logging()
    from clusterdns.server.run import run

    return run(args.conf, args.port, quiet=args.quiet, pidfile=args.pidfile)


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())

