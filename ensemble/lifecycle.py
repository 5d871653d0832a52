"""Fleet life cycle, end to end: list, scale, drain, upgrade, destroy, janitor, smoke.

Plain functions the CLI calls and tests call directly; they work for every provider (local and
scaleway) through the Provider protocol (providers/base.py), and a step is done only when the
fleet is in service again as the front door itself reads it (frontdoor/control.py).

Example::

    result = scale_fleet(spec, 5)                 # creates shards 3..5, deploys, waits for the front door
    scale_fleet(spec, 2)                          # drains 5, 4, 3, waits until empty, removes them
    upgrade_fleet(spec, 3600, progress=print)     # one shard at a time, back in service before the next
    destroy_fleet(spec, yes=True)                 # every host, IP, volume, the security group
"""

from __future__ import annotations

import re
import secrets as _random
import ssl
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ensemble.errors import EnsembleError, UsageError
from ensemble.inventory import inventory_of, pyinfra_groups  # noqa: F401 (re-exported)
from ensemble.providers.base import Host, Provider
from ensemble.spec import MAX_SHARDS, FleetSpec

Progress = Callable[[str], None] | None
# drain_and_wait(spec, hosts, timeout): stop sending rooms to these shards and return once they are
# empty (raise EnsembleError on timeout). Default: ensemble.frontdoor.drain.drain_and_wait.
DrainHook = Callable[[FleetSpec, list[Host], int], None]


def provider_for(spec: FleetSpec, throwaway: bool = False) -> Provider:
    """The spec's provider; `throwaway` marks everything it creates as smoke (scaleway tags)."""
    if spec.provider.kind == "scaleway" and throwaway:
        from ensemble.providers.scaleway import ScalewayProvider

        return ScalewayProvider(spec, throwaway=True)
    from ensemble.providers import get_provider

    return get_provider(spec)


def _say(progress: Progress, line: str) -> None:
    if progress:
        progress(line)


def guard_identity(spec: FleetSpec, provider: Provider, command: str, hosts: list[Host] | None = None,
                   disruptive_ok: bool = False) -> tuple[list[Host], Any]:
    """The fleet's hosts once it is this spec's fleet: ensemble.identity.guard (UsageError otherwise).

    Example::

        hosts, verdict = guard_identity(spec, provider, "fleet scale")
    """
    from ensemble.identity import guard

    return guard(spec, provider, command, hosts, disruptive_ok=disruptive_ok)


def locked(spec: FleetSpec, provider: Provider, wait_lock: float = 0, progress: Progress = None):
    """The fleet lock (ensemble.fleetlock) for a command that changes the fleet.

    Example::

        with locked(spec, provider, wait_lock=60):
            ...
    """
    from ensemble.fleetlock import fleet_lock
    from ensemble.identity import provider_account

    return fleet_lock(spec.fleet.name, provider_account(provider), wait=wait_lock, progress=progress)


# ---- list / inventory ----

def host_row(host: Host) -> dict[str, Any]:
    """One host as a plain dict (fleet list --json).

    Example::

        host_row(host)["address"]    # "51.15.0.10"
    """
    return {"name": host.name, "role": host.role, "shard": host.shard, "address": host.address,
            "ipv6": host.ipv6, "id": host.provider_id, "state": host.labels.get("state", ""),
            "created": host.labels.get("ensemble-created", "")}


def list_fleet(spec: FleetSpec, provider: Provider | None = None) -> list[dict[str, Any]]:
    """The fleet's hosts as the provider reports them, front door first then shards by number."""
    provider = provider or provider_for(spec)
    listed, _ = guard_identity(spec, provider, "fleet list", disruptive_ok=True)
    hosts = sorted(listed, key=lambda h: (h.role != "frontdoor", h.shard or 0, h.name))
    return [host_row(h) for h in hosts]


