"""Reading shards: census, JVB stats, health and drain state, over each shard's private location.

Every shard's nginx answers ``/_ensemble/{census,stats,health,state}`` on its private occupancy
listener (paths.OCCUPANCY_PORT), only to the front door's address and only with a tag of the fleet's
occupancy token (`occupancy_authorization`): the token itself never leaves the front door. The
listener's certificate is issued for the shard's name by the fleet's own CA (ensemble/fleetca.py)
and verified against that CA with a host name check in every TLS mode (certificate checks are never
off), so a host answering for a shard's name without it is refused before anything is sent: the
shard is unreadable, its reason names the certificate. Reads run in parallel,
each with a timeout; a shard that does not answer all four gives ``ShardReading(ok=False)``.
The parsing functions are pure (facts); `read_shard`/`read_all` do the I/O.

Example::

    source = OccupancySource(token=secrets["fleet"]["occupancy_token"])
    readings = read_all(spec.shard_names(), source)
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import math
import socket
import ssl
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from ensemble.frontdoor.rooms import key_from_census
from ensemble.frontdoor.selection import LiveRoom, ShardReading
from ensemble.paths import OCCUPANCY_PORT

ENDPOINTS = ("census", "stats", "health", "state")
TAG_LIFETIME = 300  # seconds a tag stays valid: covers clock skew between the front door and a shard


def occupancy_authorization(token: str, path: str, host: str, now: float | None = None,
                            lifetime: int = TAG_LIFETIME) -> str:
    """The Authorization header for one read: ``Ensemble <tag>,<expires>`` where tag is the unpadded
    base64url MD5 of ``"<expires><path><host> <token>"``, what nginx's secure_link module checks on
    the shard (templates/nginx/site.conf.j2, /_ensemble/auth: it compares digests, never the token).

    Example::

        occupancy_authorization("t", "/_ensemble/census", "demo-1.meet.example.org", now=0)
        # "Ensemble <22 characters>,300"
    """
    expires = int(time.time() if now is None else now) + lifetime
    digest = hashlib.md5(f"{expires}{path}{host.lower()} {token}".encode(), usedforsecurity=False).digest()
    return f"Ensemble {base64.urlsafe_b64encode(digest).decode().rstrip('=')},{expires}"


@dataclass(frozen=True)
class OccupancySource:
    """How to reach the shards' private locations.

    Example::

        OccupancySource(token="t", ca_file="/etc/ensemble/fleet-ca.pem")   # https://<shard>:7443/_ensemble/...
        OccupancySource(token="t", urls={"s1": "http://127.0.0.1:8081"})  # plain HTTP: stand-ins, tests
    """

    token: str
    url_pattern: str = f"https://{{shard}}:{OCCUPANCY_PORT}"
    urls: dict[str, str] = field(default_factory=dict)  # per-shard base URL overrides (stand-ins, tests)
    ca_file: str | None = None  # the fleet CA (production); None: the system's CAs
    timeout: float = 5.0
    parallel: int = 32

    def base_url(self, shard: str) -> str:
        return self.urls.get(shard) or self.url_pattern.format(shard=shard)


# ---------------------------------------------------------------- facts: parsing

# A shard's answers are data from another host: bounded and checked field by field, so one shard's
# malformed answer makes only that shard unreadable (ShardReading(ok=False, error=...)).
MAX_BODY = 4 << 20  # bytes per answer: a census of 10,000 rooms is about 1.5 MB
MAX_ROOMS = 50_000  # census entries per shard
MAX_COUNT = 1_000_000  # participants or conferences a shard (or one of its rooms) may claim
MAX_DEPTH = 8  # nesting of a shard's JSON (a census is 3 deep); deeper is refused before parsing
MAX_STRESS = 100.0


def json_depth_ok(body: bytes, limit: int = MAX_DEPTH) -> bool:
    """Whether the JSON text nests at most `limit` arrays/objects (brackets in strings counted too:
    a conservative pre-check that keeps json.loads away from deep recursion).

    Example::

        json_depth_ok(b'{"a": [1]}'), json_depth_ok(b"[" * 100)     # (True, False)
    """
    depth = 0
    for byte in body:
        if byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > limit:
                return False
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return True


def census_seconds(value: object) -> float:
    """A census time in Unix seconds: Jitsi's mod_muc_census gives milliseconds (anything past year 5000
    in seconds is taken as milliseconds); 0.0 when missing, unreadable or not a finite positive number.

    Example::

        census_seconds(1700000000123), census_seconds(1700000000), census_seconds(None)   # (1700000000.123, ...)
    """
    if isinstance(value, bool):
        return 0.0
    try:
        number = float(value or 0.0)
    except (TypeError, ValueError, OverflowError):
        return 0.0
    if not math.isfinite(number) or number <= 0:
        return 0.0
    number = number / 1000.0 if number > 1e11 else number
    return number if number < 1e11 else 0.0


def count(value: object, what: str) -> int:
    """A count from a shard's JSON: a whole number 0..MAX_COUNT (null is 0), else ValueError naming it.

    Example::

        count(3, "participants"), count(None, "participants")    # (3, 0)
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or not 0 <= value <= MAX_COUNT:
        raise ValueError(f"{what}: {type(value).__name__} {str(value)[:20]!r} is not a count 0..{MAX_COUNT}")
    return int(value)


