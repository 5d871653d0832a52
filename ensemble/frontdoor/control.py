"""The front door's own view of the shards, asked from the operator's machine over SSH.

A lifecycle step (scale, upgrade) is done only when the front door itself reads the fleet as
expected: `refresh_now` runs the front door's refresh unit (the exact command its timer runs) and
returns the state file it wrote; `shard_states` reads each shard's state and reason from it.

Example::

    state = refresh_now(door)
    shard_states(state)["demo-2.meet.example.org"]      # ("ready", "")
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from ensemble.errors import EnsembleError
from ensemble.paths import FLEET_SIZE_FILE, FRONTDOOR_STATE
from ensemble.providers.base import Host

REFRESH_UNIT = "ensemble-frontdoor-refresh.service"
Progress = Callable[[str], None] | None


def _run(door: Host, command: str, timeout: float = 120) -> str:
    from ensemble.ssh import Connection

    with Connection(door) as conn:
        code, out, err = conn.run(command, timeout=timeout)
    if code != 0:
        raise EnsembleError(f"front door {door.name}: `{command.split(' ||')[0].split(' &&')[0]}` failed: "
                            f"{(err or out).strip()[-300:] or f'exit {code}'}")
    return out


def read_state(door: Host) -> dict:
    """The front door's last refresh state ({} when it never refreshed)."""
    text = _run(door, f"cat {FRONTDOOR_STATE} 2>/dev/null || true")
    try:
        state = json.loads(text) if text.strip() else {}
    except ValueError:
        raise EnsembleError(f"front door {door.name}: {FRONTDOOR_STATE} is not JSON") from None
    return state if isinstance(state, dict) else {}


def write_size_record(door: Host, shards: int, spec_shards: int) -> None:
    """Record the fleet's size on the front door now, before hosts are created or destroyed, so an
    interrupted `fleet scale` (or one with --hosts-only) leaves `deploy` the count the user asked for.
    The bytes are those deploy renders (hostfiles.fleet_size_record): the next deploy changes nothing."""
    from ensemble.hostfiles import fleet_size_record
    from ensemble.ssh import Connection

    with Connection(door) as conn:
        conn.write_file_atomically(FLEET_SIZE_FILE, fleet_size_record(shards, spec_shards), mode=0o644)


def refresh_now(door: Host, retries: int = 2) -> dict:
    """Run one refresh on the front door now (its own unit) and return the state it wrote.

    A failed run is retried (a refresh can fail once while a deploy reloads nginx under it); the
    last failure raises EnsembleError with the unit's last log lines.
    """
    command = (f"systemctl start {REFRESH_UNIT} || {{ sleep 2; systemctl start {REFRESH_UNIT}; }} || "
               f"{{ journalctl -u {REFRESH_UNIT} -n 6 --no-pager -o cat >&2; exit 1; }}")
    for attempt in range(retries):
        try:
            _run(door, command)
            break
        except EnsembleError:
            if attempt == retries - 1:
                raise
    return read_state(door)


def shard_states(state: dict) -> dict[str, tuple[str, str]]:
    """{shard name: (state, reason)} as the front door's last refresh decided.

    Example::

        shard_states({"plan": {"shards": [{"name": "a", "state": "ready", "reason": ""}]}})   # {"a": ("ready", "")}
    """
    shards = state.get("plan", {}).get("shards", []) if isinstance(state.get("plan"), dict) else []
    return {s["name"]: (s.get("state", "?"), s.get("reason", ""))
            for s in shards if isinstance(s, dict) and "name" in s}


def knows_shards(state: dict) -> bool:
    """Whether the state holds the front door's memory of shards (not a missing or reset state)."""
    memory = state.get("memory") if isinstance(state, dict) else None
    return isinstance(memory, dict) and bool(memory.get("shards"))


def ever_read(state: dict, name: str) -> bool:
    """Whether the front door ever read this shard as healthy (only then can it have routed rooms there)."""
    memory = state.get("memory", {}).get("shards", {}) if isinstance(state.get("memory"), dict) else {}
    entry = memory.get(name)
    return isinstance(entry, dict) and bool(entry.get("last_ok"))


def wait_until_ready(door: Host, names: list[str], *, attempts: int, interval: float, progress: Progress = None,
                     refresh: Callable[[Host], dict] = refresh_now,
                     sleep: Callable[[float], None] = time.sleep) -> dict[str, tuple[str, str]]:
    """Refresh the front door until it reads every shard in `names` as ready; return those it still
    does not, with their state and reason, after `attempts` refreshes ({} = all ready).

    Example::

        wait_until_ready(door, ["demo-3.meet.example.org"], attempts=5, interval=2)    # {}
    """
    missing: dict[str, tuple[str, str]] = {}
    for attempt in range(1, attempts + 1):
        try:
            states = shard_states(refresh(door))
        except EnsembleError as exc:
            if attempt == attempts:
                raise
            if progress:
                progress(f"{exc} (refresh {attempt}/{attempts}, retrying)")
            sleep(interval)
            continue
        missing = {n: states.get(n, ("unknown", "not in the front door's maps")) for n in names}
        missing = {n: view for n, view in missing.items() if view[0] != "ready"}
        if not missing:
            return {}
        if progress:
            progress("front door reads " + "; ".join(f"{n}: {s} ({r})" if r else f"{n}: {s}"
                                                     for n, (s, r) in sorted(missing.items()))
                     + f" (refresh {attempt}/{attempts})")
        if attempt < attempts:
            sleep(interval)
    return missing
