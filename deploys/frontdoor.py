"""pyinfra deploy file: the front door (nginx, landing page, routing maps, refresh timer).

The same deploy `ensemble deploy` runs through pyinfra's Python API, for the plain CLI::

    ENSEMBLE_CONFIG=examples/local.toml pyinfra -y inventories/local.py deploys/frontdoor.py

The spec comes from host data `ensemble_spec` (inventories/group_data/all.py: $ENSEMBLE_CONFIG).
"""

from pyinfra import host

from ensemble.components.shard import cli_kwargs, fleet_host

if host.data.get("ensemble_role") == "frontdoor":
    fleet_host(**cli_kwargs(host.data.get("ensemble_spec")))
