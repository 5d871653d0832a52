"""A fleet knows who it is: name + domain + a fleet id made at its first deploy, and the provider account.

Three places hold the identity:

- the provider's records, where the fleet is found again (Scaleway tags `ensemble-fleet-id=`,
  `ensemble-domain=`, `ensemble-os=` on every server; the same keys in the local provider's host.json),
  stamped on every host at creation (`stamp_labels`);
- the operator's side, beside the spec's local secrets: `.ensemble/<fleet>/identity.json`
  (`record_path_for`), which says which fleet this spec deployed (id, domain, provider account);
- every host, beside its secrets: `/etc/ensemble/fleet-id` (rendered by deploy; the fleet id also
  sits in the fleet entry of /etc/ensemble/secrets.json).

`check_identity` compares the spec (and its record) with the fleet the provider finds, before any host
is touched: another domain, another id or another provider account stops the command with one line
naming the fleet found and what differs (UsageError, exit 2). With the spec's own id, the differences
that would disrupt a live fleet (domain, TLS mode, shard naming, OS profile) are returned as
`disruptive`: `plan` shows them, `deploy` needs `--allow-disruptive`, other commands refuse.

Example::

    found = found_identity(provider.list_hosts(spec))            # FoundFleet(fleet_id="f-3k9...", ...)
    verdict = check_identity(spec, provider_account(provider), found, record_path_for(spec), "deploy")
    verdict.identity.fleet_id, verdict.disruptive                 # ("f-3k9...", [])
"""

from __future__ import annotations

import json
import secrets as _random
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import EnsembleError, UsageError
from ensemble.secrets import secrets_path_for, write_private

if TYPE_CHECKING:
    from ensemble.providers.base import Host, Provider
    from ensemble.spec import FleetSpec

ID_LABEL = "ensemble-fleet-id"
DOMAIN_LABEL = "ensemble-domain"
OS_LABEL = "ensemble-os"
RECORD_NAME = "identity.json"


@dataclass(frozen=True)
class FleetIdentity:
    """Who a fleet is: its name, public domain, id (made at first deploy) and provider account.

    Example::

        FleetIdentity("demo", "meet.example.org", "f-3k9q2m8x1c", "local")
    """

    name: str
    domain: str
    fleet_id: str
    account: str

    def as_dict(self) -> dict[str, str]:
        return {"name": self.name, "domain": self.domain, "fleet_id": self.fleet_id, "account": self.account}


@dataclass(frozen=True)
class FoundFleet:
    """What the provider's records say about the fleet found under a name (None: nothing says it).

    Example::

        found_identity(hosts)   # FoundFleet("demo", "meet.ensemble.test", "f-3k9q2m8x1c", 3, {"debian-bookworm"}, ...)
    """

    name: str
    domain: str | None  # the front door's name (or the hosts' domain label)
    fleet_id: str | None  # None: hosts made before fleets had ids
    hosts: int
    os_profiles: frozenset[str] = frozenset()
    shard_names: dict[int, str] = field(default_factory=dict)  # {shard number: host name}

    def describe(self) -> str:
        bits = [f"domain {self.domain}" if self.domain else "no front door",
                f"id {self.fleet_id}" if self.fleet_id else "no id (made before fleet ids)"]
        return f"fleet {self.name!r} ({', '.join(bits)}, {self.hosts} host(s))"


@dataclass(frozen=True)
class Verdict:
    """The identity to act as, and the disruptive changes the spec makes to the live fleet."""

    identity: FleetIdentity
    disruptive: list[str] = field(default_factory=list)
    new: bool = False  # no fleet found: the id was made for this run


def new_fleet_id() -> str:
    """A fresh fleet id. Example: new_fleet_id() -> "f-3k9q2m8x1cwe"."""
    return "f-" + _random.token_hex(6)


def stamp_labels(identity: FleetIdentity, spec: FleetSpec) -> dict[str, str]:
    """The labels every host created for this fleet carries (Scaleway tags, local host records).

    Example::

        stamp_labels(identity, spec)  # {"ensemble-fleet-id": "f-...", "ensemble-domain": "meet...", "ensemble-os": ...}
    """
    return {ID_LABEL: identity.fleet_id, DOMAIN_LABEL: identity.domain, OS_LABEL: spec.fleet.os}


