"""Faults of the refresh, against real nginx: a failed reload is retried until one succeeds; one
shard's malformed or hostile answers (wrong types, huge bodies, deep JSON, non-UTF-8, slow drips,
broken HTTP) make only that shard unhealthy, with the reason, while the others keep routing."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from standins.shard_occupancy import Client, FrontdoorUnderTest, OccupancyStandin, ShardsNginx
from test_frontdoor_routing import TOKEN, make_spec, shard_of

from ensemble.errors import EnsembleError
from ensemble.frontdoor.occupancy import OccupancySource, parse_census, read_all, reading_from

pytestmark = pytest.mark.needs_tool("nginx")

GOOD_STATS = {"conferences": 0, "participants": 0, "stress_level": 0.0}

# (what, census body, stats body): each breaks one shard in one way
HOSTILE = {
    "census not a list": (b'{"room_census": "everything"}', None),
    "entry not an object": (b'{"room_census": [1, 2]}', None),
    "participants a string": (b'{"room_census": [{"room_name": "a@c.s", "participants": "many"}]}', None),
    "participants negative": (b'{"room_census": [{"room_name": "a@c.s", "participants": -5}]}', None),
    "participants huge": (b'{"room_census": [{"room_name": "a@c.s", "participants": 1e300}]}', None),
    "participants a list": (b'{"room_census": [{"room_name": "a@c.s", "participants": [1]}]}', None),
    "stats participants an object": (None, b'{"participants": {"a": 1}}'),
    "stress NaN": (None, b'{"stress_level": NaN}'),
    "stress a string": (None, b'{"stress_level": "high"}'),
    "census a list": (b"[]", None),
    "not JSON": (b"<html>hello</html>", None),
    "not UTF-8": (b'{"room_census": [{"room_name": "\xff\xfe@c.s"}]}', None),
    "deep JSON": (b"[" * 200_000 + b"]" * 200_000, None),
    "huge body": (b'{"room_census": [' + b'{"room_name": "x@c.s"},' * 300_000 + b'{}]}', None),
    "slow drip": ("slow", None),
    "headers never come": ("silent", None),
    "truncated body": ("truncated", None),
}


class HostileShard:
    """One shard answering with the given census/stats bodies (or a misbehaviour) on loopback."""

    def __init__(self) -> None:
        self.census: bytes | str = b'{"room_census": []}'
        self.stats: bytes | str = json.dumps(GOOD_STATS).encode()
        shard = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                body = {"/_ensemble/census": shard.census, "/_ensemble/stats": shard.stats}.get(self.path, b"{}")
                if body == "silent":
                    time.sleep(3)
                    return
                self.send_response(200)
                if body == "slow":  # a byte every 0.2 s: every read succeeds, the answer never ends
                    self.end_headers()
                    for _ in range(40):
                        self.wfile.write(b" ")
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                if body == "truncated":
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"room_census": [')
                    return
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture()
def fleet(tmp_path):
    spec = make_spec(capacity=100)
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    client = Client(door.port, spec.fleet.domain)
    hostile = HostileShard()
    try:
        yield spec, standin, door, client, hostile
    finally:
        hostile.stop()
        client.close()
        door.stop()
        shards.stop()
        standin.stop()


def test_parsing_refuses_wrong_types_with_the_field_named():
    for census, field in (({"room_census": "x"}, "room_census"), ({"room_census": [[]]}, "entry"),
                          ({"room_census": [{"room_name": "a@c", "participants": True}]}, "participants"),
                          ({"room_census": [{"room_name": "a@c", "participants": 1.5}]}, "participants")):
        with pytest.raises(ValueError, match=field):
            parse_census(census)
    with pytest.raises(ValueError, match="stress_level"):
        reading_from("s", {}, {"stress_level": float("inf")}, True, {})
    with pytest.raises(ValueError, match="conferences"):
        reading_from("s", {}, {"conferences": "3"}, True, {})
    # odd but harmless: unknown names skipped, absurd times ignored, a junk capacity falls back
    reading = reading_from("s", {"room_census": [{"room_name": 7}, {"room_name": "a@c", "created_time": 1e308}]},
                           {}, True, {"capacity": "lots"}, capacity=50)
    assert [r.key for r in reading.rooms] == ["a"] and reading.rooms[0].created == 0.0 and reading.capacity == 50


def test_one_shards_bad_answers_affect_only_that_shard(fleet):
    spec, standin, door, client, hostile = fleet
    names = spec.shard_names()
    bad = names[3]
    for i, name in enumerate(names[:3]):
        standin.set_rooms(name, {f"live{i}": 5})
    door.source = dataclasses.replace(door.source, urls={**door.source.urls, bad: hostile.url}, timeout=1.0)
    baseline = door.refresh()
    assert {d.name: d.state for d in baseline.plan.shards} == dict.fromkeys(names, "ready")
    for what, (census, stats) in HOSTILE.items():
        hostile.census = census or b'{"room_census": []}'
        hostile.stats = stats or json.dumps(GOOD_STATS).encode()
        result = door.refresh()  # never raises: the refresh goes on without that shard
        decisions = {d.name: d for d in result.plan.shards}
        assert decisions[bad].state == "unhealthy" and decisions[bad].reason, what
        assert bad in result.unreadable, what
        for i, name in enumerate(names[:3]):
            assert decisions[name].state == "ready" and decisions[name].participants == 5, (what, name)
            assert result.plan.pins[f"live{i}"] == name, what
            assert shard_of(client, f"Live{i}") == name, what
        assert bad not in dict(result.plan.split), what
        reason = json.loads(open(door.layout.state_path).read())["errors"][bad]
        assert reason and "\n" not in reason and len(reason) <= 200, (what, reason)
    # well again: back after ready_after (2) good reads, the others never moved
    hostile.census, hostile.stats = b'{"room_census": []}', json.dumps(GOOD_STATS).encode()
    door.refresh()
    assert {d.name: d.state for d in door.refresh().plan.shards}[bad] == "ready"


def test_slow_shards_are_read_in_parallel_within_the_timeout(fleet):
    spec, _, _, _, hostile = fleet
    hostile.census = "slow"
    source = OccupancySource(token=TOKEN, urls=dict.fromkeys(spec.shard_names(), hostile.url), timeout=0.5)
    readings = read_all(spec.shard_names(), source)
    assert [r.ok for r in readings] == [False] * 4
    assert all("slow" in r.error or "timed out" in r.error for r in readings), [r.error for r in readings]


def test_a_failed_reload_is_retried_until_one_succeeds(fleet):
    spec, standin, door, client, _ = fleet
    names = spec.shard_names()
    door.refresh()
    real = door.nginx
    standin.set_rooms(names[2], {"latecomer": 3})
    door.nginx = dataclasses.replace(real, reload=("/bin/false",))
    for _ in range(2):  # the maps on disk are new, nginx still serves the old ones
        with pytest.raises(EnsembleError, match="reload failed"):
            door.refresh()
        assert open(door.layout.routing_path).read().count("latecomer") == 2  # pin + raw-name pin (simple key)
    door.nginx = real
    result = door.refresh()
    assert not result.changed and result.reloaded  # same file, but nginx had never taken it
    assert shard_of(client, "latecomer") == names[2]
    assert not door.refresh().reloaded  # in service now: nothing more to do


def test_slow_drip_socket_is_cut(fleet):
    """A server that accepts and never answers: read_shard gives up after the timeout."""
    spec, _, _, _, _ = fleet
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        source = OccupancySource(token=TOKEN, urls={"x": f"http://127.0.0.1:{listener.getsockname()[1]}"},
                                 timeout=0.3)
        [reading] = read_all(["x"], source)
    assert not reading.ok and "timed out" in reading.error
