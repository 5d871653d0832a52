"""`ensemble frontdoor refresh`: read the shards, select, write the maps, `nginx -t`, reload on change.

Runs on the front door host (systemd timer, every `frontdoor.refresh_interval` s). The state file
(damping, last pins, recently routed rooms, the last plan for `ensemble status`) is derived data:
losing it costs at most one damping period. The maps are replaced atomically; when `nginx -t`
rejects them the previous maps are put back and nginx keeps serving the old configuration.

Example::

    result = refresh(spec, token, FrontdoorLayout(), OccupancySource(token=token), NginxControl())
    result.changed, result.reloaded, result.seconds
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import math
import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from ensemble.errors import EnsembleError
from ensemble.frontdoor.metrics import metrics_text, next_stats
from ensemble.frontdoor.occupancy import OccupancySource, read_all
from ensemble.frontdoor.render import FrontdoorLayout, routing_conf
from ensemble.frontdoor.rooms import is_room_key
from ensemble.frontdoor.selection import (
    Memory,
    RoutingPlan,
    SelectionParams,
    ShardReading,
    memory_from_json,
    memory_to_json,
    pin_routed,
    plan_to_json,
    select,
)
from ensemble.spec import FleetSpec

ROUTES_LOG_FIRST_READ = 1 << 20  # without a saved offset, only the log's last MiB matters (recent_ttl)


@dataclass(frozen=True)
class NginxControl:
    """The commands that check and reload nginx (tests add -p/-c for their own instance).

    Example::

        NginxControl(test=("nginx", "-p", "/tmp/fd", "-c", "/tmp/fd/nginx.conf", "-t", "-q"),
                     reload=("nginx", "-p", "/tmp/fd", "-c", "/tmp/fd/nginx.conf", "-s", "reload"))
    """

    test: tuple[str, ...] = ("nginx", "-t", "-q")
    reload: tuple[str, ...] = ("systemctl", "reload", "nginx")
    reopen: tuple[str, ...] = ("nginx", "-s", "reopen")  # reopens the route log (rotation)
    settle: float = 0.3  # seconds for the old workers to finish before the catch-up read of the route log
    pid_file: str = "/run/nginx.pid"  # the master's (Debian's nginx.conf): its workers tell when a reload is done


def nginx_workers(pid_file: str) -> set[int]:
    """The pids of the nginx master's children (its workers), from /proc; empty when unknown.

    Example::

        nginx_workers("/run/nginx.pid")   # {4242, 4243}
    """
    try:
        master = int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return set()
    workers = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if fields[1] == str(master):  # fields: state, ppid, ...
            workers.add(int(stat.parent.name))
    return workers


def wait_for_new_workers(pid_file: str, before: set[int], timeout: float = 10.0) -> bool:
    """Wait until the master has started a worker that was not there `before` (a reload's new maps are in
    service, and the old workers were told to stop taking requests). False when it cannot tell or gave up."""
    if not before:
        return False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if nginx_workers(pid_file) - before:
            return True
        time.sleep(0.02)
    return False


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh did."""

    plan: RoutingPlan
    changed: bool
    reloaded: bool
    seconds: float
    unreadable: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {**plan_to_json(self.plan), "changed": self.changed, "reloaded": self.reloaded,
                "seconds": round(self.seconds, 3), "unreadable": self.unreadable}


def selection_params(spec: FleetSpec) -> SelectionParams:
    """Selection tunables from the spec; recently routed rooms stay pinned for 4 refreshes (>= 60 s).

    Example::

        selection_params(spec).grace_period     # 120
    """
    f = spec.frontdoor
    return SelectionParams(capacity=f.capacity_per_shard, grace_period=f.grace_period, ready_after=f.ready_after,
                           recent_ttl=max(60.0, 4.0 * f.refresh_interval))


# ---------------------------------------------------------------- facts: files

