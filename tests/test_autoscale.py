"""`ensemble autoscale`: the pure decision (bounds, hysteresis, cooldowns, schedule, a scale down under
way), the round's bookkeeping in its state file, and the spec's [autoscale] section refused when bad.

The real chain (participants join, `autoscale --once` scales up; they leave, it drains and removes;
a participant left on the shard to remove is never cut) is in tests/test_autoscale_realhost.py.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from ensemble.autoscale import (
    AutoscaleMemory,
    ShardLoad,
    autoscale_once,
    decide,
    load_memory,
    memory_from_json,
    save_memory,
    scheduled_minimum,
    shard_loads,
)
from ensemble.errors import EnsembleError, SpecError
from ensemble.providers.base import Host
from ensemble.spec import AutoscaleSection, spec_from_dict

CAP = 100
NAMES = [f"s{n}" for n in range(1, 9)]
TUESDAY_10H = datetime(2026, 11, 24, 10, 0, tzinfo=UTC).timestamp()


def policy(**overrides) -> AutoscaleSection:
    base = {"min_shards": 1, "max_shards": 6, "target_free": 50, "hysteresis": 30, "step": 1,
            "cooldown_up": 300, "cooldown_down": 900}
    return spec_from_dict({"autoscale": {**base, **overrides}}).autoscale


def fleet(*participants: int, states: dict[str, str] | None = None, stress: dict[str, float] | None = None):
    """(loads, names) of a fleet whose shard i holds participants[i]."""
    names = NAMES[:len(participants)]
    loads = {n: ShardLoad(n, (states or {}).get(n, "ready"), p, (stress or {}).get(n, 0.0), CAP)
             for n, p in zip(names, participants, strict=True)}
    return loads, names


def run(pol, loads, names, memory=AutoscaleMemory(), now=TUESDAY_10H, **kw):
    return decide(pol, CAP, loads, names, memory, now, **kw)


# ---------------------------------------------------------------- thresholds and hysteresis

def test_scales_up_when_free_places_fall_below_the_target():
    d = run(policy(), *fleet(60, 45))  # 200 - 105 = 95 free... enough
    assert d.action in ("hold", "down")
    d = run(policy(), *fleet(80, 75))  # 45 free < 50
    assert (d.action, d.target) == ("up", 3)
    assert d.figures["free"] == 45 and d.figures["target_free"] == 50
    assert "45 free place(s) < 50 to keep (target_free 50)" in d.reason


def test_a_big_gap_adds_more_than_one_step():
    d = run(policy(target_free=250), *fleet(90, 90))  # 20 free: 230 missing = 3 shards
    assert (d.action, d.target) == ("up", 5)


def test_step_is_the_least_added():
    d = run(policy(step=3), *fleet(80, 75))
    assert d.target == 5


def test_hysteresis_no_flapping_between_up_and_down():
    pol = policy(target_free=50, hysteresis=30)
    # 3 shards, 300 places. Draining s3 takes its free places away (its people stay on it).
    assert run(pol, *fleet(60, 60, 10)).action == "drain"  # 170 free; without s3's 90: 80 >= 80
    d = run(pol, *fleet(61, 60, 10))  # without s3: 79 < to keep + hysteresis 80
    assert d.action == "hold" and "79 < 80 (to keep + hysteresis 30)" in d.reason
    d = run(pol, *fleet(60, 59, 10))
    assert (d.action, d.target, d.remove) == ("drain", 3, ("s3",)) and d.figures["free_after_drain"] == 81
    # right after the drain the same load is not "too little free" (no up/down loop)
    loads, names = fleet(60, 59, 10, states={"s3": "draining"})
    assert run(pol, loads, names, memory=AutoscaleMemory(draining=("s3",))).action == "hold"


def test_exactly_the_target_is_enough():
    assert run(policy(target_free=50, hysteresis=1000), *fleet(50, 100)).action == "hold"
    assert run(policy(target_free=50, hysteresis=1000), *fleet(51, 100)).action == "up"


def test_a_stressed_bridge_counts_as_full_even_with_few_people():
    d = run(policy(), *fleet(10, 10, stress={"s1": 0.95, "s2": 0.9}))
    assert d.action == "up", d.reason  # 200 - 95 - 90 = 15 free


def test_only_ready_shards_offer_places():
    d = run(policy(), *fleet(10, 0, states={"s2": "draining"}))
    assert d.figures["capacity"] == 100 and d.figures["ready"] == 1
    d = run(policy(), *fleet(60, 0, states={"s2": "unhealthy"}))
    assert d.action == "up"  # 40 free on the one ready shard


def test_no_ready_shard_at_all_is_not_answered_with_more_shards():
    d = run(policy(), *fleet(0, 0, states={"s1": "unhealthy", "s2": "unhealthy"}))
    assert d.action == "hold" and "no shard is ready" in d.reason


def test_never_removes_on_an_incomplete_view():
    loads, names = fleet(0, 0, 0, states={"s2": "unhealthy"})
    d = run(policy(), loads, names)
    assert d.action == "hold" and "unreadable" in d.reason
    loads, names = fleet(0, 0, 0)
    del loads["s3"]  # just created: not in the front door's maps yet
    assert run(policy(), loads, [*names]).action == "hold"


def test_removes_the_highest_numbers_first_by_step():
    d = run(policy(step=2, target_free=10, hysteresis=0), *fleet(5, 5, 5, 5))
    assert (d.action, d.target, d.remove) == ("drain", 4, ("s4", "s3"))
    # once the front door reads them drained and empty, they are removed (highest numbers)
    loads, names = fleet(5, 5, 0, 0, states={"s3": "draining", "s4": "draining"})
    d = run(policy(step=2, target_free=10, hysteresis=0), loads, names, memory=AutoscaleMemory(draining=("s4", "s3")))
    assert (d.action, d.target, d.remove) == ("down", 2, ("s4", "s3"))


# ---------------------------------------------------------------- bounds

def test_bounds_apply_at_once_whatever_the_load_and_cooldown():
    recent = AutoscaleMemory(last_up=TUESDAY_10H - 1, last_down=TUESDAY_10H - 1)
    d = run(policy(min_shards=3), *fleet(0), memory=recent)
    assert (d.action, d.target) == ("up", 3) and "minimum 3" in d.reason
    d = run(policy(max_shards=2), *fleet(99, 99, 0, 1), memory=recent)
    assert (d.action, d.target, d.remove) == ("drain", 4, ("s4", "s3")) and "max_shards 2" in d.reason
    # drained: an empty one goes at once (even while more places are wanted), the busy one is waited for
    loads, names = fleet(99, 99, 1, 0, states={"s3": "draining", "s4": "draining"})
    busy = AutoscaleMemory(last_up=recent.last_up, last_down=recent.last_down, draining=("s3", "s4"))
    d = run(policy(max_shards=2), loads, names, memory=busy)
    assert (d.action, d.target, d.remove) == ("down", 3, ("s4",))
    # places wanted, but the drained shards are above max_shards: never put back in service
    loads, names = fleet(99, 99, 1, states={"s3": "draining"})
    d = run(policy(max_shards=2), loads, names, memory=AutoscaleMemory(draining=("s3",)))
    assert d.action == "hold" and not d.undrain and "max_shards 2" in d.reason


def test_at_max_it_holds_and_says_so():
    d = run(policy(max_shards=2), *fleet(99, 99))
    assert d.action == "hold" and "max_shards 2" in d.reason


def test_never_below_the_minimum():
    d = run(policy(min_shards=2), *fleet(0, 0))
    assert d.action == "hold" and "minimum 2" in d.reason


def test_min_above_max_is_refused_by_the_spec():
    with pytest.raises(SpecError, match="autoscale.min_shards"):
        policy(min_shards=5, max_shards=4)


# ---------------------------------------------------------------- cooldowns

def test_cooldown_up():
    pol = policy(cooldown_up=300)
    loads, names = fleet(90, 90)
    d = run(pol, loads, names, memory=AutoscaleMemory(last_up=TUESDAY_10H - 100))
    assert d.action == "hold" and "200s left" in d.reason
    assert run(pol, loads, names, memory=AutoscaleMemory(last_up=TUESDAY_10H - 300)).action == "up"


def test_cooldown_down_counts_from_any_action():
    pol = policy(cooldown_down=900)
    loads, names = fleet(0, 0, 0)
    for memory in (AutoscaleMemory(last_up=TUESDAY_10H - 600), AutoscaleMemory(last_down=TUESDAY_10H - 600)):
        d = run(pol, loads, names, memory=memory)
        assert d.action == "hold" and "300s left" in d.reason
    assert run(pol, loads, names, memory=AutoscaleMemory(last_up=TUESDAY_10H - 900)).action == "drain"


def test_a_scale_up_is_not_held_by_a_recent_scale_down():
    d = run(policy(), *fleet(90, 90), memory=AutoscaleMemory(last_down=TUESDAY_10H - 1))
    assert d.action == "up"


# ---------------------------------------------------------------- a scale down under way

def test_a_drained_shard_is_removed_once_read_empty_without_cooldown():
    memory = AutoscaleMemory(last_down=TUESDAY_10H - 60, draining=("s3",))
    d = run(policy(), *fleet(10, 10, 3, states={"s3": "draining"}), memory=memory)
    assert d.action == "hold"  # 3 people left on s3: waited for, never cut, and no second drain (cooldown)
    d = run(policy(), *fleet(10, 10, 0, states={"s3": "draining"}), memory=memory)
    assert (d.action, d.target, d.remove) == ("down", 2, ("s3",)) and "empty" in d.reason


def test_only_the_top_of_the_drained_shards_goes_and_an_operator_undrain_wins():
    memory = AutoscaleMemory(draining=("s2", "s3"))
    d = run(policy(), *fleet(10, 0, 4, states={"s2": "draining", "s3": "draining"}), memory=memory)
    assert d.action == "hold"  # s2 is empty but s3 above it is not: the lifecycle removes the highest numbers
    d = run(policy(), *fleet(10, 0, 0, states={"s3": "draining"}), memory=memory)
    assert d.remove == ("s3",)  # s2 read ready: undrained by hand, no longer ours to remove


def test_when_places_are_needed_again_the_drained_shard_comes_back_first():
    memory = AutoscaleMemory(last_down=TUESDAY_10H - 60, draining=("s3",))
    d = run(policy(), *fleet(80, 80, 3, states={"s3": "draining"}), memory=memory)
    assert (d.action, d.target, d.undrain) == ("up", 3, ("s3",))


# ---------------------------------------------------------------- schedule

def test_schedule_raises_the_minimum_in_its_window():
    pol = policy(schedule=["mon-fri 08:00-19:00 4", "sat-sun 10:00-12:00 2"])
    assert scheduled_minimum(pol, TUESDAY_10H) == 4
    assert scheduled_minimum(pol, TUESDAY_10H + 9 * 3600) == 1  # 19:00: the window is over
    saturday_11h = datetime(2026, 11, 28, 11, 0, tzinfo=UTC).timestamp()
    assert scheduled_minimum(pol, saturday_11h) == 2
    d = run(pol, *fleet(0, 0))
    assert (d.action, d.target) == ("up", 4) and "(schedule)" in d.reason


def test_schedule_past_midnight_and_wrapping_days():
    pol = policy(schedule=["fri 22:00-02:00 3", "sun-mon 00:00-24:00 2"])
    friday_23h = datetime(2026, 11, 27, 23, 0, tzinfo=UTC).timestamp()
    saturday_1h = datetime(2026, 11, 28, 1, 0, tzinfo=UTC).timestamp()
    saturday_3h = datetime(2026, 11, 28, 3, 0, tzinfo=UTC).timestamp()
    monday_noon = datetime(2026, 11, 23, 12, 0, tzinfo=UTC).timestamp()
    assert [scheduled_minimum(pol, t) for t in (friday_23h, saturday_1h, saturday_3h, monday_noon)] == [3, 3, 1, 2]


def test_the_schedule_never_exceeds_max_shards():
    d = run(policy(max_shards=3, schedule=["mon-sun 00:00-24:00 9"]), *fleet(0))
    assert (d.action, d.target) == ("up", 3)


@pytest.mark.parametrize("entry, word", [
    ("weekdays 08:00-19:00 4", "schedule entry"),
    ("mon-fry 08:00-19:00 4", "days are"),
    ("mon 25:00-19:00 4", "00:00-24:00"),
    ("mon 08:00-08:00 4", "empty"),
    ("mon 08:00-09:00 0", "1-1000"),
    ("mon 08:00-09:00 4; rm -rf /", "schedule entry"),
])
def test_bad_schedule_entries_are_refused_naming_the_key(entry, word):
    with pytest.raises(SpecError) as err:
        policy(schedule=[entry])
    assert str(err.value).startswith("autoscale.schedule") and word in str(err.value)


# ---------------------------------------------------------------- the view

def test_a_stale_view_is_not_acted_on_but_bounds_still_are():
    loads, names = fleet(99, 99)
    d = run(policy(), loads, names, view_age=500, max_age=105)
    assert d.action == "hold" and "500s old" in d.reason
    assert run(policy(min_shards=3), loads, names, view_age=500, max_age=105).action == "up"


def test_shard_loads_from_the_front_door_state_survive_junk():
    state = {"plan": {"shards": [
        {"name": "a", "state": "ready", "participants": 7, "stress": 0.1, "capacity": 50},
        {"name": "b", "state": "ready", "participants": "many"},
        {"nope": 1}, "junk"]}}
    loads = shard_loads(state, 200)
    assert loads["a"] == ShardLoad("a", "ready", 7, 0.1, 50)
    assert loads["b"].state == "unhealthy"
    assert shard_loads({"plan": "x"}, 200) == {} and shard_loads({}, 200) == {}


# ---------------------------------------------------------------- the state file

def test_state_file_round_trip_mode_0600_and_damage_tolerated(tmp_path):
    path = tmp_path / "state" / "autoscale-t.json"
    assert load_memory(path) == AutoscaleMemory()
    save_memory(path, AutoscaleMemory(1.0, 2.0, ("s3",), ((1.0, 5.0),), 240.0))
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_memory(path) == AutoscaleMemory(1.0, 2.0, ("s3",), ((1.0, 5.0),), 240.0)
    path.write_text("{not json")
    assert load_memory(path) == AutoscaleMemory()
    assert memory_from_json({"last_up": True, "draining": [1, "s2"]}) == AutoscaleMemory(None, None, ("s2",))


# ---------------------------------------------------------------- one round, with the lifecycle replaced

class Fleet:
    """The provider's view of hosts (no cloud): a front door and shards 1..n."""

    name = "fake"
    account = "fake account"

    def __init__(self, count: int) -> None:
        self.count = count

    def list_hosts(self, spec):
        door = Host(name=spec.fleet.domain, role="frontdoor", shard=None, address="192.0.2.1")
        return [door, *(Host(name=spec.shard_name(n), role="shard", shard=n, address=f"192.0.2.{n + 1}")
                        for n in range(1, self.count + 1))]


