"""Deploy orchestration: spec -> provider.ensure_hosts -> secrets read back -> contexts -> runner -> summary.

`deploy_fleet` creates the hosts that are missing, reads each host's kept secrets over SSH
(/etc/ensemble/secrets.json), generates only what is missing (the fleet-wide occupancy token
lives on the front door and is copied to shards; a new shard gets its own), builds every host's
context with the WHOLE fleet's facts, then deploys the hosts asked for (default: all) in parallel.
A failing host is reported; the others stay deployed. `plan_fleet` does the same reading and a
pyinfra dry run, creating and changing nothing.

The fleet's size is one number: the spec's `fleet.shards`, or more when `ensemble fleet scale`
added shards (`fleet_size`); deploy and plan never remove a shard (scale does, with a drain).

Example::

    result = deploy_fleet(load_spec("examples/ensemble.toml"))
    print(summary_table(result)); sys.exit(0 if result.ok else 1)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ensemble.contexts import fleet_contexts
from ensemble.errors import EnsembleError, UsageError
from ensemble.inventory import targets_for
from ensemble.kept import (
    KEPT_COMMAND,
    KeptState,
    fleet_size,
    parse_kept,
    refuse_shards_beyond,
    require_all_read,
    size_notes,
)
from ensemble.keyring import jitsi_keyring
from ensemble.providers.base import Host, Provider
from ensemble.secrets import FLEET_KEY, merge_secrets
from ensemble.spec import FleetSpec


@dataclass
class FleetResult:
    """The outcome of a deploy or plan: per-host results (runner.HostResult) and what was created.

    Example::

        result.ok, result.results["demo-1.meet.test"].changed
    """

    created: list[str] = field(default_factory=list)  # hosts made by this run (plan: would be made)
    notes: list[str] = field(default_factory=list)  # what the user should know (size drift...)
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    dry: bool = False

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.results.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "dry": self.dry, "created": self.created, "notes": self.notes,
                "seconds": round(self.seconds, 2),
                "changed": self.changed, "hosts": {n: r.as_dict() for n, r in sorted(self.results.items())}}


# ---- facts ----

# named, not imported: the worker process imports the components (and pyinfra), this process does not
FLEET_HOST_DEPLOY = "ensemble.components.shard:fleet_host"
def read_kept(hosts: list[Host]) -> KeptState:
    """Read every host's kept secrets (and the front door's size record) over SSH, in parallel, from
    this process (ensemble.ssh: no pyinfra worker to start); unreachable hosts are listed in
    `unreachable` (see kept.require_all_read).
    """
    from ensemble.ssh import fan_out

    def read(conn) -> str:
        code, out, err = conn.run(KEPT_COMMAND, timeout=60)
        if code != 0:
            raise EnsembleError(f"{conn.host.name}: reading what it keeps failed: {err.strip()[-200:]}")
        return out

    results = fan_out(hosts, read)
    return parse_kept({name: r.value if r.ok else None for name, r in results.items()}, hosts)


# ---- actions ----

def wanted_names(spec: FleetSpec) -> list[str]:
    return [*spec.shard_names(), spec.fleet.domain]


def deploy_fleet(spec: FleetSpec, *, provider: Provider | None = None, dry: bool = False, progress=print,
                 hosts: list[Host] | None = None, only: list[str] | None = None,
                 size: int | None = None, upgrade_packages: bool = False, allow_disruptive: bool = False,
                 wait_lock: float = 0) -> FleetResult:
    """Create missing hosts (not when dry), then deploy (or dry-run) the hosts in parallel.

    Every host is rendered with the whole fleet's facts; `only` limits which hosts are deployed
    (e.g. one shard during a rolling upgrade). `hosts`: the fleet's hosts when the caller just
    listed them. `size`: the shard count `fleet scale` decided (recorded on the front door);
    default: `fleet_size`. `upgrade_packages`: take the newest packages (`ensemble upgrade`, on a
    drained shard); a plain deploy never upgrades a package under live meetings.

    Before any host is touched: the fleet lock is taken (not for a dry run; `wait_lock` seconds to
    wait for it, ensemble.fleetlock), the fleet found under the spec's name must be this spec's
    (ensemble.identity: else UsageError, nothing changed), and disruptive changes (domain, TLS mode,
    shard naming, OS profile) need `allow_disruptive` (a dry run lists them in the notes).

    Example::

        deploy_fleet(spec).ok
        deploy_fleet(spec, only=["demo-2.meet.example.org"])      # shard 2 alone, same files as a full deploy
    """
    from ensemble.fleetlock import fleet_lock
    from ensemble.identity import provider_account
    from ensemble.providers import get_provider

    provider = provider or get_provider(spec)
    if dry:
        return _deploy_fleet(spec, provider, True, progress, hosts, only, size, upgrade_packages, allow_disruptive)
    with fleet_lock(spec.fleet.name, provider_account(provider), wait=wait_lock, progress=progress):
        return _deploy_fleet(spec, provider, False, progress, hosts, only, size, upgrade_packages, allow_disruptive)


def _deploy_fleet(spec: FleetSpec, provider: Provider, dry: bool, progress, hosts: list[Host] | None,
                  only: list[str] | None, size: int | None, upgrade_packages: bool,
                  allow_disruptive: bool) -> FleetResult:
    from ensemble.identity import (
        check_identity,
        disruptive_changes,
        found_identity,
        provider_account,
        read_record,
        record_path_for,
        refuse_disruptive,
        remember,
        stamp_labels,
    )
    from ensemble.runner import run_deploy

    started = time.monotonic()
    result = FleetResult(dry=dry)
    existing = list(provider.list_hosts(spec)) if hosts is None else list(hosts)
    found = found_identity(spec.fleet.name, existing)
    verdict = check_identity(spec, provider_account(provider), found, record_path_for(spec),
                             "plan" if dry else "deploy", create=not dry)
    identity = verdict.identity
    # an id made just now (no record beside this spec, no label on the hosts) yields to the one the
    # hosts keep: the same name and domain adopt the fleet (a record elsewhere, or one never written)
    minted = not (found and found.fleet_id) and read_record(record_path_for(spec)) is None
    kept = read_kept(existing)  # a stopped host is read again once ensure_hosts has started it
    kept_id = _kept_fleet_id(kept)
    if kept_id and minted:
        identity = replace(identity, fleet_id=kept_id)
    if kept_id and identity.fleet_id and kept_id != identity.fleet_id:
        raise UsageError(f"fleet.name: the hosts of {found.describe() if found else spec.fleet.name} keep fleet id "
                         f"{kept_id} in /etc/ensemble, not {identity.fleet_id}: another fleet; nothing changed")
    disruptive = disruptive_changes(spec, found, kept.deployed) if found else []
    if dry:
        result.notes += [f"DISRUPTIVE: {change}; deploy needs --allow-disruptive" for change in disruptive]
    else:
        refuse_disruptive(disruptive, "deploy", allow_disruptive)
    size = size if size is not None else fleet_size(spec, kept.recorded)
    refuse_shards_beyond(spec, size, existing)
    target = spec.with_shards(size)
    result.notes += size_notes(spec, size)
    names = {h.name for h in existing}
    result.created = [n for n in wanted_names(target) if n not in names]
    if only is not None:
        unknown = sorted(set(only) - names)
        if unknown:
            raise EnsembleError(f"no such host in fleet {spec.fleet.name!r}: {', '.join(unknown)}")
    elif (result.created or kept.unreachable) and not dry:
        if result.created:
            progress(f"creating {len(result.created)} host(s): {', '.join(result.created)}")
        # also starts stopped hosts
        existing = provider.ensure_hosts(target, progress=progress, labels=stamp_labels(identity, spec))
    if kept.unreachable and not dry and only is None:
        # hosts that were stopped are running now; the others still unreachable stop the deploy below
        again = read_kept([h for h in existing if h.name in kept.unreachable])
        kept = KeptState(secrets={**kept.secrets, **again.secrets}, recorded=kept.recorded,
                         deployed=kept.deployed, unreachable=again.unreachable)
    require_all_read(kept)
    fleet = list(existing)
    if fleet:
        env = provider.deploy_environment(target)
        keyring = jitsi_keyring(env.spec)
        store, _ = merge_secrets(env.spec, {h.name: kept.secrets.get(h.name, "") for h in fleet}, fleet)
        if not dry:
            # kept only once every host's secrets read well: a refused run writes no record that a later
            # run would hold against the hosts (the hosts made meanwhile carry the id in their labels)
            remember(spec, identity)
        if identity.fleet_id:
            store[FLEET_KEY]["fleet_id"] = identity.fleet_id  # every host keeps it beside its secrets
        contexts = fleet_contexts(env, store, fleet, keyring=keyring, only=only, spec_shards=spec.fleet.shards,
                                  upgrade_packages=upgrade_packages)
        targets = targets_for([h for h in fleet if h.name in contexts])
        result.results = run_deploy(targets, FLEET_HOST_DEPLOY, {"contexts": contexts}, dry=dry, progress=progress)
    result.seconds = time.monotonic() - started
    return result


def _kept_fleet_id(kept: KeptState) -> str:
    """The fleet id the hosts keep (the fleet-id record, else the fleet entry of a secrets file), or ""."""
    if kept.deployed and kept.deployed.get("fleet_id"):
        return kept.deployed["fleet_id"]
    for text in kept.secrets.values():
        try:
            data = json.loads(text) if text else {}
        except ValueError:
            continue
        fleet = data.get(FLEET_KEY) if isinstance(data, dict) else None
        if isinstance(fleet, dict) and isinstance(fleet.get("fleet_id"), str) and fleet["fleet_id"]:
            return fleet["fleet_id"]
    return ""


def summary_table(result: FleetResult) -> str:
    """The per-host summary printed at the end of deploy/plan.

    Example::

        print(summary_table(result))
    """
    verb = "would change" if result.dry else "changed"
    rows = [("host", verb, "unchanged", "failed", "commands", "status")]
    for name, r in sorted(result.results.items()):
        status = "ok" if r.ok else f"FAILED: {r.error or 'an operation failed'}"
        rows.append((name, str(r.changed), str(r.unchanged), str(r.failed), str(r.commands), status))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 5 else cell for i, cell in enumerate(row)) for row in rows]
    if result.created:
        lines.insert(0, f"{'hosts to create' if result.dry else 'hosts created'}: {', '.join(result.created)}")
    for note in result.notes:
        lines.insert(0, f"note: {note}")
    lines.append(f"{len(result.results)} host(s), {result.changed} change(s), {result.seconds:.1f}s, "
                 f"{'all ok' if result.ok else 'FAILURES'}")
    return "\n".join(lines)


def write_json(path: Path, result: FleetResult) -> None:
    path.write_text(json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