def found_identity(name: str, hosts: list[Host]) -> FoundFleet | None:
    """The identity the provider's records give the fleet found under `name`; None when it has no host.

    Raises UsageError when the hosts carry two different ids (two fleets share the name).
    """
    if not hosts:
        return None
    ids = sorted({h.labels[ID_LABEL] for h in hosts if h.labels.get(ID_LABEL)})
    if len(ids) > 1:
        raise UsageError(f"fleet.name: the hosts named {name!r} belong to {len(ids)} fleets (ids {', '.join(ids)}); "
                         "nothing changed: remove the stray hosts or rename one fleet")
    door = next((h for h in hosts if h.role == "frontdoor"), None)
    domains = sorted({h.labels[DOMAIN_LABEL] for h in hosts if h.labels.get(DOMAIN_LABEL)})
    domain = door.name if door is not None else (domains[0] if domains else None)
    return FoundFleet(name=name, domain=domain, fleet_id=ids[0] if ids else None, hosts=len(hosts),
                      os_profiles=frozenset(h.labels[OS_LABEL] for h in hosts if h.labels.get(OS_LABEL)),
                      shard_names={h.shard: h.name for h in hosts if h.role == "shard" and h.shard})


# ---- the operator's record ----

def record_path_for(spec: FleetSpec) -> Path:
    """Where this spec's identity record lives: beside its local secrets (.ensemble/<fleet>/identity.json)."""
    return secrets_path_for(spec).with_name(RECORD_NAME)


def read_record(path: Path) -> FleetIdentity | None:
    """The identity record at path; None when there is none; UsageError when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable fleet identity record ({exc.__class__.__name__}); "
                         "remove it to adopt the fleet found under the spec's name") from None
    keys = ("name", "domain", "fleet_id", "account")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) and data.get(k) for k in keys):
        raise UsageError(f"{path}: a fleet identity record needs {', '.join(keys)}; "
                         "remove it to adopt the fleet found under the spec's name")
    return FleetIdentity(*(data[k] for k in keys))


def write_record(path: Path, identity: FleetIdentity) -> None:
    """Write the identity record (0600, atomically) unless it already says exactly this."""
    if read_record_quietly(path) == identity:
        return
    write_private(path, json.dumps(identity.as_dict(), indent=2, sort_keys=True) + "\n")


def read_record_quietly(path: Path) -> FleetIdentity | None:
    try:
        return read_record(path)
    except UsageError:
        return None


def forget_record(path: Path, identity: FleetIdentity | None = None) -> None:
    """Remove the record after the fleet is destroyed (only if it still names that fleet)."""
    if identity is None or read_record_quietly(path) == identity:
        path.unlink(missing_ok=True)
        try:
            path.parent.rmdir()  # .ensemble/<fleet>/ when nothing else (render's secrets) is kept there
        except OSError:
            pass


# ---- the check ----

def disruptive_changes(spec: FleetSpec, found: FoundFleet, deployed: dict | None = None) -> list[str]:
    """What the spec changes on a live fleet that users would notice: domain, TLS mode, shard naming, OS.

    `deployed` is the fleet's own record of how it was deployed (/etc/ensemble/fleet-id, read back from
    the hosts), when known; the provider's records give the rest.

    Example::

        disruptive_changes(spec, found)   # ["domain: meet.ensemble.test -> meet.example.org (...)"]
    """
    changes = []
    if found.domain and found.domain != spec.fleet.domain:
        changes.append(f"domain: {found.domain} -> {spec.fleet.domain} (every address and certificate changes)")
    renamed = {n: (old, spec.shard_name(n)) for n, old in found.shard_names.items() if old != spec.shard_name(n)}
    if renamed and not (found.domain and found.domain != spec.fleet.domain and not deployed):
        sample = ", ".join(f"{old} -> {new}" for old, new in list(renamed.values())[:2])
        changes.append(f"shard naming: {sample}{' ...' if len(renamed) > 2 else ''} "
                       "(live meetings' addresses change; hosts keep their old names until recreated)")
    others = sorted(found.os_profiles - {spec.fleet.os})
    if others:
        changes.append(f"OS profile: {', '.join(others)} -> {spec.fleet.os} (hosts are not reinstalled)")
    if deployed:
        tls = deployed.get("tls_mode")
        if isinstance(tls, str) and tls and tls != spec.tls.mode:
            changes.append(f"TLS mode: {tls} -> {spec.tls.mode} (certificates are replaced)")
        naming = deployed.get("shard_name")
        if isinstance(naming, str) and naming and naming != spec.fleet.shard_name and not renamed:
            changes.append(f"shard naming: {naming} -> {spec.fleet.shard_name}")
    return changes


def check_identity(spec: FleetSpec, account: str, found: FoundFleet | None, record: Path, command: str, *,
                   create: bool = False) -> Verdict:
    """Decide whether this spec may act on the fleet found under its name; see the module docstring.

    `create`: the command may start a new fleet (deploy): with nothing found, an id is made (and kept
    by `remember`). Raises UsageError (one line: the fleet found and what differs) and changes nothing.
    """
    mine = read_record(record)
    name = spec.fleet.name
    where = f"run `ensemble {command}` with the spec of that fleet, or give this spec another fleet.name"
    if mine is not None and mine.name != name:
        mine = None  # a record copied from another fleet's folder says nothing about this one
    if mine is not None and mine.account != account:
        raise UsageError(f"fleet.name: this spec's fleet {name!r} (id {mine.fleet_id}) lives in {mine.account}, "
                         f"but the spec now reaches {account}; nothing changed (remove {record} to start "
                         "a new fleet there)")
    if found is None:
        if mine is not None:
            return Verdict(FleetIdentity(name, spec.fleet.domain, mine.fleet_id, account), new=True)
        return Verdict(FleetIdentity(name, spec.fleet.domain, new_fleet_id() if create else "", account), new=True)
    if mine is not None and found.fleet_id and found.fleet_id != mine.fleet_id:
        raise UsageError(f"fleet.name: found {found.describe()} on {account}; this spec's fleet is id "
                         f"{mine.fleet_id} ({record}): another fleet has this name; nothing changed; {where}")
    if mine is None and found.domain and found.domain != spec.fleet.domain:
        raise UsageError(f"fleet.domain: found {found.describe()} on {account}; this spec says domain "
                         f"{spec.fleet.domain} and has no record of that fleet ({record}); nothing changed; {where}")
    fleet_id = found.fleet_id or (mine.fleet_id if mine else "") or (new_fleet_id() if create else "")
    identity = FleetIdentity(name, spec.fleet.domain, fleet_id, account)
    return Verdict(identity, disruptive_changes(spec, found))


def remember(spec: FleetSpec, identity: FleetIdentity) -> None:
    """Keep the identity beside the spec's secrets (after the check passed, before hosts are made)."""
    if identity.fleet_id:
        write_record(record_path_for(spec), identity)