def hosts_file(spec: FleetSpec, rows: list[dict[str, Any]]) -> str:
    """/etc/hosts lines naming every host of the fleet (a local fleet's names resolve nowhere else).

    The front door's name is the fleet's domain; a shard with TURN on is also turn-<shard>.

    Example::

        hosts_file(spec, list_fleet(spec))   # "10.151.42.10 meet.ensemble.test\n10.151.42.11 demo-1... turn-demo-1..."
    """
    from ensemble.turn import turn_tls_name

    lines = []
    for row in rows:
        if not row.get("address"):
            continue
        names = [row["name"]]
        if row.get("role") == "shard" and spec.turn.enabled:
            names.append(turn_tls_name(row["name"]))
        lines.append(" ".join([row["address"], *names]))
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A plain aligned text table.

    Example::

        format_table([{"name": "a", "role": "shard"}], ("name", "role"))
    """
    cells = [list(columns)] + [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip() for row in cells)


# ---- scale ----

FrontdoorView = Callable[[Host], dict]  # the front door's last refresh state (frontdoor.control.read_state)
ShardReader = Callable[[Host], Any]  # a shard's census + stats over SSH (frontdoor.drain.ssh_reader)
ReadyWait = Callable[[Host, list[str]], dict[str, tuple[str, str]]]  # shards the front door does not read ready


@dataclass
class ScaleResult:
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    hosts: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "removed": self.removed, "hosts": self.hosts, "notes": self.notes}


def shards_to_remove(hosts: list[Host], count: int) -> list[Host]:
    """Shards numbered above count, highest first (they are the last to have been added).

    Example::

        [h.shard for h in shards_to_remove(hosts, 2)]   # [5, 4, 3]
    """
    extra = [h for h in hosts if h.role == "shard" and (h.shard or 0) > count]
    return sorted(extra, key=lambda h: -(h.shard or 0))


def _frontdoor(hosts: list[Host]) -> Host | None:
    return next((h for h in hosts if h.role == "frontdoor"), None)


def removable_at_once(doomed: list[Host], door: Host | None, view: FrontdoorView, read_shard: ShardReader,
                      progress: Progress) -> list[Host]:
    """The shards safe to remove without a drain: the front door never read them as healthy (so never
    sent a room there) and the shard itself holds no meeting (its census is empty, or it cannot be
    reached at all: it never got a room). Without the front door's view (no front door, its state
    missing or unreadable) nothing is assumed: every shard is drained.
    """
    from ensemble.frontdoor.control import ever_read, knows_shards
    from ensemble.frontdoor.drain import is_empty

    state: dict = {}
    if door is not None:
        try:
            state = view(door)
        except EnsembleError as exc:
            _say(progress, f"cannot read the front door's view ({exc}): every shard to remove is drained first")
    if not knows_shards(state):
        return []
    free = []
    for host in doomed:
        if ever_read(state, host.name):
            continue
        reading = read_shard(host)
        if not reading.ok or is_empty(reading):
            free.append(host)
    return free


def _default_view(door: Host) -> dict:
    from ensemble.frontdoor.control import read_state

    return read_state(door)


READY_WAIT_SECONDS = 180  # jicofo and the bridge restarted on a real shard can take a minute to be healthy


def _default_ready_wait(spec: FleetSpec, progress: Progress) -> ReadyWait:
    from ensemble.frontdoor.control import wait_until_ready

    # each attempt runs one refresh; a shard that failed since it was ready needs ready_after good reads
    interval = 3.0
    attempts = max(spec.frontdoor.ready_after + 3, int(READY_WAIT_SECONDS / interval))
    return lambda door, names: wait_until_ready(door, names, attempts=attempts, interval=interval, progress=progress)


def _default_reader(host: Host):
    from ensemble.frontdoor.drain import ssh_reader

    return ssh_reader(host)


def _deploy_or_fail(spec: FleetSpec, provider: Provider, hosts: list[Host], count: int, what: str,
                    progress: Progress, only: list[str] | None = None) -> None:
    from ensemble.fleet import deploy_fleet

    result = deploy_fleet(spec, provider=provider, hosts=hosts, size=count, only=only,
                          progress=progress or (lambda _l: None))
    failed = {n: r.error or "an operation failed" for n, r in result.results.items() if not r.ok}
    if failed:
        detail = "; ".join(f"{n}: {why}" for n, why in sorted(failed.items()))
        raise EnsembleError(f"{what}: the deploy failed on {detail} (re-run the same command to converge)")


def scale_fleet(spec: FleetSpec, count: int, *, force: bool = False, timeout: int = 3600,
                provider: Provider | None = None, progress: Progress = None,
                drain_and_wait: DrainHook | None = None, deploy: bool = True,
                frontdoor_view: FrontdoorView | None = None, ready_wait: ReadyWait | None = None,
                read_shard: ShardReader | None = None, wait_lock: float = 0) -> ScaleResult:
    """Grow or shrink the fleet to `count` shards, all the way: the fleet is in service at the end.

    The count is recorded on the front door first (kept.fleet_size: later `deploy` and `plan` keep
    it). Up: create the missing shards (next numbers), deploy them and the front door (new shards'
    secrets generated like the first ones; running shards are not touched), then wait until the front
    door reads every shard as ready. Down: shards the front door never routed a room to, and that
    hold none, go at once; the others are drained and waited for until empty (an unreachable one is
    reported and waited for, with the reason; --force cuts instead); then destroyed, and the front
    door is redeployed without them. Re-running the same command after an interruption converges.

    Example::

        scale_fleet(spec, 3, progress=print).created      # ["demo-3.meet.example.org"]
    """
    if not 1 <= count <= MAX_SHARDS:
        raise UsageError(f"COUNT: must be between 1 and {MAX_SHARDS}, got {count} "
                         "(use `ensemble fleet destroy` to remove everything)")
    provider = provider or provider_for(spec)
    with locked(spec, provider, wait_lock, progress):
        return _scale_fleet(spec, count, force, timeout, provider, progress, drain_and_wait, deploy,
                            frontdoor_view, ready_wait, read_shard)


def _scale_fleet(spec: FleetSpec, count: int, force: bool, timeout: int, provider: Provider, progress: Progress,
                 drain_and_wait: DrainHook | None, deploy: bool, frontdoor_view: FrontdoorView | None,
                 ready_wait: ReadyWait | None, read_shard: ShardReader | None) -> ScaleResult:
    from ensemble.identity import remember, stamp_labels

    before, verdict = guard_identity(spec, provider, "fleet scale")
    door = _frontdoor(before)
    if door is not None:
        from ensemble.frontdoor.control import write_size_record

        write_size_record(door, count, spec.fleet.shards)
    doomed = shards_to_remove(before, count)
    result = ScaleResult()
    if doomed:
        if force:
            free = list(doomed)
        else:
            free = removable_at_once(doomed, door, frontdoor_view or _default_view, read_shard or _default_reader,
                                     progress)
            if free:
                _say(progress, f"{', '.join(h.name for h in free)}: the front door never routed a room there and "
                               "it holds none; removing at once")
        busy = [h for h in doomed if h not in free]
        if busy:
            names = ", ".join(h.name for h in busy)
            _say(progress, f"draining {names} (up to {timeout}s; live meetings finish, no new room goes there)")
            (drain_and_wait or _default_drain(progress))(spec, busy, timeout)
        _say(progress, f"removing {', '.join(h.name for h in doomed)}")
        provider.destroy(spec, doomed, progress=progress)
        result.removed = [h.name for h in doomed]
    names_before = {h.name for h in before}
    target = spec.with_shards(count)
    identity = verdict.identity
    if not identity.fleet_id:  # a fleet made before fleet ids (or none yet): it gets one now
        from ensemble.identity import new_fleet_id

        identity = replace(identity, fleet_id=new_fleet_id())
    remember(spec, identity)
    hosts = provider.ensure_hosts(target, progress=progress, labels=stamp_labels(identity, spec))
    result.created = sorted(h.name for h in hosts if h.name not in names_before)
    if deploy:
        door = _frontdoor(hosts)
        shards = [h for h in hosts if h.role == "shard"]
        # new shards (and any left undeployed by an interrupted run: above the count the front door
        # had) and the front door; running shards are not redeployed under their meetings
        routed = _shards_in_maps(door, frontdoor_view or _default_view) if door is not None else set()
        fresh = [h.name for h in shards if h.name in result.created or h.name not in routed]
        only = [*fresh, *([door.name] if door is not None else [])]
        _say(progress, f"deploying {', '.join(only)} (fleet of {count} shard(s))")
        _deploy_or_fail(spec, provider, hosts, count, "scale", progress, only=only)
        if door is not None:
            wait = ready_wait or _default_ready_wait(spec, progress)
            missing = wait(door, sorted(h.name for h in shards))  # also refreshes the maps
            if missing:
                detail = "; ".join(f"{n}: {s} ({r})" for n, (s, r) in sorted(missing.items()))
                raise EnsembleError(f"scale: the front door does not read every shard as ready: {detail}")
    result.hosts = list_fleet(target, provider)
    return result


def _shards_in_maps(door: Host, view: FrontdoorView) -> set[str]:
    """The shards the front door's last refresh knew (an unreadable view: none, so all get deployed)."""
    from ensemble.frontdoor.control import shard_states

    try:
        return set(shard_states(view(door)))
    except EnsembleError:
        return set()


