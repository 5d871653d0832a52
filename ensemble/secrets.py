"""Secrets: generated once, stored with mode 0600, never printed.

A secrets store is a plain mapping ``{host name: {secret name: value}}`` plus a
``"fleet"`` entry for values every host shares (the occupancy token the front door
presents to shards). The deploy keeps each host's own secrets on that host
(/etc/ensemble/secrets.json, 0600) and reads them back on later runs; `ensemble
render` uses a local store so its output is reproducible.

Example::

    store = load_or_create_secrets(Path(".ensemble/demo/secrets.json"), spec)
    store["demo-1.meet.example.org"]["jvb_password"]
"""

from __future__ import annotations

import json
import os
import secrets as _random
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import UsageError
from ensemble.userfiles import parse_json, read_user_text

if TYPE_CHECKING:
    from ensemble.providers.base import Host
    from ensemble.spec import FleetSpec

# turn_secret: coturn's shared secret; prosody derives the ephemeral TURN credentials from it
SHARD_SECRETS = ("focus_password", "jvb_password", "etherpad_api_key", "etherpad_session_key", "turn_secret")
FLEET_SECRETS = ("occupancy_token",)
FLEET_KEY = "fleet"
CA_ENTRY = "fleet-ca"  # the fleet CA {"key", "cert"} (ensemble.fleetca), kept by the front door only
SHARD_CERT, SHARD_KEY = "occupancy_tls_cert", "occupancy_tls_key"  # a shard's fleet-CA certificate (PEM)

Secrets = dict[str, dict[str, str]]


def new_secret() -> str:
    # URL-safe and free of quotes/backslashes, so it is safe in HOCON, Lua and JSON strings.
    return _random.token_urlsafe(24)


def complete_secrets(store: Secrets, spec: FleetSpec) -> bool:
    """Add whatever secret is missing for the spec's hosts; True if anything was added."""
    from ensemble.fleetca import complete_fleet_ca  # operator side only (cryptography)

    added = False
    wanted = {FLEET_KEY: FLEET_SECRETS, **{name: SHARD_SECRETS for name in spec.shard_names()}}
    for host, names in wanted.items():
        entry = store.setdefault(host, {})
        for name in names:
            if not entry.get(name):
                entry[name] = new_secret()
                added = True
    # the fleet CA and each shard's occupancy certificate (ensemble.fleetca)
    return complete_fleet_ca(store, spec.shard_names(), spec.fleet.name) or added


def merge_secrets(spec: FleetSpec, remote: dict[str, str | None], hosts: list[Host]) -> tuple[Secrets, bool]:
    """Each host's own kept secrets + the fleet entry (the front door's first), completed for the
    spec's shards; (store, added). `remote` is {host name: its secrets file's text, "" or None}.

    A new shard (scale up) gets its secrets here, generated like the first ones.

    Example::

        store, added = merge_secrets(spec, {"demo-1.meet.test": '{"demo-1.meet.test": {...}}'}, hosts)
    """
    kept: dict[str, dict] = {}
    for name, text in remote.items():
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            data = None
        if not isinstance(data, dict):
            # never regenerate over a damaged file: its host's services still use the old secrets
            raise UsageError(f"{name}: its kept secrets are corrupt or truncated (not a JSON object); nothing deployed")
        kept[name] = data
    store: Secrets = {}
    for name, data in kept.items():
        if isinstance(data.get(name), dict):
            store[name] = dict(data[name])
    doors = [h.name for h in hosts if h.role == "frontdoor"]
    for name in [*doors, *sorted(kept)]:  # the front door holds the fleet-wide token
        fleet = kept.get(name, {}).get(FLEET_KEY)
        if isinstance(fleet, dict) and fleet:
            store[FLEET_KEY] = dict(fleet)
            break
    for name in doors:  # the fleet CA lives on the front door only
        ca = kept.get(name, {}).get(CA_ENTRY)
        if isinstance(ca, dict) and ca:
            store[CA_ENTRY] = dict(ca)
            break
    added = complete_secrets(store, spec)
    return store, added


def write_private(path: Path, text: str) -> None:
    """Write a file readable by its owner only, atomically (no moment at a wider mode)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    if os.path.lexists(tmp):  # a leftover (or planted symlink/FIFO): never write through it
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def load_or_create_secrets(path: Path, spec: FleetSpec) -> Secrets:
    """Read the store at path, add missing secrets (written back at mode 0600)."""
    store: Secrets = {}
    exists = os.path.lexists(path)
    if exists:
        store = parse_json(read_user_text(path, "--secrets"), f"--secrets: {path}")
        if not isinstance(store, dict) or not all(isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
                                                  for v in store.values()):
            raise UsageError(f"--secrets: {path} must map host names to objects of string secrets")
    if complete_secrets(store, spec) or not exists:
        try:
            write_private(path, json.dumps(store, indent=2, sort_keys=True) + "\n")
        except OSError as exc:
            raise UsageError(f"--secrets: cannot write {path}: {exc.strerror}") from None
    return store


def secrets_path_for(spec: FleetSpec) -> Path:
    """Default local store: .ensemble/<fleet>/secrets.json beside the spec (or the cwd)."""
    base = Path(spec.source).parent if not spec.source.startswith("<") else Path.cwd()
    return base / ".ensemble" / spec.fleet.name / "secrets.json"