def parse_census(data: dict) -> tuple[LiveRoom, ...]:
    """Live rooms of a prosody room census (leaked and unroutable names skipped); a census that is
    not a list of entries, or entries with impossible counts, raise ValueError.

    Example::

        parse_census({"room_census": [{"room_name": "a@conference.s", "participants": 2}]})
        # (LiveRoom(key="a", participants=2, created=0.0),)
    """
    entries = data.get("room_census")
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise ValueError(f"census: room_census is a {type(entries).__name__}, not a list")
    if len(entries) > MAX_ROOMS:
        raise ValueError(f"census: {len(entries)} rooms, more than {MAX_ROOMS}")
    rooms = []
    for entry in entries:
        if not isinstance(entry, dict):
            raise ValueError(f"census: an entry is a {type(entry).__name__}, not an object")
        if entry.get("leaked"):
            continue
        name = entry.get("room_name")
        key = key_from_census(name) if isinstance(name, str) else None
        if key:
            rooms.append(LiveRoom(key=key, participants=count(entry.get("participants"), "census participants"),
                                  created=census_seconds(entry.get("created_time"))))
    return tuple(sorted(rooms, key=lambda r: r.key))


def stress_level(value: object) -> float:
    """The JVB's stress level: a finite number 0..MAX_STRESS (null is 0), else ValueError.

    Example::

        stress_level(0.25)     # 0.25
    """
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_STRESS:
        raise ValueError(f"stats: stress_level {str(value)[:20]!r} is not a number 0..{MAX_STRESS:g}")
    return float(value)


