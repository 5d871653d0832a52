"""Drains: a shard's drain flag, waiting until shards are empty, and the rolling upgrade.

The drain flag lives on the shard (/var/lib/ensemble/state.json, ``{"drain": true}``), served to
the front door by the shard's private ``/_ensemble/state`` location: the next refresh stops
sending new rooms there while live rooms stay pinned. The flag is written over SSH (ensemble.ssh:
the Host's pinned known_hosts, strict). Emptiness is read over SSH too (a direct-tcpip channel to
the shard's loopback prosody census and JVB stats), so it works from the operator's machine,
which the shards' private locations do not allow.

Example::

    set_drain(host, True)                               # ensemble fleet drain demo-2...
    drain_and_wait(spec, [host], timeout=3600, progress=print)
    set_drain(host, False)
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

from ensemble import paths
from ensemble.errors import EnsembleError, UsageError
from ensemble.frontdoor.occupancy import reading_from
from ensemble.frontdoor.selection import ShardReading
from ensemble.providers.base import Host
from ensemble.spec import FleetSpec

STATE_FILE = paths.STATE_FILE
PROSODY_HTTP = ("127.0.0.1", paths.PROSODY_HTTP_PORT)
JVB_PRIVATE = ("127.0.0.1", paths.JVB_PRIVATE_PORT)

Progress = Callable[[str], None] | None
StateWriter = Callable[[Host, dict], None]
ShardReader = Callable[[Host], ShardReading]


# ---------------------------------------------------------------- facts

def state_document(drain: bool, now: float | None = None) -> dict:
    """The shard's state file content.

    Example::

        state_document(True, 0.0)    # {"drain": True, "changed_at": 0.0}
    """
    return {"drain": drain, "changed_at": time.time() if now is None else now}


def find_shard(hosts: list[Host], shard: str) -> Host:
    """The shard host named by its domain or its number; UsageError listing valid names otherwise.

    Example::

        find_shard(hosts, "2").name      # "demo-2.meet.example.org"
    """
    shards = [h for h in hosts if h.role == "shard"]
    for host in shards:
        if shard in (host.name, str(host.shard)):
            return host
    valid = ", ".join(h.name for h in shards) or "none (no shard exists)"
    raise UsageError(f"SHARD: no shard {shard!r}; valid: {valid}")


def is_empty(reading: ShardReading) -> bool:
    """Census and JVB stats both say nobody is there."""
    return reading.ok and reading.participants == 0 and all(r.participants == 0 for r in reading.rooms)


# ---------------------------------------------------------------- actions: SSH

def ssh_state_writer(host: Host, document: dict, path: str = STATE_FILE) -> None:
    """Write the shard's state file atomically over SSH (0644: nginx, which serves it, reads it).

    Example::

        ssh_state_writer(host, state_document(True))     # EnsembleError naming the host if SSH fails
    """
    from ensemble.ssh import Connection  # paramiko: not on the front door host, which never writes this

    with Connection(host) as conn:
        conn.write_file_atomically(path, json.dumps(document, sort_keys=True) + "\n", 0o644, timeout=30)


def ssh_reader(host: Host, prosody: tuple[str, int] = PROSODY_HTTP, jvb: tuple[str, int] = JVB_PRIVATE) -> ShardReading:
    """Census + JVB stats of a shard, read over SSH through direct-tcpip channels to its loopback services;
    ok=False with a readable reason on any failure (SSH refused, a service not listening, bad JSON).

    Example::

        ssh_reader(host).participants        # 12
    """
    from ensemble.ssh import Connection

    try:
        with Connection(host) as conn:
            status, census = conn.http_get(prosody[1], "/room-census", host.name, target_host=prosody[0])
            status2, stats = conn.http_get(jvb[1], "/colibri/stats", host.name, target_host=jvb[0])
    except EnsembleError as exc:
        return ShardReading(name=host.name, ok=False, error=str(exc))
    if status != 200 or status2 != 200:
        return ShardReading(name=host.name, ok=False, error=f"census HTTP {status}, stats HTTP {status2}")
    try:
        return reading_from(host.name, json.loads(census), json.loads(stats), True, {})
    except ValueError as exc:
        return ShardReading(name=host.name, ok=False, error=f"census or stats not JSON: {exc}")


# ---------------------------------------------------------------- actions: drain

def set_drain(host: Host, drain: bool, writer: StateWriter | None = None) -> None:
    """Set or clear a shard's drain flag (the front door's next refresh applies it).

    Example::

        set_drain(find_shard(hosts, "demo-2.meet.example.org"), True)
    """
    (writer or ssh_state_writer)(host, state_document(drain))


def drain_and_wait(spec: FleetSpec, hosts: list[Host], timeout: int, progress: Progress = None, *,
                   writer: StateWriter | None = None, reader: ShardReader | None = None, interval: float = 10.0,
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> None:
    """Drain these shards and return once census and JVB stats show 0 participants on all of them.

    Raises EnsembleError after `timeout` seconds naming the shards still in use (nothing is cut:
    the caller decides). An unreadable shard is not considered empty. This is lifecycle's DrainHook.

    Example::

        drain_and_wait(spec, [host], timeout=3600, progress=print)
    """
    shards = [h for h in hosts if h.role == "shard"]
    for host in shards:
        set_drain(host, True, writer)
    read = reader or ssh_reader
    deadline = clock() + timeout
    # the front door stops sending new rooms only after its next refresh: wait for one before judging
    first_check = clock() + min(spec.frontdoor.refresh_interval, timeout)
    waiting = {h.name: h for h in shards}
    while waiting:
        busy = {}
        for name, host in sorted(waiting.items()):
            reading = read(host)
            if is_empty(reading) and clock() >= first_check:
                del waiting[name]
                _say(progress, f"{name}: empty")
            else:
                busy[name] = (f"{reading.participants} participant(s) in {reading.conferences} room(s)"
                              if reading.ok else f"unreadable ({reading.error})")
        if not waiting:
            return
        left = deadline - clock()
        if left <= 0:
            detail = "; ".join(f"{n}: {why}" for n, why in busy.items())
            raise EnsembleError(f"drain: timeout after {timeout}s, still in use: {detail} "
                                "(they stay drained; wait longer, or use --force to cut these meetings)")
        _say(progress, "waiting for " + "; ".join(f"{n}: {why}" for n, why in busy.items())
             + f" ({int(left)}s left)")
        sleep(min(interval, max(left, 0.1)))


def _say(progress: Progress, line: str) -> None:
    if progress:
        progress(line)


# ---------------------------------------------------------------- rolling upgrade

def rolling_upgrade(spec: FleetSpec, hosts: list[Host], *, timeout: int, redeploy: Callable[[Host], list[str]],
                    check: Callable[[Host], list[str]], progress: Progress = None,
                    back_in_service: Callable[[Host], list[str]] | None = None,
                    may_drain: Callable[[Host], list[str]] | None = None,
                    writer: StateWriter | None = None, reader: ShardReader | None = None,
                    interval: float = 10.0, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Upgrade shards one at a time: drain, wait empty, redeploy, health-check, undrain, and (with
    `back_in_service`) confirm the front door reads the shard as ready again before the next one.

    Stops at the first failure, leaving that shard drained (it takes no new rooms) and the others
    untouched; the error names the shard and the step. Returns one result dict per upgraded shard.

    Example::

        rolling_upgrade(spec, hosts, timeout=3600, redeploy=deploy_one, check=check_one, progress=print)
    """
    results = []
    shards = sorted((h for h in hosts if h.role == "shard"), key=lambda h: h.shard or 0)
    for index, host in enumerate(shards, 1):
        started = clock()
        refusals = may_drain(host) if may_drain else []
        if refusals:
            raise EnsembleError(f"upgrade: not draining {host.name}: {'; '.join(refusals)} (nothing changed on it)")
        _say(progress, f"[{index}/{len(shards)}] {host.name}: draining")
        drain_and_wait(spec, [host], timeout, progress, writer=writer, reader=reader, interval=interval,
                       clock=clock, sleep=sleep)
        _say(progress, f"[{index}/{len(shards)}] {host.name}: redeploying")
        failures = redeploy(host)
        if failures:
            raise EnsembleError(f"upgrade: {host.name} failed to redeploy (left drained): {'; '.join(failures)}")
        failures = check(host)
        if failures:
            raise EnsembleError(f"upgrade: {host.name} failed its health check (left drained): {'; '.join(failures)}")
        set_drain(host, False, writer)
        failures = back_in_service(host) if back_in_service else []
        if failures:
            raise EnsembleError(f"upgrade: {host.name} was upgraded but is not back in service, stopped before "
                                f"the next shard: {'; '.join(failures)}")
        _say(progress, f"[{index}/{len(shards)}] {host.name}: back in service")
        results.append({"shard": host.name, "seconds": round(clock() - started, 1)})
    return results
