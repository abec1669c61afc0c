"""The registry and the execution order."""

from clusterdns.plugin import ORDER, load_all


def test_every_registered_plugin_is_in_order() -> None:
    assert set(load_all()) <= set(ORDER)
