"""The files a new user runs first: Corefile.local and the demo cluster must stay valid."""

from __future__ import annotations

import logging

import pytest

from clusterdns.corefile import parse_file
from clusterdns.k8s.objects import KINDS
from clusterdns.k8s.sources.files import load_objects
from clusterdns.server.app import App
from tests.procs import ROOT


def test_corefile_local_configures() -> None:
    path = str(ROOT / "Corefile.local")
    app = App(path, 53)
    app.configure(parse_file(path))
    names = {d.name for s in app.sites for d in s.block.directives}
    assert {"bind", "kubernetes", "health", "ready", "prometheus"} <= names
    assert [s.config.binds for s in app.sites] == [["127.0.0.1"]]


def test_demo_cluster_loads_without_skipping_anything(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        objs = load_objects(str(ROOT / "examples" / "cluster.yaml"))
    assert not caplog.records
    kinds = [type(o).__name__ for o in objs]
    assert set(kinds) <= set(KINDS) and kinds.count("Service") == 5
