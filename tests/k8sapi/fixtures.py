"""pytest fixtures for the fake API server (``from tests.k8sapi.fixtures import fake_api, fake_kubeconfig``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from .server import FakeApiServer


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    """A running FakeApiServer (no token, 1 s bookmarks), stopped at the end of the test."""
    srv = FakeApiServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def fake_kubeconfig(fake_api: FakeApiServer, tmp_path: Path) -> str:
    """Path of a kubeconfig pointing at ``fake_api``."""
    return fake_api.write_kubeconfig(tmp_path / "kubeconfig")
