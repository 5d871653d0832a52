"""Reading shards: census, JVB stats, health and drain state, over each shard's private location.

Every shard's nginx answers ``/_ensemble/{census,stats,health,state}`` only to the front door's
address and only with ``Authorization: Bearer <fleet occupancy token>``. Reads run in parallel,
each with a timeout; a shard that does not answer all four gives ``ShardReading(ok=False)``.
The parsing functions are pure (facts); `read_shard`/`read_all` do the I/O.

Example::

    source = OccupancySource(token=secrets["fleet"]["occupancy_token"])
    readings = read_all(spec.shard_names(), source)
"""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ensemble.frontdoor.rooms import key_from_census
from ensemble.frontdoor.selection import LiveRoom, ShardReading

ENDPOINTS = ("census", "stats", "health", "state")


@dataclass(frozen=True)
class OccupancySource:
    """How to reach the shards' private locations.

    Example::

        OccupancySource(token="t")                                   # https://<shard>/_ensemble/...
        OccupancySource(token="t", urls={"s1": "http://127.0.0.1:8081"}, verify_tls=False)
    """

    token: str
    url_pattern: str = "https://{shard}"
    urls: dict[str, str] = field(default_factory=dict)  # per-shard base URL overrides (stand-ins, tests)
    verify_tls: bool = True
    ca_file: str | None = None
    timeout: float = 5.0
    parallel: int = 32

    def base_url(self, shard: str) -> str:
        return self.urls.get(shard) or self.url_pattern.format(shard=shard)


# ---------------------------------------------------------------- facts: parsing

def census_seconds(value: object) -> float:
    """A census time in Unix seconds: Jitsi's mod_muc_census gives milliseconds (anything past year 5000
    in seconds is taken as milliseconds); 0.0 when missing or unreadable.

    Example::

        census_seconds(1700000000123), census_seconds(1700000000), census_seconds(None)   # (1700000000.123, ...)
    """
    try:
        number = float(value or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return number / 1000.0 if number > 1e11 else number


def parse_census(data: dict) -> tuple[LiveRoom, ...]:
    """Live rooms of a prosody room census (leaked and unroutable names skipped).

    Example::

        parse_census({"room_census": [{"room_name": "a@conference.s", "participants": 2}]})
        # (LiveRoom(key="a", participants=2, created=0.0),)
    """
    rooms = []
    for entry in data.get("room_census", []) or []:
        if not isinstance(entry, dict) or entry.get("leaked"):
            continue
        key = key_from_census(str(entry.get("room_name", "")))
        if key:
            rooms.append(LiveRoom(key=key, participants=int(entry.get("participants") or 0),
                                  created=census_seconds(entry.get("created_time"))))
    return tuple(sorted(rooms, key=lambda r: r.key))


def reading_from(name: str, census: dict, stats: dict, healthy: bool, state: dict,
                 capacity: int | None = None) -> ShardReading:
    """Combine the four answers of a shard into one reading.

    Example::

        reading_from("s1", {"room_census": []}, {"participants": 0, "stress_level": 0.1}, True, {"drain": False})
    """
    rooms = parse_census(census)
    census_participants = sum(r.participants for r in rooms)
    drain = bool(state.get("drain")) or bool(stats.get("drain")) or bool(stats.get("graceful_shutdown"))
    jvb_healthy = stats.get("healthy", True) is not False
    cap = state.get("capacity")
    return ShardReading(
        name=name, ok=True, healthy=healthy and jvb_healthy,
        error="" if healthy and jvb_healthy else ("jicofo health failed" if not healthy else "JVB unhealthy"),
        drain=drain,
        conferences=max(int(stats.get("conferences") or 0), len(rooms)),
        participants=max(int(stats.get("participants") or 0), census_participants),
        stress=float(stats.get("stress_level") or 0.0),
        capacity=int(cap) if isinstance(cap, int) and cap > 0 else capacity,
        rooms=rooms)


# ---------------------------------------------------------------- actions: HTTP

def _context(source: OccupancySource) -> ssl.SSLContext | None:
    if not source.verify_tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=source.ca_file)


def fetch(source: OccupancySource, shard: str, endpoint: str) -> tuple[int, bytes]:
    """GET <base>/_ensemble/<endpoint> with the token; (status, body). Network errors raise OSError."""
    url = f"{source.base_url(shard)}/_ensemble/{endpoint}"
    # Host names the shard even when the URL is an override (a stand-in or an address)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {source.token}", "Host": shard,
                                                   "User-Agent": "ensemble-frontdoor"})
    context = _context(source) if url.startswith("https:") else None
    try:
        with urllib.request.urlopen(request, timeout=source.timeout, context=context) as response:
            return response.status, response.read(4 << 20)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(4096)


def _json(status: int, body: bytes, what: str) -> dict:
    if status != 200:
        raise ValueError(f"{what}: HTTP {status}")
    data = json.loads(body.decode("utf-8"))
    if not isinstance(data, dict):
        raise ValueError(f"{what}: not a JSON object")
    return data


def read_shard(name: str, source: OccupancySource, capacity: int | None = None) -> ShardReading:
    """Read one shard; any failure gives ok=False with a one-line reason (never raises).

    Example::

        read_shard("demo-1.meet.example.org", source).participants
    """
    try:
        census = _json(*fetch(source, name, "census"), "census")
        stats = _json(*fetch(source, name, "stats"), "stats")
        health_status, _ = fetch(source, name, "health")
        state_status, state_body = fetch(source, name, "state")
        state = _json(state_status, state_body, "state") if state_status != 404 else {}
    except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad JSON, HTTP errors
        reason = getattr(exc, "reason", None) or exc
        return ShardReading(name=name, ok=False, error=str(reason)[:200])
    return reading_from(name, census, stats, health_status == 200, state, capacity)


def read_all(names: list[str], source: OccupancySource, capacity: int | None = None) -> list[ShardReading]:
    """Read every shard in parallel; readings come back in the order of names.

    Example::

        [r.ok for r in read_all(spec.shard_names(), source)]
    """
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=min(source.parallel, len(names))) as pool:
        return list(pool.map(lambda n: read_shard(n, source, capacity), names))
