"""``adapterctl undeploy``: registered from :mod:`adapterctl.cli.deploy` (one module per command
for the lazy registry in ``app.py``)."""

from adapterctl.cli.deploy import register_undeploy as register

__all__ = ["register"]