def refuse_disruptive(changes: list[str], command: str, allow: bool = False) -> None:
    """One line when the spec disrupts the live fleet and the command may not do that."""
    if not changes or allow:
        return
    if command == "deploy":
        raise UsageError("the spec makes disruptive changes to the live fleet: " + "; ".join(changes) +
                         "; review them with `ensemble plan`, then `ensemble deploy --allow-disruptive`; "
                         "nothing changed")
    raise UsageError(f"{command}: the spec makes disruptive changes to the live fleet (" + "; ".join(changes) +
                     "): deploy them first (`ensemble deploy --allow-disruptive`) or revert the spec; "
                     "nothing changed")


def guard(spec: FleetSpec, provider: Provider, command: str, hosts: list[Host] | None = None, *,
          disruptive_ok: bool = False) -> tuple[list[Host], Verdict]:
    """The fleet's hosts (listed unless given), once the fleet found under the spec's name is this spec's;
    else one line naming the fleet found and what differs (UsageError, exit 2), before any host is touched.
    A spec that would disrupt the live fleet is refused too (deploy it first), unless `disruptive_ok`.

    Example::

        hosts, verdict = guard(spec, provider, "fleet scale")
    """
    hosts = provider.list_hosts(spec) if hosts is None else hosts
    verdict = check_identity(spec, provider_account(provider), found_identity(spec.fleet.name, hosts),
                             record_path_for(spec), command)
    if not disruptive_ok:
        refuse_disruptive(verdict.disruptive, command)
    return hosts, verdict


def provider_account(provider) -> str:
    """The provider account the fleet lives in, as a label ("local", "scaleway project <uuid>")."""
    account = getattr(provider, "account", None)
    if callable(account):
        account = account()
    if not isinstance(account, str) or not account:
        raise EnsembleError(f"provider {provider.name}: cannot say which account it works in")
    return account
