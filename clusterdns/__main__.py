"""``python -m clusterdns``."""

from clusterdns.cli import entry

entry()
