"""pyinfra deploy file: a complete Jitsi Meet shard on every shard of the inventory.

The same deploy `ensemble deploy` runs through pyinfra's Python API, for the plain CLI::

    ENSEMBLE_CONFIG=examples/local.toml pyinfra -y inventories/local.py deploys/shard.py

The spec comes from host data `ensemble_spec` (inventories/group_data/all.py: $ENSEMBLE_CONFIG).
Hosts of other roles (the front door) are left alone: see deploys/frontdoor.py.
"""

from pyinfra import host

from ensemble.components.shard import cli_kwargs, fleet_host

if host.data.get("ensemble_role", "shard") == "shard":
    fleet_host(**cli_kwargs(host.data.get("ensemble_spec")))