def round_spec():
    return spec_from_dict({"fleet": {"name": "t-asu", "domain": "t-asu.test", "shards": 1},
                           "frontdoor": {"capacity_per_shard": 10},
                           "autoscale": {"min_shards": 1, "max_shards": 3, "target_free": 3, "hysteresis": 2,
                                         "cooldown_up": 0, "cooldown_down": 0}})


def view_of(spec, *participants, now, states=None):
    return lambda door: {"refreshed_at": now, "plan": {"shards": [
        {"name": spec.shard_name(i + 1), "state": (states or {}).get(i + 1, "ready"), "participants": p,
         "stress": 0.0, "capacity": 10} for i, p in enumerate(participants)]}}


def test_dry_run_changes_nothing(tmp_path):
    spec, now, calls = round_spec(), 1e9, []
    result = autoscale_once(spec, dry_run=True, state_path=tmp_path / "s.json", provider=Fleet(1),
                            view=view_of(spec, 9, now=now), scale=lambda *a, **k: calls.append(a), now=now)
    assert result.decision.action == "up" and result.dry_run and not calls
    assert not (tmp_path / "s.json").exists()


def test_a_round_up_is_timed_then_a_drain_is_waited_for_across_rounds_then_removed(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    spec, now, calls, flags = round_spec(), 1e9, [], []
    state = tmp_path / "s.json"
    result = autoscale_once(spec, state_path=state, provider=Fleet(1), view=view_of(spec, 9, now=now),
                            scale=lambda s, n, **k: calls.append(n), now=now, clock=lambda: now + 240)
    assert calls == [2] and "in 240s" in result.done
    memory = load_memory(state)
    assert (memory.last_up, memory.lead_time, memory.samples) == (now, 240.0, ((now, 9.0),))

    def flag(host, drain):
        flags.append((host.name, drain))

    two = spec.shard_name(2)
    result = autoscale_once(spec, state_path=state, provider=Fleet(2), view=view_of(spec, 0, 1, now=now + 300),
                            scale=lambda s, n, **k: calls.append(n), set_drain=flag, now=now + 300)
    assert (result.decision.action, result.decision.remove) == ("drain", (two,)) and flags == [(two, True)]
    assert calls == [2] and load_memory(state).draining == (two,)  # not waited for: no scale call
    # its participant is still there: waited for (never cut), the round ends at once
    spec2 = replace(spec, autoscale=replace(spec.autoscale, cooldown_down=3600))
    result = autoscale_once(spec2, state_path=state, provider=Fleet(2), now=now + 360, set_drain=flag,
                            view=view_of(spec, 0, 1, now=now + 360, states={2: "draining"}),
                            scale=lambda s, n, **k: calls.append(n))
    assert result.decision.action == "hold" and calls == [2]
    # gone: the next round removes the shard although cooldown_down would hold a new drain
    result = autoscale_once(spec2, state_path=state, provider=Fleet(2), now=now + 420, set_drain=flag,
                            view=view_of(spec, 0, 0, now=now + 420, states={2: "draining"}),
                            scale=lambda s, n, **k: calls.append(n))
    assert calls == [2, 1] and result.decision.action == "down" and not result.error
    assert load_memory(state).draining == () and len(load_memory(state).samples) == 4


def test_a_removal_the_lifecycle_refuses_is_reported_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    spec, now = round_spec(), 1e9
    two = spec.shard_name(2)
    state = tmp_path / "s.json"
    save_memory(state, AutoscaleMemory(draining=(two,)))

    def stuck(s, n, **k):  # someone joined the drained room between the view and the drain-and-wait
        raise EnsembleError(f"drain: timeout after 20s, still in use: {two}: 1 participant(s)")

    result = autoscale_once(spec, state_path=state, provider=Fleet(2), scale=stuck, now=now,
                            view=view_of(spec, 0, 0, now=now, states={2: "draining"}))
    assert result.decision.action == "down" and "nothing was cut" in result.error
    assert load_memory(state).draining == (two,)


def test_when_places_are_needed_the_round_undrains_instead_of_creating(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    spec, now, flags = round_spec(), 1e9, []
    two = spec.shard_name(2)
    state = tmp_path / "s.json"
    save_memory(state, AutoscaleMemory(draining=(two,)))
    result = autoscale_once(spec, state_path=state, provider=Fleet(2), scale=lambda *a, **k: 1 / 0,
                            set_drain=lambda h, d: flags.append((h.name, d)), now=now,
                            view=view_of(spec, 9, 2, now=now, states={2: "draining"}))
    assert result.decision.undrain == (two,) and flags == [(two, False)] and load_memory(state).draining == ()


def test_a_round_while_another_command_holds_the_fleet_lock_is_a_hold(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    spec, now = round_spec(), 1e9
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom ensemble.fleetlock import fleet_lock\n"
         "with fleet_lock('t-asu', 'fake account'):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "ENSEMBLE_LOCK_DIR": str(tmp_path / "locks")})
    try:
        assert holder.stdout.readline().strip() == "held"
        result = autoscale_once(spec, state_path=tmp_path / "s.json", provider=Fleet(1), now=now,
                                view=view_of(spec, 9, now=now), scale=lambda *a, **k: 1 / 0)
        assert result.decision.action == "hold" and "is locked by" in result.decision.reason
        assert not (tmp_path / "s.json").exists()
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- growth

def test_growth_raises_the_places_kept_by_lead_time_plus_interval():
    from ensemble.autoscale import growth_rate

    assert growth_rate([(0, 10), (60, 20), (120, 30)], 120, 900) == pytest.approx(10 / 60)
    assert growth_rate([(0, 30), (60, 20), (120, 10)], 120, 900) == 0.0  # shrinking: target_free only
    assert growth_rate([(0, 10), (30, 90)], 30, 900) == 0.0  # too short to tell
    assert growth_rate([(0, 0), (1000, 500), (1060, 500)], 1060, 900) == 0.0  # the old sample is out of the window
    pol = policy(target_free=50, lead_time=240, interval=60)
    loads, names = fleet(40, 40)  # 120 free: enough when quiet
    assert run(pol, loads, names).action in ("hold", "drain")
    # +20 places a minute for 10 minutes: keep 50 + 20/60 x (240 + 60) = 150 > 120 free
    samples = tuple((TUESDAY_10H - 600 + 60 * k, 80 - 200 + 20 * k) for k in range(10))
    d = run(pol, loads, names, memory=AutoscaleMemory(samples=samples))
    assert d.action == "up" and d.figures["growth_per_min"] == 20 and d.figures["keep_free"] == 150
    # enough shards to still keep 150 once they are ready: 150 - 120 + 20/60 x 240 = 110 places: 2 shards
    assert d.target == 4 and "growth 20.0/min x 300s" in d.reason
    # a measured lead time replaces the policy's
    d = run(pol, loads, names, memory=AutoscaleMemory(samples=samples, lead_time=60.0))
    assert d.figures["lead_time"] == 60 and d.figures["keep_free"] == 90 and d.action != "up"


def test_headroom_per_shard_keeps_room_for_a_big_meeting_on_every_ready_shard():
    pol = policy(target_free=50, headroom_per_shard=20, hysteresis=0)
    d = run(pol, *fleet(60, 60, 60, 60))  # 160 free < 50 + 4 x 20 = 130? no: enough
    assert d.action == "hold" and d.figures["keep_free"] == 130
    d = run(pol, *fleet(70, 70, 70, 70))  # 120 free < 130
    assert d.action == "up" and d.target == 5
    assert d.figures["keep_free"] == 130 and "headroom 20 x 4 shard(s)" in d.reason


def test_the_memory_keeps_a_window_of_samples_and_survives_junk():
    memory = AutoscaleMemory()
    for k in range(400):
        memory = memory.sampled(60.0 * k, k, 900)
    assert len(memory.samples) == 16 and memory.samples[-1] == (60.0 * 399, 399.0)
    assert memory_from_json({"samples": [[1, 2], [1, "x"], "junk", [1, 2, 3], [1e999, 1]], "lead_time": -5}) == \
        AutoscaleMemory(samples=((1.0, 2.0),))


def test_no_front_door_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))

    class Empty:
        name, account = "fake", "fake account"

        def list_hosts(self, spec):
            return []

    with pytest.raises(EnsembleError, match="no front door"):
        autoscale_once(round_spec(), state_path=tmp_path / "s.json", provider=Empty(), view=lambda d: {})


# ---------------------------------------------------------------- the command's hostile input

@pytest.mark.parametrize("toml, key", [
    ('[autoscale]\nmin_shards = 0\n', "autoscale.min_shards"),
    ('[autoscale]\nschedule = ["mon 08:00-09:00 \\u001b[2J"]\n', "autoscale.schedule"),
    ('[autoscale]\ncooldown_up = -1\n', "autoscale.cooldown_up"),
    ('[autoscale]\nturbo = true\n', "autoscale.turbo"),
])
def test_bad_policies_exit_2_with_one_line(tmp_path, toml, key):
    config = tmp_path / "ensemble.toml"
    config.write_text(toml)
    proc = subprocess.run([sys.executable, "-m", "ensemble.cli", "autoscale", "--once", "--dry-run", "-c",
                           str(config)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert key in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


def test_status_watch_and_json_together_is_a_usage_error(tmp_path):
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"plan": {"shards": []}}))
    proc = subprocess.run([sys.executable, "-m", "ensemble.cli", "status", "--watch", "--json", "--state", str(state)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--watch" in proc.stderr


def test_status_watch_redraws_until_interrupted(tmp_path):
    import signal
    import threading
    import time

    state = tmp_path / "state.json"
    state.write_text(json.dumps({"refreshed_at": 1.0, "plan": {"shards": [
        {"name": "s1.example.org", "state": "ready", "reason": "", "conferences": 2, "participants": 9,
         "stress": 0.1, "capacity": 200, "weight": 10000, "pinned": 2}]}}))
    proc = subprocess.Popen([sys.executable, "-m", "ensemble.cli", "status", "--watch", "--interval", "1",
                             "--state", str(state)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()

    def wait_for(check) -> None:  # on what the command printed, not on the clock (imports are slow under load)
        deadline = time.monotonic() + 60
        while not check("".join(seen)) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)

    wait_for(lambda out: "s1.example.org" in out)
    state.write_text(state.read_text().replace('"participants": 9', '"participants": 11'))
    wait_for(lambda out: out.count("every 1s, Ctrl-C to stop") >= 2 and " 11 " in out)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    proc.wait(timeout=30)
    reader.join(timeout=10)
    out = "".join(seen)
    assert proc.returncode in (0, 130), err
    assert "s1.example.org" in out and "ready" in out and "Traceback" not in err
    assert out.count("every 1s, Ctrl-C to stop") >= 2  # redrawn
    assert " 11 " in out  # the redraw read the file again


def test_the_long_running_loop_survives_a_failing_round_but_not_bad_input(tmp_path):
    from ensemble.autoscale import Decision, RoundResult, autoscale_forever
    from ensemble.errors import UsageError

    answers = [EnsembleError("front door t-asu.test: ssh refused"),
               RoundResult(Decision("hold", 1, 1, "enough free places"), dry_run=False)]
    said, done, slept = [], [], []

    def one_round(spec, **kw):
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    autoscale_forever(round_spec(), 30, done.append, progress=said.append, rounds=2, sleep=slept.append,
                      one_round=one_round)
    assert "retrying in 30s" in said[0] and "ssh refused" in said[0]
    assert [r.decision.action for r in done] == ["hold"] and slept == [30]
    with pytest.raises(UsageError):
        autoscale_forever(round_spec(), 30, done.append, rounds=1, one_round=lambda spec, **kw: (_ for _ in ()).throw(
            UsageError("--state-file: x is not a regular file")))


def test_a_state_file_that_is_not_a_regular_file_is_refused(tmp_path):
    from ensemble.errors import UsageError

    with pytest.raises(UsageError, match="not a regular file"):
        load_memory(tmp_path)
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(UsageError, match="not a regular file"):
        load_memory(tmp_path / "link")


# ---------------------------------------------------------------- one autoscaler per fleet, and its systemd unit

def test_a_second_autoscaler_of_the_fleet_is_refused(tmp_path, monkeypatch):
    from ensemble.errors import UsageError

    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    spec, now = round_spec(), 1e9
    holder = subprocess.Popen(  # a long-running `ensemble autoscale` of the same fleet
        [sys.executable, "-c", "import time\nfrom ensemble.fleetlock import fleet_lock\n"
         "with fleet_lock('t-asu.autoscaler', 'fake account'):\n    print('held', flush=True)\n    time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, env={**os.environ, "ENSEMBLE_LOCK_DIR": str(tmp_path / "locks")})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UsageError, match="another autoscaler of fleet 't-asu' runs: .*locked by"):
            autoscale_once(spec, state_path=tmp_path / "s.json", provider=Fleet(1), now=now,
                           view=view_of(spec, 9, now=now), scale=lambda *a, **k: 1 / 0)
        # a dry run changes nothing: it may look while the autoscaler runs
        assert autoscale_once(spec, dry_run=True, state_path=tmp_path / "s.json", provider=Fleet(1), now=now,
                              view=view_of(spec, 9, now=now)).decision.action == "up"
    finally:
        holder.kill()
        holder.wait()


def install_unit(tmp_path, *args: str, folder=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble.cli", "autoscale", *args], capture_output=True, text=True,
                          cwd=folder or tmp_path, timeout=120,
                          env={**os.environ, "XDG_STATE_HOME": str(tmp_path / "state")})


@pytest.mark.needs_tool("systemd-analyze")
def test_install_unit_writes_a_service_and_timer_systemd_accepts_and_a_rerun_changes_nothing(tmp_path):
    folder = tmp_path / 'ops 50%$HOME"q'  # a hostile folder name: quoted, specifiers and variables escaped
    folder.mkdir()
    (folder / "ensemble.toml").write_text('[fleet]\nname = "t-as2u"\ndomain = "t-as2u.test"\n\n'
                                          '[autoscale]\ninterval = 45\n')
    units = tmp_path / "units"
    units.mkdir()
    done = install_unit(tmp_path, "--install-unit", "-c", "ensemble.toml", "--unit-dir", str(units), "--json",
                        folder=folder)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["changed"] == ["ensemble-autoscale-t-as2u.service", "ensemble-autoscale-t-as2u.timer"]
    assert out["enable"] == "systemctl daemon-reload && systemctl enable --now ensemble-autoscale-t-as2u.timer"
    service = (units / "ensemble-autoscale-t-as2u.service").read_text()
    timer = (units / "ensemble-autoscale-t-as2u.timer").read_text()
    assert stat.S_IMODE(os.stat(units / "ensemble-autoscale-t-as2u.service").st_mode) == 0o644
    escaped = str(folder).replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    state = tmp_path / "state" / "ensemble" / "autoscale-t-as2u.json"
    assert f'"autoscale" "--once" "--config" "{escaped}/ensemble.toml" "--state-file" "{state}"' in service
    assert "Type=oneshot" in service and f'"XDG_STATE_HOME={tmp_path / "state"}"' in service
    assert "EnvironmentFile=-/etc/ensemble/autoscale-t-as2u.env" in service
    assert "OnUnitInactiveSec=45s" in timer and "WantedBy=timers.target" in timer
    verify = subprocess.run(["systemd-analyze", "verify", str(units / "ensemble-autoscale-t-as2u.service"),
                             str(units / "ensemble-autoscale-t-as2u.timer")], capture_output=True, text=True,
                            timeout=120)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr
    again = install_unit(tmp_path, "--install-unit", "-c", "ensemble.toml", "--unit-dir", str(units), folder=folder)
    assert again.returncode == 0 and again.stdout.count(": unchanged") == 2, again.stdout + again.stderr


@pytest.mark.parametrize("args, message", [
    (["--install-unit", "--once"], "--install-unit: not with --once or --dry-run"),
    (["--unit-dir", "/tmp"], "--unit-dir: only with --install-unit"),
    (["--install-unit", "--unit-dir", "/nonexistent-units"], "--unit-dir: /nonexistent-units is not a directory"),
])
def test_install_unit_bad_use_exits_2_with_one_line(tmp_path, args, message):
    (tmp_path / "ensemble.toml").write_text('[fleet]\nname = "t-as2u"\ndomain = "t-as2u.test"\n')
    done = install_unit(tmp_path, *args, "-c", "ensemble.toml")
    assert done.returncode == 2 and message in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_unit_word_refuses_what_the_spec_refuses():
    from ensemble.autoscale import systemd_word
    from ensemble.errors import UsageError

    assert systemd_word("/srv/50% ops/a$b.toml", "--config") == '"/srv/50%% ops/a$$b.toml"'
    for bad in ("/a\nb", "/a\x7fb", "/a\u202eb"):  # a line break, DEL, a bidi override
        with pytest.raises(UsageError, match="^--config: must not contain control characters"):
            systemd_word(bad, "--config")
