"""Steering: anyone can ask the front door for new room names. Unconfirmed routes (routed as new, in
no census yet) must not decide where real meetings go, nor grow the maps and reloads with the names.

Bounds with the defaults (selection.SelectionParams, spec frontdoor.new_rooms_per_minute): nginx lets
one client (an IPv4 address, an IPv6 /64) open 60 new rooms a minute (bursts of 60), more get 429;
of a client's unconfirmed rooms the newest 3 count as pending participants (at the settled room
size); all unconfirmed rooms together add at most 5 % of a shard's capacity to its used fraction
(the quantity the split balances); at most 5000 are pinned. Pure tests on `select`, then 10,000
names from one client through real nginx.
"""

from __future__ import annotations

import http.client
import json
import random
import string
from dataclasses import replace
from pathlib import Path

import pytest
from standins.shard_occupancy import FrontdoorUnderTest, OccupancyStandin, ShardsNginx
from test_frontdoor_routing import TOKEN, make_spec

from ensemble.frontdoor.refresh import client_group, parse_routes
from ensemble.frontdoor.selection import (
    LiveRoom,
    Memory,
    SelectionParams,
    ShardReading,
    bound_unconfirmed,
    memory_from_json,
    select,
)

P = SelectionParams(capacity=200, grace_period=60, ready_after=3, recent_ttl=60)
NAMES = ["s1", "s2", "s3", "s4"]
NOW = 10_000.0


def readings(loads: dict[str, int], room_size: int = 4) -> list[ShardReading]:
    """Shards with settled live meetings (an hour old) of `room_size` participants."""
    out = []
    for name in NAMES:
        rooms = tuple(LiveRoom(f"{name}-live{j}", room_size, NOW - 3600)
                      for j in range(loads.get(name, 0) // room_size))
        out.append(ShardReading(name, ok=True, participants=sum(r.participants for r in rooms),
                                conferences=len(rooms), rooms=rooms))
    return out


def attack(count: int, clients: int, spared: str | None = None) -> list[tuple]:
    """`count` distinct names routed within the last minute by `clients` clients (IPv6 /64s beyond
    256). `spared`: the attacker picked names that hash to every shard but this one, to push new
    meetings there."""
    targets = [n for n in NAMES if n != spared]
    return [(NOW - 60 + 60 * i / count, f"x{i}", targets[i % len(targets)],
             f"203.0.113.{i % clients}" if clients <= 256 else client_group(f"2001:db8:{i:x}::1"))
            for i in range(count)]


def used(plan) -> dict[str, float]:
    return {d.name: d.used for d in plan.shards}


LOADS = [{}, {"s1": 40, "s2": 20, "s3": 8}, {"s1": 160, "s2": 160, "s3": 160, "s4": 80},
         {"s1": 120, "s2": 20, "s3": 60, "s4": 200}]


@pytest.mark.parametrize("loads", LOADS)
@pytest.mark.parametrize("clients", [1, 200, 10_000])
@pytest.mark.parametrize("spared", [None, "s4"])
def test_10000_names_move_no_shard_by_more_than_the_bound(loads, clients, spared):
    base = readings(loads)
    honest, _ = select(base, Memory(), NOW, P)
    attacked, memory = select(base, Memory(), NOW, P, attack(10_000, clients, spared))
    shift = {n: attacked_used - used(honest)[n] for n, attacked_used in used(attacked).items()}
    assert all(0 <= s <= P.unconfirmed_share + 1e-9 for s in shift.values()), shift  # 5 % of capacity
    if clients == 1:
        room_size = 4 if loads else 1
        assert sum(shift.values()) * P.capacity <= 3 * room_size + 1e-6, shift  # one client: 3 rooms in all
    # the maps: at most 5000 unconfirmed pins (the newest), whatever the number of names
    assert len(memory.recent) == P.max_unconfirmed_pins
    assert len(attacked.pins) == len(honest.pins) + P.max_unconfirmed_pins
    assert min(at for _, at, _ in memory.recent.values()) >= NOW - 30  # the newest half of the minute kept


def test_bound_unconfirmed_counts_clients_and_caps_shards():
    one_client = {f"r{i}": ("s1", float(i), "192.0.2.1") for i in range(1000)}
    kept, pending = bound_unconfirmed(one_client, P, dict.fromkeys(NAMES, 200), 2.0)
    assert pending == {"s1": 6.0} and len(kept) == 1000
    many = {f"r{i}": (NAMES[i % 4], float(i), f"c{i}") for i in range(1000)}
    kept, pending = bound_unconfirmed(many, P, dict.fromkeys(NAMES, 200), 2.0)
    assert pending == dict.fromkeys(NAMES, 10.0)  # 5 % of 200
    unknown = {f"r{i}": ("s2", float(i), "") for i in range(3)}  # old log lines: not grouped
    assert bound_unconfirmed(unknown, P, {"s2": 200}, 2.0)[1] == {"s2": 6.0}
    assert client_group("2001:db8:1:2:aaaa::1") == client_group("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    assert client_group("::ffff:192.0.2.7") == "192.0.2.7" and client_group("junk") == ""
    # a state file written before clients were recorded still reads
    assert memory_from_json({"recent": {"a": ["s1", 5.0]}}).recent == {"a": ("s1", 5.0, "")}
    assert parse_routes("1.5 a s1 2001:db8::1\n2.5 b s2\n") == [(1.5, "a", "s1", "2001:db8::/64"),
                                                                   (2.5, "b", "s2", "")]


def test_real_meetings_still_balance_after_an_attack():
    _, memory = select(readings({}), Memory(), NOW - 15, P, attack(10_000, 10_000, spared="s4"))
    # a minute later: real meetings in the census, the attack's names never joined
    loads = {"s1": 160, "s2": 100, "s3": 40, "s4": 0}
    attacked, _ = select(readings(loads), memory, NOW, P)
    honest, _ = select(readings(loads), Memory(), NOW, P)
    assert all(abs(used(attacked)[n] - used(honest)[n]) <= P.unconfirmed_share + 1e-9 for n in NAMES)
    units = dict(attacked.split)
    assert units.get("s1", 0) == 0 and units["s4"] == max(units.values())  # the emptiest gets the most
    assert set(units) == set(dict(honest.split))


# ---------------------------------------------------------------- through real nginx

def names(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_lowercase) for _ in range(12)) + str(i) for i in range(count)]


class SourceClient:
    """Keep-alive HTTP client from a given loopback source address (127.0.0.0/8 is all local)."""

    def __init__(self, port: int, host: str, source: str) -> None:
        self.port, self.host, self.source = port, host, source
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10, source_address=(source, 0))

    def get(self, path: str, method: str = "GET") -> int:
        for attempt in (1, 2):
            try:
                self.conn.request(method, path, body=b"{}" if method == "POST" else None, headers={"Host": self.host})
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10,
                                                       source_address=(self.source, 0))
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.conn.close()


