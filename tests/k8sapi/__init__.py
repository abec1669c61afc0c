"""An in-process fake Kubernetes API server speaking the real list/watch HTTP protocol (for tests)."""

from .server import KINDS, FakeApiServer, KindInfo

__all__ = ["KINDS", "FakeApiServer", "KindInfo"]
