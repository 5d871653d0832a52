"""The front door's on-host command (`ensemble frontdoor refresh`, run by its timer) as a plain function.

On-host code: it imports only what Debian ships on the front door (python3, click, jinja2).

Example::

    result = run_refresh(spec)                         # on the front door host
"""

from __future__ import annotations

from pathlib import Path

from ensemble.errors import UsageError
from ensemble.frontdoor.occupancy import OccupancySource
from ensemble.frontdoor.refresh import NginxControl, RefreshResult, refresh
from ensemble.frontdoor.render import FrontdoorLayout
from ensemble.secrets import FLEET_KEY
from ensemble.spec import FleetSpec
from ensemble.userfiles import parse_json, read_user_text


def occupancy_token(secrets_path: Path) -> str:
    """The fleet's occupancy token from a secrets file (never created here: the deploy puts it there).

    Example::

        occupancy_token(Path("/etc/ensemble/secrets.json"))
    """
    store = parse_json(read_user_text(secrets_path, "--secrets"), f"--secrets: {secrets_path}")
    token = store.get(FLEET_KEY, {}).get("occupancy_token") if isinstance(store, dict) else None
    if not token:
        raise UsageError(f"--secrets: {secrets_path} has no {FLEET_KEY}.occupancy_token")
    return token


def run_refresh(spec: FleetSpec, secrets_path: Path | None = None, layout: FrontdoorLayout | None = None,
                nginx: NginxControl | None = None, ca_file: str | None = None) -> RefreshResult:
    """One refresh with the production layout (see refresh.refresh).

    Example::

        run_refresh(spec).plan.split
    """
    layout = layout or FrontdoorLayout()
    token = occupancy_token(secrets_path or Path(layout.secrets_path))
    # every shard's occupancy listener is verified against the fleet CA (host name included), whatever
    # the TLS mode of the public site: a host answering for a shard's name without its certificate is refused
    source = OccupancySource(token=token, ca_file=ca_file or layout.fleet_ca_path)
    return refresh(spec, layout, source, nginx or NginxControl())