def _default_drain(progress: Progress) -> DrainHook:
    from ensemble.frontdoor.drain import drain_and_wait

    return lambda spec, hosts, limit: drain_and_wait(spec, hosts, limit, progress)


# ---- drain ----

def drain_shard(spec: FleetSpec, shard: str, drain: bool, hosts: list[Host] | None = None,
                provider: Provider | None = None, wait_lock: float = 0) -> Host:
    """Set or clear one shard's drain flag (the front door's next refresh applies it); returns the shard.

    Example::

        drain_shard(spec, "2", True).name     # "demo-2.meet.example.org"
    """
    from ensemble.frontdoor.drain import find_shard, set_drain

    provider = provider or provider_for(spec)
    with locked(spec, provider, wait_lock):
        listed, _ = guard_identity(spec, provider, "fleet drain" if drain else "fleet undrain", hosts)
        host = find_shard(listed, shard)
        set_drain(host, drain)
    return host


# ---- rolling upgrade ----

def upgrade_fleet(spec: FleetSpec, timeout: int, *, provider: Provider | None = None, progress: Progress = None,
                  ready_wait: ReadyWait | None = None, wait_lock: float = 0) -> list[dict]:
    """Rolling upgrade of every shard: drain, wait empty, redeploy (rendered with the whole fleet),
    check, undrain, and back in service only when the front door itself reads the shard as ready.

    Shards the front door did not read as ready before are named first; a shard that is not ready
    again after its upgrade stops the upgrade with an error naming it (the others are untouched).

    Example::

        upgrade_fleet(spec, 3600, progress=print)     # [{"shard": "demo-1...", "seconds": 31.5}, ...]
    """
    provider = provider or provider_for(spec)
    with locked(spec, provider, wait_lock, progress):
        return _upgrade_fleet(spec, timeout, provider, progress, ready_wait)


