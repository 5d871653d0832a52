"""Drains: a shard's drain flag, waiting until shards are empty, and the rolling upgrade.

The drain flag lives on the shard (/var/lib/ensemble/state.json, ``{"drain": true}``), served to
the front door by the shard's private ``/_ensemble/state`` location: the next refresh stops
sending new rooms there while live rooms stay pinned. The flag is written over SSH (paramiko,
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
import shlex
import time
from collections.abc import Callable

from ensemble.errors import EnsembleError, UsageError
from ensemble.frontdoor.occupancy import reading_from
from ensemble.frontdoor.selection import ShardReading
from ensemble.providers.base import Host
from ensemble.spec import FleetSpec

STATE_FILE = "/var/lib/ensemble/state.json"
PROSODY_HTTP = ("127.0.0.1", 5280)
JVB_PRIVATE = ("127.0.0.1", 8080)

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

def _connect(host: Host, timeout: float = 10.0):
    import paramiko

    client = paramiko.SSHClient()
    if host.known_hosts:
        client.load_host_keys(host.known_hosts)
    client.set_missing_host_key_policy(paramiko.RejectPolicy())  # pinned keys only
    try:
        client.connect(host.address, port=host.ssh_port, username=host.ssh_user, key_filename=host.ssh_key,
                       timeout=timeout, banner_timeout=timeout, auth_timeout=timeout, allow_agent=False,
                       look_for_keys=host.ssh_key is None)
    except (OSError, paramiko.SSHException) as exc:
        raise EnsembleError(f"{host.name}: SSH to {host.address}:{host.ssh_port} failed: {exc}") from None
    return client


def ssh_state_writer(host: Host, document: dict, path: str = STATE_FILE) -> None:
    """Write the shard's state file atomically over SSH (readable by nginx, which serves it)."""
    text = json.dumps(document, sort_keys=True) + "\n"
    tmp = f"{path}.tmp"
    command = (f"umask 022 && mkdir -p {shlex.quote(path.rsplit('/', 1)[0])} && "
               f"cat > {shlex.quote(tmp)} && mv -f {shlex.quote(tmp)} {shlex.quote(path)}")
    client = _connect(host)
    try:
        stdin, stdout, stderr = client.exec_command(command, timeout=30)
        stdin.write(text)
        stdin.channel.shutdown_write()
        code = stdout.channel.recv_exit_status()
        if code != 0:
            raise EnsembleError(f"{host.name}: writing {path} failed: {stderr.read().decode()[:200].strip()}")
    finally:
        client.close()


def _http_over_ssh(client, target: tuple[str, int], path: str, host_header: str) -> tuple[int, bytes]:
    """One HTTP/1.0 GET to a loopback service of the remote host, through a direct-tcpip channel."""
    channel = client.get_transport().open_channel("direct-tcpip", target, ("127.0.0.1", 0), timeout=10)
    try:
        channel.settimeout(15)
        channel.sendall(f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = channel.recv(65536)
            if not data:
                break
            chunks.append(data)
    finally:
        channel.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head.startswith(b"HTTP/") else 0
    return status, body


def ssh_reader(host: Host, prosody: tuple[str, int] = PROSODY_HTTP, jvb: tuple[str, int] = JVB_PRIVATE) -> ShardReading:
    """Census + JVB stats of a shard, read over SSH; ok=False with a reason on any failure."""
    import paramiko

    try:
        client = _connect(host)
    except EnsembleError as exc:
        return ShardReading(name=host.name, ok=False, error=str(exc))
    try:
        status, census = _http_over_ssh(client, prosody, "/room-census", host.name)
        status2, stats = _http_over_ssh(client, jvb, "/colibri/stats", host.name)
        if status != 200 or status2 != 200:
            return ShardReading(name=host.name, ok=False, error=f"census HTTP {status}, stats HTTP {status2}")
        return reading_from(host.name, json.loads(census), json.loads(stats), True, {})
    except (OSError, ValueError, EOFError, paramiko.SSHException) as exc:  # e.g. the service is not listening
        return ShardReading(name=host.name, ok=False, error=f"{exc.__class__.__name__}: {exc}")
    finally:
        client.close()


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
                    writer: StateWriter | None = None, reader: ShardReader | None = None,
                    interval: float = 10.0, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """Upgrade shards one at a time: drain, wait empty, redeploy, health-check, undrain.

    Stops at the first failure, leaving that shard drained (it takes no new rooms) and the others
    untouched; the error names the shard and the step. Returns one result dict per upgraded shard.

    Example::

        rolling_upgrade(spec, hosts, timeout=3600, redeploy=deploy_one, check=check_one, progress=print)
    """
    results = []
    shards = sorted((h for h in hosts if h.role == "shard"), key=lambda h: h.shard or 0)
    for index, host in enumerate(shards, 1):
        started = clock()
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
        _say(progress, f"[{index}/{len(shards)}] {host.name}: back in service")
        results.append({"shard": host.name, "seconds": round(clock() - started, 1)})
    return results