def client_group(address: str) -> str:
    """Who a route counts against: an IPv4 address, or the /64 of an IPv6 address (one subscriber's
    network); "" when it is not an address.

    Example::

        client_group("2001:db8:1:2::7"), client_group("192.0.2.1")   # ("2001:db8:1:2::/64", "192.0.2.1")
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return ""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def parse_routes(text: str) -> list[tuple[float, str, str, str]]:
    """Lines "<msec> <room key> <shard> [<client address>]" of the routes log -> (time, key, shard,
    client group); junk lines skipped.

    Example::

        parse_routes("1700000000.123 myroom demo-1.meet.example.org 192.0.2.1\n")
        # [(1700000000.123, "myroom", "demo-1.meet.example.org", "192.0.2.1")]
    """
    routes = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) not in (3, 4) or not is_room_key(parts[1]) or parts[2] == "-":
            continue
        try:
            at = float(parts[0])
        except ValueError:
            continue
        if math.isfinite(at):
            routes.append((at, parts[1], parts[2], client_group(parts[3]) if len(parts) == 4 else ""))
    return routes


def first_complaint(output: str) -> str:
    """The line of nginx's output that says what is wrong (the [emerg] one), else its last line.

    Example::

        first_complaint("nginx: [emerg] invalid port in upstream ...\nnginx: test failed")   # "nginx: [emerg] ..."
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return next((line for line in lines if "[emerg]" in line), lines[-1] if lines else "no output")