def _upgrade_fleet(spec: FleetSpec, timeout: int, provider: Provider, progress: Progress,
                   ready_wait: ReadyWait | None) -> list[dict]:
    from ensemble.fleet import deploy_fleet, read_kept
    from ensemble.frontdoor.control import refresh_now, shard_states
    from ensemble.frontdoor.drain import rolling_upgrade
    from ensemble.kept import fleet_size

    hosts, _ = guard_identity(spec, provider, "upgrade")
    shards = [h for h in hosts if h.role == "shard"]
    door = _frontdoor(hosts)
    if not shards or door is None:
        raise EnsembleError(f"upgrade: the fleet {spec.fleet.name!r} has no shard or no front door "
                            "(run `ensemble deploy`)")
    size = fleet_size(spec, read_kept(hosts).recorded)
    before = shard_states(refresh_now(door))
    not_ready = {n: v for n, v in before.items() if v[0] != "ready"}
    if not_ready:
        _say(progress, "before the upgrade the front door reads " + "; ".join(
            f"{n}: {s} ({r})" for n, (s, r) in sorted(not_ready.items())))
    wait = ready_wait or _default_ready_wait(spec, progress)

    def redeploy(host: Host) -> list[str]:
        result = deploy_fleet(spec, provider=provider, hosts=hosts, only=[host.name], size=size,
                              upgrade_packages=True, progress=progress or (lambda _line: None))
        return [f"{name}: {r.error or 'deploy failed'}" for name, r in result.results.items() if not r.ok]

    def may_drain(host: Host) -> list[str]:
        # never drain the last shard that takes new meetings (a one-shard fleet has no choice: said)
        states = shard_states(refresh_now(door))
        others = [n for n, (state, _) in states.items() if state == "ready" and n != host.name]
        if others or len(shards) == 1:
            if not others:
                _say(progress, f"{host.name} is the fleet's only shard: new meetings get 503 until it is back")
            return []
        return ["no other shard is ready to take new meetings (front door reads " + "; ".join(
            f"{n}: {s}" for n, (s, _) in sorted(states.items())) + ")"]

    def back_in_service(host: Host) -> list[str]:
        missing = wait(door, [host.name])
        return [f"the front door reads {n} as {s} ({r})" for n, (s, r) in sorted(missing.items())]

    return rolling_upgrade(spec, [h for h in shards if (h.shard or 0) <= size], timeout=timeout, redeploy=redeploy,
                           check=lambda host: check_shards(spec, [host]), back_in_service=back_in_service,
                           may_drain=may_drain,
                           progress=progress)