def reading_from(name: str, census: dict, stats: dict, healthy: bool, state: dict,
                 capacity: int | None = None) -> ShardReading:
    """Combine the four answers of a shard into one reading; a malformed field raises ValueError.

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
        conferences=max(count(stats.get("conferences"), "stats conferences"), len(rooms)),
        participants=max(count(stats.get("participants"), "stats participants"), census_participants),
        stress=stress_level(stats.get("stress_level")),
        capacity=cap if isinstance(cap, int) and not isinstance(cap, bool) and 0 < cap <= MAX_COUNT else capacity,
        rooms=rooms)


# ---------------------------------------------------------------- actions: HTTP

def _context(source: OccupancySource) -> ssl.SSLContext:
    """Certificate and host name always checked: against the fleet CA only when one is given."""
    return ssl.create_default_context(cafile=source.ca_file)


def read_bounded(response, limit: int, deadline: float) -> bytes:
    """The body of an HTTP response, at most `limit` bytes and before `deadline` (time.monotonic()),
    else ValueError: a shard that trickles or floods its answer does not hold up the refresh."""
    chunks, size = [], 0
    while True:
        if time.monotonic() > deadline:
            raise ValueError("answer too slow")
        chunk = response.read1(65536) if hasattr(response, "read1") else response.read(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            raise ValueError(f"answer larger than {limit} bytes")
        chunks.append(chunk)


class ShardHTTPSConnection(http.client.HTTPSConnection):
    """HTTPS to an address whose certificate must be valid for `shard_name` (the name, not the address,
    is what TLS checks: an address override for a stand-in or test checks the same certificate).

    Example::

        ShardHTTPSConnection("127.0.0.1", 7443, shard_name="demo-1.meet.example.org", context=ctx)
    """

    def __init__(self, host: str, port: int, *, shard_name: str, context: ssl.SSLContext, timeout: float) -> None:
        super().__init__(host, port, timeout=timeout, context=context)
        self.shard_name, self.tls_context = shard_name, context

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            self.sock = self.tls_context.wrap_socket(sock, server_hostname=self.shard_name)
        except BaseException:
            sock.close()
            raise


def fetch(source: OccupancySource, shard: str, endpoint: str, deadline: float | None = None) -> tuple[int, bytes]:
    """GET <base>/_ensemble/<endpoint> with a tag of the token; (status, body at most MAX_BODY bytes; empty
    unless 200). Over https the certificate must be valid for the shard's name (against `source.ca_file`)
    before anything is sent; redirects are not followed. Network and TLS errors raise OSError; an
    answer too big or slower than `deadline` raises ValueError."""
    deadline = time.monotonic() + source.timeout if deadline is None else deadline
    path = f"/_ensemble/{endpoint}"
    base = urllib.parse.urlsplit(source.base_url(shard))
    timeout = max(0.1, min(source.timeout, deadline - time.monotonic()))  # per socket operation
    if base.scheme == "https":
        conn: http.client.HTTPConnection = ShardHTTPSConnection(
            base.hostname or shard, base.port or 443, shard_name=shard, context=_context(source), timeout=timeout)
    elif base.scheme == "http":  # stand-ins and tests only: production reads are https (url_pattern)
        conn = http.client.HTTPConnection(base.hostname or shard, base.port or 80, timeout=timeout)
    else:
        raise ValueError(f"unsupported URL scheme {base.scheme!r}")
    try:
        # Host names the shard even when the URL is an override (a stand-in or an address)
        conn.request("GET", path, headers={"Authorization": occupancy_authorization(source.token, path, shard),
                                           "Host": shard, "User-Agent": "ensemble-frontdoor"})
        response = conn.getresponse()
        if response.status != 200:
            return response.status, b""
        return response.status, read_bounded(response, MAX_BODY, deadline)
    finally:
        conn.close()


def _json(status: int, body: bytes, what: str) -> dict:
    if status != 200:
        raise ValueError(f"{what}: HTTP {status}")
    if not json_depth_ok(body):
        raise ValueError(f"{what}: JSON nested deeper than {MAX_DEPTH}")
    try:
        data = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{what}: not UTF-8") from None
    except ValueError as exc:
        raise ValueError(f"{what}: not JSON ({str(exc)[:60]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: not a JSON object")
    return data


def read_shard(name: str, source: OccupancySource, capacity: int | None = None) -> ShardReading:
    """Read one shard; any failure gives ok=False with a one-line reason (never raises). The four
    answers together must arrive within `source.timeout` seconds.

    Example::

        read_shard("demo-1.meet.example.org", source).participants
    """
    deadline = time.monotonic() + source.timeout
    try:
        census = _json(*fetch(source, name, "census", deadline), "census")
        stats = _json(*fetch(source, name, "stats", deadline), "stats")
        health_status, _ = fetch(source, name, "health", deadline)
        state_status, state_body = fetch(source, name, "state", deadline)
        state = _json(state_status, state_body, "state") if state_status != 404 else {}
        return reading_from(name, census, stats, health_status == 200, state, capacity)
    except ssl.SSLCertVerificationError as exc:  # not the fleet CA's certificate for this name: nothing was sent
        return ShardReading(name=name, ok=False, error=f"certificate refused: {exc.verify_message}"[:200])
    except (OSError, ValueError) as exc:  # timeouts, refused, TLS, bad JSON, bad fields, HTTP errors
        reason = getattr(exc, "reason", None) or exc
        return ShardReading(name=name, ok=False, error=" ".join(str(reason).split())[:200] or type(exc).__name__)
    except Exception as exc:  # noqa: BLE001  anything else a hostile answer provokes (http.client errors...)
        return ShardReading(name=name, ok=False, error=f"{type(exc).__name__}: {' '.join(str(exc).split())[:160]}")


def read_all(names: list[str], source: OccupancySource, capacity: int | None = None) -> list[ShardReading]:
    """Read every shard in parallel; readings come back in the order of names.

    Example::

        [r.ok for r in read_all(spec.shard_names(), source)]
    """
    if not names:
        return []
    with ThreadPoolExecutor(max_workers=min(source.parallel, len(names))) as pool:
        return list(pool.map(lambda n: read_shard(n, source, capacity), names))
