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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ensemble.contexts import fleet_contexts
from ensemble.errors import EnsembleError
from ensemble.inventory import targets_for
from ensemble.keyring import jitsi_keyring
from ensemble.paths import SECRETS_FILE
from ensemble.providers.base import Host, Provider
from ensemble.secrets import Secrets, merge_secrets
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

def fleet_size(spec: FleetSpec, hosts: list[Host]) -> int:
    """How many shards the fleet has: the spec's count, or the highest shard number that exists
    (shards added by `ensemble fleet scale`), whichever is larger.

    Example::

        fleet_size(spec_with_2, hosts_1_to_3)     # 3
    """
    return max([spec.fleet.shards, *(h.shard or 0 for h in hosts if h.role == "shard")])


def size_note(spec: FleetSpec, hosts: list[Host]) -> str | None:
    """One line when the hosts and the spec disagree on the number of shards (None when they agree)."""
    size = fleet_size(spec, hosts)
    if size == spec.fleet.shards:
        return None
    return (f"the fleet has {size} shards, the spec says {spec.fleet.shards}: deploy keeps all {size} "
            f"(`ensemble fleet scale {spec.fleet.shards}` drains and removes the extra ones)")


def read_secrets(spec: FleetSpec, hosts: list[Host]) -> Secrets:
    """Read every host's kept secrets over SSH and complete them (nothing is written here).

    An unreachable host raises: generating new secrets for a host that has some would lock it out.
    """
    from ensemble.runner import run_command

    remote = run_command(targets_for(hosts), f"cat {SECRETS_FILE} 2>/dev/null || true", progress=lambda _line: None)
    unreachable = sorted(name for name, text in remote.items() if text is None)
    if unreachable:
        raise EnsembleError(f"cannot read the kept secrets of {', '.join(unreachable)} over SSH "
                            "(host down or unreachable); nothing deployed")
    store, _ = merge_secrets(spec, remote, hosts)
    return store


# ---- actions ----

def wanted_names(spec: FleetSpec) -> list[str]:
    return [*spec.shard_names(), spec.fleet.domain]


def deploy_fleet(spec: FleetSpec, *, provider: Provider | None = None, dry: bool = False, progress=print,
                 hosts: list[Host] | None = None, only: list[str] | None = None) -> FleetResult:
    """Create missing hosts (not when dry), then deploy (or dry-run) the hosts in parallel.

    Every host is rendered with the whole fleet's facts; `only` limits which hosts are deployed
    (e.g. one shard during a rolling upgrade). `hosts` skips the provider's create step (they exist).

    Example::

        deploy_fleet(spec).ok
        deploy_fleet(spec, only=["demo-2.meet.example.org"])      # shard 2 alone, same files as a full deploy
    """
    from ensemble.components.shard import fleet_host
    from ensemble.providers import get_provider
    from ensemble.runner import run_deploy

    started = time.monotonic()
    provider = provider or get_provider(spec)
    result = FleetResult(dry=dry)
    existing = list(provider.list_hosts(spec)) if hosts is None else list(hosts)
    spec_as_given, spec = spec, spec.with_shards(fleet_size(spec, existing))
    note = size_note(spec_as_given, existing)
    if hosts is None:
        names = {h.name for h in existing}
        result.created = [n for n in wanted_names(spec) if n not in names]
        if dry or not result.created:
            hosts = existing
        else:
            progress(f"creating {len(result.created)} host(s): {', '.join(result.created)}")
            hosts = provider.ensure_hosts(spec, progress=progress)
    if note:
        result.notes.append(note)
    if only is not None:
        unknown = sorted(set(only) - {h.name for h in hosts})
        if unknown:
            raise EnsembleError(f"no such host in fleet {spec.fleet.name!r}: {', '.join(unknown)}")
    if hosts:
        env = provider.deploy_environment(spec)
        keyring = jitsi_keyring(env.spec)
        store = read_secrets(env.spec, hosts)
        contexts = fleet_contexts(env, store, hosts, keyring=keyring, only=only)
        targets = targets_for([h for h in hosts if h.name in contexts])
        result.results = run_deploy(targets, fleet_host, {"contexts": contexts}, dry=dry, progress=progress)
    result.seconds = time.monotonic() - started
    return result


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