def load_state(path: Path) -> dict:
    """The refresher's state file, or {} when missing or unreadable (it is derived data)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _next_stats(state: dict, now: float, duration: float, failed: bool, routes: int) -> dict:
    """The counters after this run; a damaged counter set starts again from zero (derived data)."""
    before = state.get("stats")
    try:
        return next_stats(before if isinstance(before, dict) else {}, now, duration, failed, routes)
    except (TypeError, ValueError):
        return next_stats({}, now, duration, failed, routes)


# ---------------------------------------------------------------- actions

def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    """Replace path's content in one rename (readers see the old or the new file, never half)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def read_new_routes(log_path: Path, position: dict) -> tuple[list[tuple[float, str, str, str]], dict]:
    """Routes logged since the saved position {"inode", "offset"}; a rotated log is read from its start."""
    try:
        stat = log_path.stat()
    except OSError:
        return [], {}
    offset = position.get("offset", 0) if position.get("inode") == stat.st_ino else None
    if offset is None or offset > stat.st_size:
        offset = 0 if position.get("inode") else max(0, stat.st_size - ROUTES_LOG_FIRST_READ)
    with open(log_path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    # keep a partial last line for the next run
    end = data.rfind(b"\n") + 1
    return parse_routes(data[:end].decode("utf-8", "replace")), {"inode": stat.st_ino, "offset": offset + end}


def _run(command: tuple[str, ...]) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return subprocess.CompletedProcess(command, 1, "", str(exc))


class ReloadFailed(EnsembleError):
    """nginx did not take the maps now on disk: the next refresh reloads again."""


def maps_digest(text: str) -> str:
    """Fingerprint of a maps text, kept in the state file as the maps nginx was last reloaded with.

    Example::

        maps_digest("map ...")[:8]
    """
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def install_maps(path: Path, text: str, nginx: NginxControl, in_service: str | None = None) -> tuple[bool, bool]:
    """Write the maps if they differ, `nginx -t`, reload. (changed, reloaded).

    `in_service` is the digest of the maps of the last successful reload: when the file already holds
    `text` but nginx never took it (a reload failed, or the refresher was killed before it), the
    reload is retried, so a failed reload is never mistaken for maps in service.
    On a failed `nginx -t` the previous maps are restored and EnsembleError names nginx's complaint;
    a failed reload raises EnsembleError (the next refresh retries it).
    """
    try:
        old = path.read_text(encoding="utf-8")
    except (FileNotFoundError, UnicodeDecodeError):
        old = None
    changed = old != text
    if not changed and (in_service is None or in_service == maps_digest(text)):
        return False, False
    if changed:
        write_atomic(path, text)
    check = _run(nginx.test)
    if check.returncode != 0:
        if changed:
            if old is None:
                path.unlink(missing_ok=True)
            else:
                write_atomic(path, old)
        raise EnsembleError(f"frontdoor refresh: nginx -t rejected the new maps, the old ones stay in service: "
                            f"{first_complaint(check.stderr or check.stdout)}")
    reload = _run(nginx.reload)
    if reload.returncode != 0:
        raise ReloadFailed(f"frontdoor refresh: nginx reload failed (retried at the next refresh): "
                            f"{first_complaint(reload.stderr or reload.stdout)}")
    return changed, True


def refresh(spec: FleetSpec, layout: FrontdoorLayout, source: OccupancySource, nginx: NginxControl,
            now: float | None = None, readings: list[ShardReading] | None = None) -> RefreshResult:
    """One refresh cycle (see the module). `readings` skips the network (benchmarks, tests of selection).

    Example::

        refresh(spec, FrontdoorLayout(), OccupancySource(token=t), NginxControl()).plan.split
    """
    started = time.monotonic()
    now = time.time() if now is None else now
    state_path = Path(layout.state_path)
    state = load_state(state_path)
    memory = memory_from_json(state.get("memory", {})) if state else Memory()
    if readings is None:
        readings = read_all(spec.shard_names(), source)
    log = Path(layout.routes_log)
    # the route log is written unbuffered (a buffered line could be missed by this read and its room
    # split by the new maps); reopen still follows a rotated file
    _run(nginx.reopen)
    routed, position = read_new_routes(log, state.get("routes_log", {}))
    params = selection_params(spec)
    plan, memory = select(readings, memory, now, params, routed)
    routing_path = Path(layout.routing_path)
    in_service = state.get("in_service") if isinstance(state.get("in_service"), str) else None
    changed = reloaded = False
    routes, failed = len(routed), True
    try:
        text = routing_conf(plan, spec, layout)
        workers_before = nginx_workers(nginx.pid_file)
        changed, reloaded = install_maps(routing_path, text, nginx, in_service)
        if reloaded:
            in_service = maps_digest(text)
        if reloaded and nginx.settle > 0:
            # rooms routed by the old maps between the read above and the reload: pin them too. The reload
            # signal returns before nginx has read the new maps (about a second on a loaded host): read the
            # route log only once new workers serve, plus `settle` for requests the old ones had begun
            wait_for_new_workers(nginx.pid_file, workers_before)
            time.sleep(nginx.settle)
            _run(nginx.reopen)
            late, position = read_new_routes(log, position)
            late = [route for route in late if route[1] not in plan.pins]
            routes += len(late)
            if late:
                plan, memory = pin_routed(plan, memory, late, params)
                text = routing_conf(plan, spec, layout)
                if install_maps(routing_path, text, nginx, in_service)[1]:
                    in_service = maps_digest(text)
        failed = False
    except ReloadFailed:
        in_service = "reload failed"  # never a digest: the next refresh reloads whatever the file holds
        raise
    finally:
        new_state = {"memory": memory_to_json(memory), "routes_log": position, "plan": plan_to_json(plan),
                     "refreshed_at": now, "errors": {r.name: r.error for r in readings if r.error},
                     "in_service": in_service,
                     "stats": _next_stats(state, now, time.monotonic() - started, failed, routes)}
        write_atomic(state_path, json.dumps(new_state, indent=1, sort_keys=True) + "\n", 0o640)
        # the metrics nginx serves to the allow-listed scrapers (0644: nginx's workers read it)
        write_atomic(Path(layout.metrics_file()), metrics_text(new_state), 0o644)
    return RefreshResult(plan=plan, changed=changed, reloaded=reloaded, seconds=time.monotonic() - started,
                         unreadable=[r.name for r in readings if not r.ok])
