"""pyinfra inventory of a local fleet (systemd-nspawn hosts made by `ensemble deploy` or `fleet scale`).

Hosts are found by the local provider (names under its state folder), with their pinned known_hosts
and SSH key; groups `shards` and `frontdoor`. The spec is $ENSEMBLE_CONFIG::

    ENSEMBLE_CONFIG=ensemble.toml pyinfra -y inventories/local.py deploys/shard.py
"""

import os

from ensemble.inventory import pyinfra_groups
from ensemble.spec import load_spec

_groups = pyinfra_groups(load_spec(os.environ.get("ENSEMBLE_CONFIG", "ensemble.toml")))
shards = _groups["shards"]
frontdoor = _groups["frontdoor"]