@pytest.mark.needs_tool("nginx")
def test_10000_names_from_one_client_through_real_nginx(tmp_path):
    spec = make_spec(capacity=200, new_rooms_per_minute=60)
    shards_names = spec.shard_names()
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", shards_names, standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    counter = tmp_path / "reloads"
    door.nginx = replace(door.nginx, reload=("sh", "-c", f'echo >> {counter} && exec "$0" "$@"', *door.nginx.reload))
    attacker = SourceClient(door.port, spec.fleet.domain, "127.0.0.66")
    user = SourceClient(door.port, spec.fleet.domain, "127.0.0.77")
    try:
        for i, name in enumerate(shards_names):
            standin.set_rooms(name, {f"meeting{i}-{j}": 4 for j in range(5 * (i + 1))})  # 20, 40, 60, 80
        honest = door.refresh()
        reloads_before = counter.read_text().count("\n")
        statuses = [attacker.get(f"/{name}") for name in names(10_000, seed=5)]
        accepted = statuses.count(302)
        assert statuses.count(429) + accepted == 10_000
        assert 60 <= accepted <= 60 + 60, accepted  # the burst, plus 1/s while the 10,000 requests last
        # another client is not affected
        assert all(user.get(f"/{name}") == 302 for name in names(20, seed=6))
        attacked = door.refresh()
        state = json.loads(Path(door.layout.state_path).read_text())
        routed = [route for route in state["memory"]["recent"].values() if route[2] == "127.0.0.66"]
        assert len(routed) == accepted  # 429s are not routes: pins grow with what nginx let through
        reloads = counter.read_text().count("\n") - reloads_before
        assert reloads <= 2  # one refresh, one reload (plus one for rooms routed during it): not per name
        shift = {d.name: d.used - h.used for d, h in zip(attacked.plan.shards, honest.plan.shards, strict=True)}
        # the attacker's 3 newest rooms at the settled size 4, plus the user's 3: 24 participants in all
        assert all(s >= 0 for s in shift.values()) and sum(shift.values()) * 200 <= 24 + 1e-6, shift
        # real meetings still balance: the least busy shard gets the most new rooms, the busiest none
        units = dict(attacked.plan.split)
        assert units.get(shards_names[3], 0) == 0 and units[shards_names[0]] == max(units.values()), units
        routes = parse_routes(Path(door.layout.routes_log).read_text())
        assert {client for *_, client in routes} == {"127.0.0.66", "127.0.0.77"}
    finally:
        attacker.close()
        user.close()
        door.stop()
        shards.stop()
        standin.stop()


@pytest.mark.needs_tool("nginx")
@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_every_request_that_routes_a_new_room_counts_against_the_limit(tmp_path, mode):
    """Not only pages: /config.js?room= (apps) and, in proxy mode, the conference request route a new room
    too, so they pass the same per-client limit, and what it refuses is not logged as a route (they were
    unlimited: one client could log and pin rooms at will, evicting other users' young pins)."""
    spec = make_spec(mode, new_rooms_per_minute=5)
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    attacker = SourceClient(door.port, spec.fleet.domain, "127.0.0.66")
    try:
        door.refresh()
        asks = [(f"/config.js?room={name}", "GET") for name in names(15, seed=7)]
        if mode == "proxy":
            asks += [(f"/conference-request/v1?room={name}", "POST") for name in names(15, seed=8)]
        statuses = [attacker.get(path, method) for path, method in asks]
        accepted = len(statuses) - statuses.count(429)
        assert 5 <= accepted <= 7, statuses  # the burst (plus one per 12 s while the requests last)
        assert len(parse_routes(Path(door.layout.routes_log).read_text())) == accepted
        # a room already pinned is a join: no limit, whatever the client did before
        standin.set_rooms(spec.shard_names()[0], {"pinned-room": 3})
        door.refresh()
        assert all(attacker.get("/config.js?room=pinned-room") != 429 for _ in range(10))
    finally:
        attacker.close()
        door.stop()
        shards.stop()
        standin.stop()
