"""Data for every host of the inventories here: which fleet spec the deploys load.

Set $ENSEMBLE_CONFIG to the spec file (default: ensemble.toml in the current folder).
"""

import os

ensemble_spec = os.environ.get("ENSEMBLE_CONFIG", "ensemble.toml")
