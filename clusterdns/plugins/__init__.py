"""One module per plugin; each registers its setup with ``clusterdns.plugin.register``."""