# ---- destroy ----

def destroy_fleet(spec: FleetSpec, *, yes: bool = False, confirm: Callable[[str], bool] | None = None,
                  provider: Provider | None = None, progress: Progress = None, wait_lock: float = 0) -> list[str]:
    """Destroy every host of the fleet (and what it owns); asks `confirm` unless yes. Returns names.

    Only this spec's fleet (ensemble.identity): another fleet under the same name is refused.
    """
    provider = provider or provider_for(spec)
    with locked(spec, provider, wait_lock, progress):
        return _destroy_fleet(spec, yes, confirm, provider, progress)


def _destroy_fleet(spec: FleetSpec, yes: bool, confirm: Callable[[str], bool] | None, provider: Provider,
                   progress: Progress) -> list[str]:
    from ensemble.identity import forget_record, record_path_for

    hosts, verdict = guard_identity(spec, provider, "fleet destroy", disruptive_ok=True)
    names = [h.name for h in hosts]
    if not yes:
        question = (f"Destroy fleet {spec.fleet.name} ({provider.name}): {len(hosts)} host(s) "
                    f"{', '.join(names) or '(none)'} with their addresses and volumes?")
        if confirm is None or not confirm(question):
            raise EnsembleError("not confirmed; nothing destroyed (pass --yes to skip the question)")
    provider.destroy_all(spec, progress=progress)
    if hosts:
        forget_record(record_path_for(spec), verdict.identity if verdict.identity.fleet_id else None)
    return names


# ---- janitor ----

_DURATION = re.compile(r"([0-9]{1,9})([smhd])")
MAX_DURATION = 3650 * 86400  # ten years: older than that means "everything", and datetime stays in range
_TAG = re.compile(r"[A-Za-z0-9][A-Za-z0-9=_.:/+@-]{0,127}")  # what Scaleway tags look like, no ',' or spaces


def parse_duration(text: str, key: str = "--older-than") -> int:
    """Seconds in "90s", "30m", "2h", "7d"; UsageError naming key otherwise.

    Example::

        parse_duration("2h")    # 7200
    """
    match = _DURATION.fullmatch(text)
    if not match:
        raise UsageError(f"{key}: not a duration like 90s, 30m, 2h or 7d: {text!r}")
    seconds = int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]
    if seconds > MAX_DURATION:
        raise UsageError(f"{key}: at most 3650d, got {text!r}")
    return seconds


def janitor(spec: FleetSpec, older_than: str = "2h", tags: tuple[str, ...] = (), *, dry_run: bool = False,
            provider: Provider | None = None, progress: Progress = None, confirmed: list[str] | None = None,
            asked_at: float | None = None) -> list[str]:
    """Delete leaked throwaway (smoke) resources older than older_than, and nothing else.

    Scaleway: servers, IPs, volumes and security groups tagged ensemble-smoke (and every --tag).
    Local: hosts and networks that crashed or interrupted runs left behind.
    `confirmed` is the list a user said yes to (a dry run's answer, made at `asked_at`, time.time()):
    the age limit stays the one of that moment, and if anything not on the list would now be deleted,
    nothing is and the error names it.

    Example::

        shown = janitor(spec, "2h", dry_run=True); asked = time.time()
        janitor(spec, "2h", confirmed=shown, asked_at=asked)   # deletes what was shown, no more
    """
    seconds = parse_duration(older_than)
    for tag in tags:
        if not _TAG.fullmatch(tag):
            raise UsageError(f"--tag: not a single tag (1-128 of A-Za-z0-9=_.:/+@-, no spaces or commas): {tag!r}")
    if asked_at is not None:  # the same cutoff as the question's, however long the answer took
        seconds += max(0.0, time.time() - asked_at)
    provider = provider or provider_for(spec)
    if confirmed is not None and not dry_run:
        unlisted = [line for line in provider.janitor(seconds, list(tags), dry_run=True) if line not in confirmed]
        if unlisted:
            raise EnsembleError(f"janitor: {len(unlisted)} resource(s) not in the list you confirmed would now be "
                                f"deleted ({', '.join(unlisted)}); nothing deleted: run janitor again")
    return provider.janitor(seconds, list(tags), progress=progress, dry_run=dry_run)


