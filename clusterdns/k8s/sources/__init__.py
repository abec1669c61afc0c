"""Where the kubernetes plugin's objects come from: files (``objects``) or the API watch."""

from __future__ import annotations

from typing import Protocol

from clusterdns.k8s.store import Store


class Source(Protocol):
    """Feeds a Store; ``run`` is a long-lived task, ``synced`` turns true after the first full load."""

    def synced(self) -> bool: ...

    async def run(self, store: Store) -> None: ...
