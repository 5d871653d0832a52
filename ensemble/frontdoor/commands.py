"""The front door's on-host command (`ensemble frontdoor refresh`, run by its timer) as a plain function,
and its own command line (`host_main`, argparse): the host's launcher sends `ensemble frontdoor refresh`
here, not to the click CLI.

On-host code: it imports only what Debian ships on the front door (python3 >= 3.9, jinja2 >= 2.11), no
click (bullseye's 7.1 lacks what ensemble's CLI uses) and no tomllib (python 3.11): the spec it reads is
the JSON the deploy writes (ensemble.spec.spec_json).

Example::

    result = run_refresh(spec)                         # on the front door host
    host_main(["refresh", "--config", "/etc/ensemble/ensemble.json", "--shards", "2", "--json"])
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from ensemble.errors import EnsembleError, UsageError
from ensemble.frontdoor.occupancy import OccupancySource
from ensemble.frontdoor.refresh import NginxControl, RefreshResult, refresh
from ensemble.frontdoor.render import FrontdoorLayout
from ensemble.secrets import FLEET_KEY
from ensemble.spec import MAX_SHARDS, FleetSpec, load_spec
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


def _shard_count(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(f"must be 1-{MAX_SHARDS}, got {text!r}")
    return count


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line and exit code 2, like the click CLI's."""

    def error(self, message: str):
        print(f"ensemble: error: {message}", file=sys.stderr)
        sys.exit(2)


def host_main(argv: list[str] | None = None) -> int:
    """`ensemble frontdoor refresh [--config F] [--secrets F] [--shards N] [--json]` on the front door host.

    Same options, output and exit codes as the CLI's command (errors: one line, 2 for bad input, 1 for
    operational failures; ENSEMBLE_DEBUG=1 shows the traceback).

    Example::

        host_main(["refresh", "--config", "/etc/ensemble/ensemble.json", "--shards", "2"])   # 0
    """
    parser = _OneLineParser(prog="ensemble frontdoor")
    commands = parser.add_subparsers(dest="command", required=True)
    command = commands.add_parser("refresh", help="read every shard's occupancy, rewrite the routing maps, "
                                                  "reload nginx if they changed")
    command.add_argument("--config", type=Path, default=Path(FrontdoorLayout().spec_path),
                         help="the fleet spec as deployed (JSON, or TOML on python >= 3.11)")
    command.add_argument("--secrets", type=Path, default=None, help="secrets file holding fleet.occupancy_token")
    command.add_argument("--shards", type=_shard_count, default=None, help="the fleet's shard count in force")
    command.add_argument("--json", dest="as_json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.config)
        result = run_refresh(spec.with_shards(args.shards) if args.shards else spec, args.secrets)
    except EnsembleError as exc:
        if os.environ.get("ENSEMBLE_DEBUG"):
            raise
        message = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in str(exc))
        print(f"ensemble: error: {message[:1000]}", file=sys.stderr)
        return exc.exit_code
    if args.as_json:
        print(json.dumps(result.to_json(), indent=2, sort_keys=True))
    else:
        states = ", ".join(f"{d.name}={d.state}" for d in result.plan.shards)
        print(f"{len(result.plan.pins)} pinned room(s); {states}; "
              f"{'maps changed, nginx reloaded' if result.reloaded else 'no change'} ({result.seconds:.2f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(host_main())
