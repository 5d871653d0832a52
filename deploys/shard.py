"""pyinfra deploy file: a complete Jitsi Meet shard on every shard of the inventory.

The same deploy `ensemble deploy` runs through pyinfra's Python API, for the plain CLI::

    ENSEMBLE_CONFIG=ensemble.toml pyinfra -y inventories/local.py deploys/shard.py

The spec comes from host data `ensemble_spec` (inventories/group_data/all.py: $ENSEMBLE_CONFIG).
Hosts of other roles (the front door) are left alone: see deploys/frontdoor.py.
"""

from pyinfra import host, inventory

from ensemble.components.shard import fleet_host, kept_reader
from ensemble.inventory import host_from_data
from ensemble.pyinfra_entry import cli_contexts

if host.data.get("ensemble_role", "shard") == "shard":
    # every inventory host's context, built once (ensemble.contexts), the same as `ensemble deploy`
    fleet_hosts = [host_from_data(h.name, h.data.dict()) for h in inventory]
    fleet_host(cli_contexts(host.data.get("ensemble_spec"), fleet_hosts, kept_reader(inventory)))
