"""Pure parts of the front door: room keys, the split_clients model, selection rules, damping, state
file round trip, status table, drain_and_wait (against the stand-in through real nginx), CLI errors."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from standins.shard_occupancy import FrontdoorUnderTest, OccupancyStandin, ShardsNginx
from test_frontdoor_routing import TOKEN, drain_writer, make_spec

from ensemble.errors import EnsembleError, UsageError
from ensemble.frontdoor.drain import drain_and_wait, find_shard
from ensemble.frontdoor.occupancy import parse_census, read_shard
from ensemble.frontdoor.refresh import parse_routes
from ensemble.frontdoor.rooms import key_from_census, murmur2, room_key, split_bounds, split_choice
from ensemble.frontdoor.selection import (
    LiveRoom,
    Memory,
    SelectionParams,
    ShardReading,
    final_size_estimate,
    growth_expected,
    memory_from_json,
    memory_to_json,
    select,
    size_prior,
    to_units,
)
from ensemble.frontdoor.status import format_status, status_rows
from ensemble.providers.base import Host

P = SelectionParams(capacity=100, grace_period=60, ready_after=3, recent_ttl=60)


def ok(name: str, participants: int = 0, rooms=(), **kw) -> ShardReading:
    return ShardReading(name=name, ok=True, participants=participants, rooms=tuple(rooms), **kw)


def test_room_keys():
    assert room_key("ImpossibleCrimes") == "impossiblecrimes"
    assert room_key("r%C3%A9union") == "r%c3%a9union"
    assert room_key("%25C3") == "%25c3" and room_key("%41") == "a"  # decoded first, like jitsi-meet
    for bad in ("", "a b", "a.b", "a/b", "é", "%27", "~x"):  # raw space/UTF-8, dots, slashes; no node
        assert room_key(bad) is None, bad
    assert key_from_census("r%c3%a9union@conference.s1.test") == "r%c3%a9union"
    assert key_from_census("Réunion@conference.s1.test") is None  # prosody holds nodes as joined
    assert key_from_census("@conference.s1.test") is None


def test_murmur2_and_split_model():
    assert murmur2(b"") == 0
    assert murmur2(b"a") != murmur2(b"b")
    bounds = split_bounds([("a", 2500), ("b", 7500)])
    assert bounds[-1] == ("b", 0)
    picks = [split_choice(f"room{i}", bounds) for i in range(4000)]
    assert 800 < picks.count("a") < 1200
    assert split_choice("x", []) is None


def test_to_units_sums_and_drops_zero():
    assert to_units([("a", 1.0), ("b", 2.0)]) == [("a", 3333), ("b", 6667)]
    assert to_units([("a", 1.0), ("b", 0.0)]) == [("a", 10000)]
    assert to_units([]) == []
    assert sum(u for _, u in to_units([(str(i), 1.0 + i % 7) for i in range(500)])) == 10000


def test_weights_follow_free_capacity_and_stress():
    plan, _ = select([ok("s1", 0), ok("s2", 50), ok("s3", 10, stress=0.8), ok("s4", 120)], Memory(), 0.0, P)
    # used: 0, 0.5, 0.8 (stress), 1.2; fleet 0.625 -> level 0.675: room 0.65 (quantised), 0.15, none, none
    assert dict(plan.split) == {"s1": 8125, "s2": 1875}
    level_one = SelectionParams(capacity=100, margin=1.0)  # "proportional to free capacity"
    plan, _ = select([ok("s1", 0), ok("s2", 50), ok("s3", 10, stress=0.8), ok("s4", 120)], Memory(), 0.0, level_one)
    assert dict(plan.split) == {"s1": 5882, "s2": 2941, "s3": 1177}
    full, _ = select([ok("s1", 100), ok("s2", 150)], Memory(), 0.0, P)
    assert dict(full.split) == {"s1": 5000, "s2": 5000}  # all full: spread rather than refuse


def test_young_rooms_count_at_the_settled_room_size():
    # s1: two settled rooms of 6; s2: two rooms of 1 that started a minute ago (people still joining)
    now = 10_000.0
    settled = [LiveRoom(f"old{i}", 6, now - 3600) for i in range(2)]
    young = [LiveRoom(f"new{i}", 1, now - 60) for i in range(2)]
    readings = [ok("s1", 12, settled, conferences=2), ok("s2", 2, young, conferences=2), ok("s3", 0)]
    plan, _ = select(readings, Memory(), now, P)
    # s2 counts 2 * 6 expected (not 2): used 0.12 like s1; fleet 0.08 -> level 0.13: s3 gets the room
    assert dict(plan.split) == {"s3": 10000}
    later, _ = select(readings, Memory(), now + 600, P)  # settled at 1 each: used 0.12, 0.02, 0
    assert dict(later.split) == {"s2": 5000, "s3": 5000}  # level 0.097: room 0.05 each (quantised)
    census = {"room_census": [{"room_name": "a@c", "participants": 2, "created_time": 1700000000123}]}
    assert parse_census(census)[0].created == 1700000000.123  # Jitsi's census counts milliseconds


def test_young_rooms_final_size_from_how_fast_people_joined():
    # the fleet's settled rooms: 50 of 2 people, 10 of 20 (the prior of a young room's final size)
    now = 10_000.0
    settled = [LiveRoom(f"two{i}", 2, now - 3600) for i in range(50)] + [LiveRoom(f"big{i}", 20, now - 3600)
                                                                        for i in range(10)]
    prior = size_prior([ok("s1", 280, settled), ShardReading("s2", ok=False)], now, 600.0)
    assert prior == ((2, 50), (20, 10))
    # just opened: the prior's mean
    assert final_size_estimate(1, 0.0, 600.0, prior, 5.0) == pytest.approx((2 * 50 + 20 * 10) / 60)
    assert final_size_estimate(6, 60.0, 600.0, prior, 5.0) == 20.0  # 6 people in a minute: a big one
    quiet = final_size_estimate(1, 300.0, 600.0, prior, 5.0)
    assert 2.0 <= quiet < 2.1  # alone for 5 minutes: a 20-people meeting would have filled half way
    assert final_size_estimate(30, 60.0, 600.0, prior, 5.0) == 30.0  # beyond the prior: as big as it is
    assert final_size_estimate(3, 600.0, 600.0, prior, 5.0) == 3.0  # settled: as big as it is
    assert final_size_estimate(1, 60.0, 600.0, (), 5.0) == 5.0  # nothing settled yet: the room size
    fresh = ok("s2", 7, [LiveRoom("fast", 6, now - 60), LiveRoom("slow", 1, now - 300)])
    assert growth_expected(fresh, now, 600.0, 5.0, prior) == pytest.approx(14.0 + quiet - 1, abs=1e-6)
    # the shard whose young room filled fast counts it at 20: the new rooms go to the other one
    readings = [ok("s1", 280, settled), fresh, ok("s3", 7, [LiveRoom("slow2", 1, now - 300),
                                                             LiveRoom("slow3", 6, now - 3000)])]
    plan, _ = select(readings, Memory(), now, SelectionParams(capacity=100))
    assert plan.shards[1].used > 0.2 > plan.shards[2].used


def test_headroom_keeps_the_small_shards_a_little_below_the_big_ones():
    # settled rooms of 2 and 6 people (standard deviation 2): every shard keeps 2 places free
    now = 10_000.0
    rooms = [LiveRoom("a", 2, now - 3600), LiveRoom("b", 6, now - 3600)]
    readings = [ok("small", 20, rooms, capacity=40), ok("big", 80, [], capacity=160)]
    plan, _ = select(readings, Memory(), now, SelectionParams(capacity=100))
    used = {d.name: d.used for d in plan.shards}
    assert used == {"small": 0.55, "big": 0.5125}  # (20 + 2) / 40 and (80 + 2) / 160
    plain, _ = select(readings, Memory(), now, SelectionParams(capacity=100, headroom=0.0))
    assert {d.name: d.used for d in plain.shards} == {"small": 0.5, "big": 0.5}
    capped, _ = select(readings, Memory(), now, SelectionParams(capacity=100, headroom=100.0))
    assert {d.name: d.used for d in capped.shards} == {"small": 0.55, "big": 0.55}  # at most the margin


def test_pins_conflicts_and_grace():
    r1 = ok("s1", 3, [LiveRoom("a", 1), LiveRoom("b", 2)])
    r2 = ok("s2", 5, [LiveRoom("a", 5)])
    plan, mem = select([r1, r2], Memory(), 0.0, P)
    assert plan.pins == {"a": "s2", "b": "s1"}
    down = ShardReading("s1", ok=False, error="refused")
    plan, mem = select([down, ok("s2")], mem, 30.0, P)
    assert plan.pins == {"a": "s1", "b": "s1"} and dict(plan.split) == {"s2": 10000}
    plan, mem = select([down, ok("s2")], mem, 61.0, P)
    assert plan.pins == {}


def test_damping_and_first_sight():
    plan, mem = select([ok("s1")], Memory(), 0.0, P)
    assert plan.shards[0].state == "ready"  # never seen failing: ready at once
    states = []
    for t, reading in enumerate([ShardReading("s1", ok=False), ok("s1"), ok("s1"), ok("s1"), ok("s1")], 1):
        plan, mem = select([reading], mem, float(t), P)
        states.append(plan.shards[0].state)
    assert states == ["unhealthy", "unhealthy", "unhealthy", "ready", "ready"]
    unhealthy = ok("s1", healthy=False)
    plan, _ = select([unhealthy], mem, 9.0, P)
    assert plan.shards[0].state == "unhealthy" and plan.split == []


def test_recent_routes_pin_until_census_or_ttl():
    plan, mem = select([ok("s1"), ok("s2")], Memory(), 100.0, P, routed=[(99.0, "new", "s2"), (10.0, "old", "s1")])
    assert plan.pins == {"new": "s2"}
    plan, mem = select([ok("s1", 1, [LiveRoom("new", 1)]), ok("s2")], mem, 110.0, P)
    assert plan.pins == {"new": "s1"}  # the census wins
    plan, mem = select([ok("s1"), ok("s2")], memory_from_json(json.loads(json.dumps(memory_to_json(mem)))),
                       200.0, P)
    assert plan.pins == {}


def test_memory_json_is_forgiving():
    assert memory_from_json({"shards": "junk"}) == Memory()
    assert parse_routes("1.5 room s1\njunk\n2 A/B s1\n3 x -\n") == [(1.5, "room", "s1", "")]
    assert parse_census({"room_census": [{"room_name": "a@c", "participants": 2, "leaked": True}]}) == ()


def test_status_table():
    plan, _ = select([ok("s1", 10, [LiveRoom("a", 10)], conferences=1), ShardReading("s2", ok=False, error="x")],
                     Memory(), 0.0, P)
    from ensemble.frontdoor.selection import plan_to_json

    rows = status_rows({"plan": plan_to_json(plan)})
    assert rows[0]["pinned_rooms"] == ["a"] and rows[0]["weight"] == 100.0
    text = format_status(rows)
    assert "s1" in text.splitlines()[1] and "ready" in text and "unhealthy" in text


def test_find_shard():
    hosts = [Host("d-1.t.test", "shard", 1, "10.0.0.1"), Host("t.test", "frontdoor", None, "10.0.0.9")]
    assert find_shard(hosts, "1").name == "d-1.t.test" and find_shard(hosts, "d-1.t.test").shard == 1
    with pytest.raises(UsageError, match="SHARD: no shard 't.test'; valid: d-1.t.test"):
        find_shard(hosts, "t.test")


@pytest.mark.needs_tool("nginx")
def test_drain_and_wait_through_real_nginx(tmp_path):
    spec = make_spec()
    name = spec.shard_names()[0]
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN)  # for its OccupancySource only
    host = Host(name, "shard", 1, "127.0.0.1")
    clock = [0.0]
    lines: list[str] = []

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        if clock[0] >= 40:  # the last participants leave
            standin.set_rooms(name, {})

    try:
        standin.set_rooms(name, {"late": 2})
        drain_and_wait(spec, [host], timeout=120, progress=lines.append, writer=drain_writer(shards),
                       reader=lambda h: read_shard(h.name, door.source), interval=10, clock=lambda: clock[0],
                       sleep=sleep)
        assert json.loads(shards.state_file(name).read_text())["drain"] is True
        assert lines[-1] == f"{name}: empty" and any("2 participant(s)" in ln for ln in lines)
        assert 40 <= clock[0] <= 60
        standin.set_rooms(name, {"stuck": 1})
        clock[0] = 0.0
        with pytest.raises(EnsembleError, match=r"timeout after 30s, still in use: .*1 participant"):
            drain_and_wait(spec, [host], timeout=30, writer=drain_writer(shards),
                           reader=lambda h: read_shard(h.name, door.source), interval=10, clock=lambda: clock[0],
                           sleep=lambda s: clock.__setitem__(0, clock[0] + s))
    finally:
        shards.stop()
        standin.stop()


def test_cli_errors_are_one_line(tmp_path):
    from ensemble.cli import main

    runner = CliRunner()
    result = runner.invoke(main, ["frontdoor", "refresh", "--secrets", str(tmp_path / "none.json")])
    assert result.exit_code == 2 and "--secrets: no such file" in result.output
    (tmp_path / "s.json").write_text(json.dumps({"fleet": {}}))
    result = runner.invoke(main, ["frontdoor", "refresh", "--secrets", str(tmp_path / "s.json")])
    assert result.exit_code == 2 and "fleet.occupancy_token" in result.output
    result = runner.invoke(main, ["status", "--state", str(tmp_path / "missing.json")])
    assert result.exit_code == 2 and "--state: no such file" in result.output  # a bad argument: exit 2
    state = tmp_path / "state.json"
    plan, _ = select([ok("s1", 4, [LiveRoom("a", 4)])], Memory(), 0.0, P)
    from ensemble.frontdoor.selection import plan_to_json

    state.write_text(json.dumps({"plan": plan_to_json(plan), "refreshed_at": 1.0}))
    result = runner.invoke(main, ["status", "--state", str(state), "--json"])
    assert result.exit_code == 0 and json.loads(result.output)["shards"][0]["pinned_rooms"] == ["a"]


def test_shard_certificates_verified_only_when_publicly_trusted():
    from ensemble.frontdoor.render import shard_certificates_trusted
    from ensemble.spec import spec_from_dict

    assert shard_certificates_trusted(spec_from_dict({}))  # Let's Encrypt production
    assert not shard_certificates_trusted(spec_from_dict({"tls": {"mode": "self-signed"}}))
    assert not shard_certificates_trusted(spec_from_dict({"tls": {"staging": True}}))
    assert not shard_certificates_trusted(spec_from_dict({"tls": {"acme_directory": "https://127.0.0.1:14000/dir"}}))


@pytest.mark.needs_tool("nginx")
def test_rolling_upgrade_one_shard_at_a_time(tmp_path):
    from ensemble.frontdoor.drain import rolling_upgrade

    spec = make_spec()
    names = spec.shard_names()[:2]
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", names, standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN)  # for its OccupancySource only
    hosts = [Host(n, "shard", i, "127.0.0.1") for i, n in enumerate(names, 1)]
    steps: list[str] = []
    clock = [0.0]
    fail_check = [""]

    def state(name: str) -> bool:
        return json.loads(shards.state_file(name).read_text())["drain"]

    def redeploy(host: Host) -> list[str]:
        assert state(host.name) and all(not state(h.name) for h in hosts if h is not host and
                                        shards.state_file(h.name).exists())  # only this one is drained
        steps.append(f"deploy {host.name}")
        return []

    def check(host: Host) -> list[str]:
        steps.append(f"check {host.name}")
        return ["config.js: answered without the domain"] if fail_check[0] == host.name else []

    def sleep(seconds: float) -> None:
        clock[0] += seconds
        standin.set_rooms(names[0], {})  # shard 1's meeting ends while it drains

    common = {"timeout": 300, "redeploy": redeploy, "check": check, "writer": drain_writer(shards),
              "reader": lambda h: read_shard(h.name, door.source), "interval": 10, "clock": lambda: clock[0],
              "sleep": sleep}
    try:
        standin.set_rooms(names[0], {"meeting": 3})
        done = rolling_upgrade(spec, hosts, **common)
        assert [d["shard"] for d in done] == names
        assert steps == [f"deploy {names[0]}", f"check {names[0]}", f"deploy {names[1]}", f"check {names[1]}"]
        assert not state(names[0]) and not state(names[1])  # both back in service
        steps.clear()
        fail_check[0] = names[0]
        with pytest.raises(EnsembleError, match=f"{names[0]} failed its health check .left drained."):
            rolling_upgrade(spec, hosts, **common)
        assert state(names[0]) and not state(names[1]) and steps == [f"deploy {names[0]}", f"check {names[0]}"]
    finally:
        shards.stop()
        standin.stop()
