"""`ensemble status`: each shard's state, occupancy, weight and pinned rooms, as the front door sees them.

The source is the refresher's state file on the front door host (its last plan): read locally
when run there, else over SSH from the front door the provider reports.

Example::

    state = load_status_state(spec)                  # local file or SSH to the front door
    print(format_status(status_rows(state)))
"""

from __future__ import annotations

import json
import shlex
import time
from pathlib import Path

from ensemble.errors import EnsembleError, UsageError
from ensemble.frontdoor.render import FrontdoorLayout
from ensemble.providers.base import Host
from ensemble.spec import FleetSpec
from ensemble.userfiles import parse_json, read_user_text

COLUMNS = ("shard", "state", "conferences", "participants", "stress", "weight", "pinned", "note")


# ---------------------------------------------------------------- facts

def status_rows(state: dict) -> list[dict]:
    """Rows of the status table from the refresher's state (weight in percent of new rooms).

    Example::

        status_rows({"plan": {"shards": [{"name": "s1", "state": "ready", "weight": 10000, ...}]}})[0]["weight"]
        # 100.0
    """
    rows = []
    for shard in state.get("plan", {}).get("shards", []):
        rows.append({
            "shard": shard["name"], "state": shard["state"], "conferences": shard["conferences"],
            "participants": shard["participants"], "stress": round(float(shard["stress"]), 3),
            "weight": round(shard["weight"] / 100, 2), "pinned": shard["pinned"],
            "pinned_rooms": shard.get("pinned_rooms", []), "note": shard.get("reason", ""),
        })
    return rows


def format_status(rows: list[dict], refreshed_at: float | None = None, now: float | None = None) -> str:
    """A plain-text table (weight in %, pinned = number of pinned rooms).

    Example::

        print(format_status(status_rows(state)))
    """
    table = [list(COLUMNS)]
    for row in rows:
        table.append([str(row["shard"]), row["state"], str(row["conferences"]), str(row["participants"]),
                      f"{row['stress']:.2f}", f"{row['weight']:.2f}%", str(row["pinned"]), row["note"]])
    widths = [max(len(r[i]) for r in table) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in table]
    if refreshed_at:
        age = (now or time.time()) - refreshed_at
        lines.append(f"(front door refreshed {age:.0f}s ago)")
    return "\n".join(lines)


def status_document(state: dict) -> dict:
    """The --json form: shards with their pinned rooms, the split, when it was computed."""
    return {"refreshed_at": state.get("refreshed_at"), "shards": status_rows(state),
            "split": state.get("plan", {}).get("split", []), "errors": state.get("errors", {})}


# ---------------------------------------------------------------- actions

def read_state_over_ssh(host: Host, path: str) -> dict:
    """The refresher's state file of the front door host, over SSH (pinned host key).

    Example::

        read_state_over_ssh(door, "/var/lib/ensemble/frontdoor/state.json")["plan"]["shards"]
    """
    from ensemble.ssh import Connection  # paramiko: only where status is read from afar

    with Connection(host) as conn:
        code, data, err = conn.run(f"cat {shlex.quote(path)}", timeout=30)
    if code != 0:
        raise EnsembleError(f"status: {host.name} has no {path} yet (has the front door refreshed?): "
                            f"{err[:120].strip()}")
    try:
        return json.loads(data)
    except ValueError as exc:
        raise EnsembleError(f"status: {host.name}:{path} is not JSON ({exc})") from None


def load_status_state(spec: FleetSpec, state_path: Path | None = None, layout: FrontdoorLayout | None = None,
                      hosts: list[Host] | None = None) -> dict:
    """The state from an explicit file, the local front door's file, or the front door over SSH."""
    layout = layout or FrontdoorLayout()
    local = state_path or Path(layout.state_path)
    if state_path:  # an argument: a bad file is bad input (exit 2)
        state = parse_json(read_user_text(local, "--state"), f"--state: {local}")
        if not isinstance(state, dict):
            raise UsageError(f"--state: {local} is not a front door state file (a JSON object)")
        return state
    if local.exists():  # this front door's own file: unreadable is a failure (exit 1)
        try:
            state = parse_json(read_user_text(local, "status"), f"status: {local}")
        except UsageError as exc:
            raise EnsembleError(str(exc)) from None
        if not isinstance(state, dict):
            raise EnsembleError(f"status: {local} is not a front door state file (a JSON object)")
        return state
    if hosts is None:
        from ensemble.identity import guard
        from ensemble.providers import get_provider

        hosts, _ = guard(spec, get_provider(spec), "status", disruptive_ok=True)  # this spec's fleet, or one line
    doors = [h for h in hosts if h.role == "frontdoor"]
    if not doors:
        raise EnsembleError(f"status: the fleet {spec.fleet.name!r} has no front door (run `ensemble deploy`)")
    return read_state_over_ssh(doors[0], layout.state_path)