# ---- smoke ----

def throwaway_spec(spec: FleetSpec, suffix: str | None = None) -> FleetSpec:
    """A one-shard copy of the spec under a random fleet name; Let's Encrypt staging by default.

    Example::

        throwaway_spec(spec, "k3x9").fleet.name     # "demo-smoke-k3x9"
    """
    suffix = suffix or _random.token_hex(3)
    name = f"{spec.fleet.name[:31 - len(suffix) - 7]}-smoke-{suffix}"
    tls = replace(spec.tls, staging=True) if spec.tls.mode == "letsencrypt" else spec.tls
    return replace(spec, fleet=replace(spec.fleet, name=name, shards=1), tls=tls)


def check_shards(spec: FleetSpec, hosts: list[Host], timeout: float = 20) -> list[str]:
    """The end-user checks on each shard: the meeting page and config.js answer over HTTPS.

    Certificates are not verified: a smoke shard has a staging or self-signed certificate.
    Returns the failures (empty = pass).
    """
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    failures = []
    for host in (h for h in hosts if h.role == "shard"):
        for path, needle in (("/", "jitsi"), ("/config.js", host.name)):
            request = urllib.request.Request(f"https://{host.address}{path}", headers={"Host": host.name})
            try:
                with urllib.request.urlopen(request, timeout=timeout, context=context) as response:  # noqa: S310
                    body = response.read().decode("utf-8", errors="replace")
                if needle.lower() not in body.lower():
                    failures.append(f"{host.name}{path}: answered without {needle!r}")
            except OSError as exc:
                failures.append(f"{host.name}{path}: {exc}")
    return failures


def _deploy(spec: FleetSpec, provider: Provider, hosts: list[Host], progress: Progress) -> list[str]:
    from ensemble.fleet import deploy_fleet

    result = deploy_fleet(spec, provider=provider, hosts=hosts, progress=progress or (lambda _line: None))
    return [f"{name}: {r.error or 'deploy failed'}" for name, r in result.results.items() if not r.ok]


@dataclass
class SmokeResult:
    fleet: str
    hosts: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    kept: bool = False
    destroyed: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "fleet": self.fleet, "hosts": self.hosts, "failures": self.failures,
                "kept": self.kept, "destroyed": self.destroyed}


def smoke(spec: FleetSpec, *, keep: bool = False, progress: Progress = None, provider: Provider | None = None,
          deploy: Callable[[FleetSpec, Provider, list[Host], Progress], list[str]] = _deploy,
          checks: Callable[[FleetSpec, list[Host]], list[str]] = check_shards,
          suffix: str | None = None) -> SmokeResult:
    """Create one throwaway shard, deploy, check, and destroy it whatever happens (Ctrl-C too) unless keep."""
    test_spec = throwaway_spec(spec, suffix)
    provider = provider or provider_for(test_spec, throwaway=True)
    result = SmokeResult(fleet=test_spec.fleet.name)
    _say(progress, f"smoke fleet {result.fleet} on {provider.name}")
    try:
        hosts = provider.ensure_hosts(test_spec, progress=progress)
        result.hosts = [h.name for h in hosts]
        result.failures = deploy(test_spec, provider, hosts, progress)
        if not result.failures:
            result.failures = checks(test_spec, hosts)
    except EnsembleError as exc:
        result.failures.append(str(exc))
    finally:
        if keep:
            result.kept = True
            _say(progress, f"kept {result.fleet}; remove it with `ensemble janitor` or fleet destroy")
        else:
            _say(progress, f"destroying {result.fleet}")
            destroy_fleet(test_spec, yes=True, provider=provider, progress=progress)
            result.destroyed = True
    return result
