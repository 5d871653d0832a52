"""Fleet life cycle over the Provider interface: list, scale, destroy, inventory, janitor, smoke.

Plain functions the CLI calls and tests call directly; they work for every provider (local and
scaleway) because they only use `list_hosts`, `ensure_hosts` and `destroy` (plus `destroy_all`,
`janitor` or `cleanup_stale` where a provider has them).

Example::

    result = scale_fleet(spec, 5)                 # creates shards 3..5 (next free numbers)
    scale_fleet(spec, 2, force=True)              # removes 5, 4, 3 (highest numbers first)
    destroy_fleet(spec, yes=True)                 # every host, IP, volume, the security group
"""

from __future__ import annotations

import re
import secrets as _random
import ssl
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from ensemble.errors import EnsembleError, UsageError
from ensemble.inventory import inventory_of, pyinfra_groups  # noqa: F401 (re-exported)
from ensemble.providers.base import Host, Provider
from ensemble.spec import FleetSpec

Progress = Callable[[str], None] | None
# drain_and_wait(spec, hosts, timeout): stop sending rooms to these shards and return once they are
# empty (raise EnsembleError on timeout). Plugged in by the front door (draining); None = not available.
DrainHook = Callable[[FleetSpec, list[Host], int], None]
_drain_hook: DrainHook | None = None


def set_drain_hook(hook: DrainHook | None) -> None:
    """Register how shards are drained before scale-down removes them (the front door does this)."""
    global _drain_hook
    _drain_hook = hook


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
    hosts = sorted(provider.list_hosts(spec), key=lambda h: (h.role != "frontdoor", h.shard or 0, h.name))
    return [host_row(h) for h in hosts]


def format_table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    """A plain aligned text table.

    Example::

        format_table([{"name": "a", "role": "shard"}], ("name", "role"))
    """
    cells = [list(columns)] + [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    return "\n".join("  ".join(v.ljust(widths[i]) for i, v in enumerate(row)).rstrip() for row in cells)


# ---- scale ----

@dataclass
class ScaleResult:
    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    hosts: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"created": self.created, "removed": self.removed, "hosts": self.hosts}


def shards_to_remove(hosts: list[Host], count: int) -> list[Host]:
    """Shards numbered above count, highest first (they are the last to have been added).

    Example::

        [h.shard for h in shards_to_remove(hosts, 2)]   # [5, 4, 3]
    """
    extra = [h for h in hosts if h.role == "shard" and (h.shard or 0) > count]
    return sorted(extra, key=lambda h: -(h.shard or 0))


def scale_fleet(spec: FleetSpec, count: int, *, force: bool = False, timeout: int = 3600,
                provider: Provider | None = None, progress: Progress = None,
                drain_and_wait: DrainHook | None = None) -> ScaleResult:
    """Grow or shrink to `count` shards. Growing creates only the missing numbers; shrinking removes
    the highest numbers, after draining them (drain hook) or at once with force."""
    if count < 1:
        raise UsageError(f"COUNT: must be >= 1, got {count} (use `ensemble fleet destroy` to remove everything)")
    provider = provider or provider_for(spec)
    before = provider.list_hosts(spec)
    doomed = shards_to_remove(before, count)
    result = ScaleResult()
    if doomed:
        names = ", ".join(h.name for h in doomed)
        drain = drain_and_wait or _drain_hook
        if not force and drain is None:
            raise UsageError(f"--force: removing {names} would cut their live meetings and draining is not "
                             "available yet; pass --force to remove them now")
        if not force and drain is not None:
            _say(progress, f"draining {names} (up to {timeout}s)")
            drain(spec, doomed, timeout)
        _say(progress, f"removing {names}")
        provider.destroy(spec, doomed, progress=progress)
        result.removed = [h.name for h in doomed]
    names_before = {h.name for h in before}
    target = spec.with_shards(count)
    hosts = provider.ensure_hosts(target, progress=progress)
    result.created = sorted(h.name for h in hosts if h.name not in names_before)
    result.hosts = list_fleet(target, provider)
    return result


# ---- destroy ----

def destroy_fleet(spec: FleetSpec, *, yes: bool = False, confirm: Callable[[str], bool] | None = None,
                  provider: Provider | None = None, progress: Progress = None) -> list[str]:
    """Destroy every host of the fleet (and what it owns); asks `confirm` unless yes. Returns names."""
    provider = provider or provider_for(spec)
    hosts = provider.list_hosts(spec)
    names = [h.name for h in hosts]
    if not yes:
        question = (f"Destroy fleet {spec.fleet.name} ({provider.name}): {len(hosts)} host(s) "
                    f"{', '.join(names) or '(none)'} with their addresses and volumes?")
        if confirm is None or not confirm(question):
            raise EnsembleError("not confirmed; nothing destroyed (pass --yes to skip the question)")
    destroy_all = getattr(provider, "destroy_all", None)
    if destroy_all:
        destroy_all(spec, progress=progress)
    else:
        provider.destroy(spec, hosts, progress=progress)
    return names


# ---- janitor ----

_DURATION = re.compile(r"^(\d+)([smhd])$")


def parse_duration(text: str, key: str = "--older-than") -> int:
    """Seconds in "90s", "30m", "2h", "7d"; UsageError naming key otherwise.

    Example::

        parse_duration("2h")    # 7200
    """
    match = _DURATION.match(text.strip())
    if not match:
        raise UsageError(f"{key}: not a duration like 90s, 30m, 2h or 7d: {text!r}")
    return int(match.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def janitor(spec: FleetSpec, older_than: str = "2h", tags: tuple[str, ...] = (), *, dry_run: bool = False,
            provider: Provider | None = None, progress: Progress = None) -> list[str]:
    """Delete leaked throwaway (smoke) resources older than older_than, and nothing else.

    Scaleway: servers, IPs, volumes and security groups tagged ensemble-smoke (and every --tag).
    Local: hosts and networks that crashed or interrupted runs left behind.
    """
    seconds = parse_duration(older_than)
    for tag in tags:
        if not tag or "," in tag:
            raise UsageError(f"--tag: not a single tag: {tag!r}")
    provider = provider or provider_for(spec)
    if hasattr(provider, "janitor"):
        return provider.janitor(seconds, list(tags), progress=progress, dry_run=dry_run)
    if hasattr(provider, "cleanup_stale"):
        if dry_run:  # the local provider decides what is stale as it goes (dead creator, no container)
            return ["local hosts and networks left by dead runs, if any"]
        return provider.cleanup_stale(progress=progress)
    return []


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
