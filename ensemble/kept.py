"""What a fleet's hosts keep between runs, and the fleet's size decided from it. Pure parsing.

Each host keeps its secrets (/etc/ensemble/secrets.json); the front door also keeps the size record
(/etc/ensemble/fleet-size.json) that `ensemble fleet scale` decides. `ensemble deploy` (through the
runner) and the plain-pyinfra path (deploys/*.py) both read them with KEPT_COMMAND and decide the
size with `fleet_size`, so both deploy the same fleet.

Example::

    kept = parse_kept({"meet.example.org": "...", "demo-1.meet.example.org": "..."}, hosts)
    fleet_size(spec, kept.recorded)          # 3 after `ensemble fleet scale 3`
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from ensemble.errors import EnsembleError, UsageError
from ensemble.paths import FLEET_ID_FILE, FLEET_SIZE_FILE, SECRETS_FILE
from ensemble.providers.base import Host
from ensemble.spec import MAX_SHARDS, FleetSpec

SIZE_MARK = "#ensemble-fleet-size"
ID_MARK = "#ensemble-fleet-id"
SECRETS_MARK = "#ensemble-secrets"  # printed only when the secrets file exists: an empty file is not a missing one
KEPT_COMMAND = (f"if [ -e {SECRETS_FILE} ]; then echo '{SECRETS_MARK}'; cat {SECRETS_FILE}; fi; echo; "
                f"echo '{SIZE_MARK}'; cat {FLEET_SIZE_FILE} 2>/dev/null; "
                f"echo; echo '{ID_MARK}'; cat {FLEET_ID_FILE} 2>/dev/null; true")


@dataclass(frozen=True)
class KeptState:
    """What the hosts keep: each reachable host's secrets file text, the front door's size record."""

    secrets: dict[str, str]  # host name -> text of its secrets file ("" when none)
    recorded: dict | None = None  # {"shards": N, "spec_shards": M} from the front door, if any
    deployed: dict | None = None  # the fleet-id record (hostfiles.fleet_id_record): the front door's, else a shard's
    unreachable: tuple[str, ...] = ()  # hosts that could not be read


def _record(text: str) -> dict | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None  # unreadable: the spec decides
    if not isinstance(data, dict):
        return None
    values = [data.get("shards"), data.get("spec_shards")]
    if all(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= MAX_SHARDS for v in values):
        return {"shards": values[0], "spec_shards": values[1]}
    return None


def _deployed(text: str) -> dict | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else None


def check_kept_secrets(host: str, text: str) -> str:
    """A host's secrets file text, refused when it is not a JSON object of objects (truncated by a killed
    write, emptied, edited by hand): new secrets in its place would silently replace the ones its
    services and accounts use. Returns the text stripped.

    Example::

        check_kept_secrets("demo-1.meet.test", '{"fleet": {"occupancy_token": "x"}}')   # the same text
        check_kept_secrets("demo-1.meet.test", '{"fleet": {"occ')                       # UsageError
    """
    problem = None
    try:
        data = json.loads(text)
        if not (isinstance(data, dict) and all(isinstance(v, dict) for v in data.values())):
            problem = "not a JSON object of objects"
    except ValueError as exc:
        problem = "empty" if not text.strip() else f"not JSON: {str(exc).split(':')[0].lower()}"
    if problem:
        raise UsageError(f"{host}: {SECRETS_FILE} is corrupt or truncated ({problem}); nothing deployed. "
                         f"Restore it from a copy, or remove it on that host to have new secrets generated "
                         f"(the deploy then re-registers its accounts and restarts its services)")
    return text.strip()


def parse_kept(outputs: dict[str, str | None], hosts: list[Host]) -> KeptState:
    """Split KEPT_COMMAND's outputs ({host name: stdout, None when unreachable}); a secrets file that
    exists but does not parse stops everything (UsageError), see check_kept_secrets.

    Example::

        parse_kept({"meet.test": '#ensemble-secrets\\n{"fleet": {}}\\n#ensemble-fleet-size\\n{"shards": 3}'}, hosts)
    """
    secrets, recorded, deployed = {}, None, None
    doors = {h.name for h in hosts if h.role == "frontdoor"}
    for name, text in sorted(outputs.items(), key=lambda item: item[0] not in doors):  # the front door first
        if text is None:
            continue
        kept, _, rest = text.partition(SIZE_MARK)
        size, _, ident = rest.partition(ID_MARK)
        _, present, content = kept.partition(SECRETS_MARK)
        secrets[name] = check_kept_secrets(name, content) if present else ""
        if name in doors and size.strip():
            recorded = _record(size)
        if deployed is None and ident.strip():
            deployed = _deployed(ident)
    return KeptState(secrets=secrets, recorded=recorded, deployed=deployed,
                     unreachable=tuple(sorted(n for n, t in outputs.items() if t is None)))


def require_all_read(kept: KeptState) -> None:
    """Refuse to go on when a host could not be read: new secrets for a host that has some would lock it out."""
    if kept.unreachable:
        raise EnsembleError(f"cannot read what {', '.join(kept.unreachable)} keep(s) over SSH (host down or "
                            "unreachable); nothing deployed")


def fleet_size(spec: FleetSpec, recorded: dict | None) -> int:
    """How many shards the fleet has: what `fleet scale` recorded while the spec still says what it
    said then; the spec's `fleet.shards` otherwise (never recorded, or the spec was edited since).

    Example::

        fleet_size(spec_with_2, {"shards": 3, "spec_shards": 2})     # 3
        fleet_size(spec_with_4, {"shards": 3, "spec_shards": 2})     # 4 (the spec changed: it wins)
    """
    if recorded and recorded.get("spec_shards") == spec.fleet.shards:
        return int(recorded["shards"])
    return spec.fleet.shards


def refuse_shards_beyond(spec: FleetSpec, size: int, hosts: list[Host]) -> None:
    """A deploy never shrinks the fleet: shards beyond `size` (they may hold meetings) stop it with one
    line saying how to remove them safely (`ensemble fleet scale`, which drains first).

    Example::

        refuse_shards_beyond(spec, 2, hosts)     # UsageError naming demo-3 when it exists
    """
    beyond = sorted((h for h in hosts if h.role == "shard" and (h.shard or 0) > size), key=lambda h: h.shard or 0)
    if beyond:
        names = ", ".join(h.name for h in beyond)
        source = "its size record" if size != spec.fleet.shards else "the spec"
        raise UsageError(f"fleet.shards: the fleet has {size} shard(s) by {source} but {names} exist(s) and may "
                         f"hold meetings; `ensemble fleet scale {size}` drains and removes them, or set "
                         f"fleet.shards = {max(h.shard or 0 for h in beyond)}; nothing changed")


def size_notes(spec: FleetSpec, size: int) -> list[str]:
    """What the user should know when the fleet's size is not the spec's."""
    if size == spec.fleet.shards:
        return []
    return [f"the fleet has {size} shard(s) (`ensemble fleet scale`), the spec says {spec.fleet.shards}: "
            f"deploy keeps {size}; edit fleet.shards, or scale, to change it"]
