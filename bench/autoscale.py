#!/usr/bin/env python3
"""Autoscaling on a simulated day of meetings: shard-hours used and peak overload, three fleets.

The same day of meetings as bench/frontdoor.py (its `diurnal` arrival curve, meeting sizes and
durations), shards of `frontdoor.capacity_per_shard` places, each new meeting placed on the ready
shard with the most free places (what the front door's weights aim at). A new shard takes `--boot`
seconds (create + deploy + the front door reading it ready; default 300: Scaleway creates a server
in 1-2 min, a deploy of new shards takes ~90 s here, tests/test_autoscale_realhost.py times a real
scale up round); a drained shard is held (and counted) until its last meeting ends; nobody is cut:

- fixed: as many shards as the day's peak needs (ceil(peak participants / capacity)), all day;
- threshold: the plain autoscaler, every minute, never blocked: +1 shard when the ready shards are
  > 80 % full, -1 (the emptiest drained) when < 40 %;
- ensemble: the real round, `ensemble.autoscale.autoscale_once` (one code path: its decide, its
  state file, its fleet lock), with the hosts, the front door's view and the lifecycle's scale
  simulated (SimulatedFleet): a scale up blocks the loop until its shards are ready, a removal
  takes REMOVE seconds, the next round starts `interval` after one ends. Policy: POLICY below.

Figures: shard-hours (every shard that exists, booting and draining included), peak overload (the
fullest shard's participants / capacity over the day; > 1.0 means over capacity), and the
participant-minutes spent on shards over capacity. Targets: ensemble's shard-hours <= the threshold
autoscaler's (and < fixed's) with a peak overload no higher than the threshold's; exit 1 when missed.

Usage: .venv/bin/python bench/autoscale.py [--json] [--seeds 3] [--boot 300] [--quick]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import os
import random
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble.autoscale import autoscale_once  # noqa: E402
from ensemble.errors import EnsembleError  # noqa: E402
from ensemble.providers.base import Host  # noqa: E402
from ensemble.spec import spec_from_dict  # noqa: E402

CAPACITY = 200
PEAK_PER_MINUTE = 24.0  # meetings starting per minute at the morning peak, as bench/frontdoor.py
STEP = 15.0  # seconds of simulated time per tick
DECIDE_EVERY = 60.0
BOOT = 300.0  # seconds from "create" to ready: Scaleway server + deploy + the front door reading it ready
REMOVE = 60.0  # seconds a removal round takes (destroy + the front door redeployed without the shard)
ROUND = 5.0  # seconds a round without action takes (one refresh of the front door over SSH)
# target_free one shard of places; headroom 30 places per ready shard: room for the big meetings
# (sizes up to 40) wherever they land, as the threshold's 20 % of free places per shard gives
POLICY = {"min_shards": 2, "max_shards": 60, "target_free": CAPACITY, "headroom_per_shard": 30, "hysteresis": 100,
          "step": 1, "cooldown_up": 0, "cooldown_down": 120, "interval": 60, "lead_time": int(BOOT),
          "growth_window": 900}


def diurnal(minute: float) -> float:
    """Meetings started per minute over a working day (bench/frontdoor.py's curve)."""
    hour = minute / 60
    return 0.3 + 9 * math.exp(-((hour - 10) ** 2) / 3) + 7 * math.exp(-((hour - 15) ** 2) / 4)


def poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def day_of_meetings(seed: int) -> list[tuple[float, int, float]]:
    """(start, participants, duration) of every meeting of the day."""
    rng = random.Random(seed)
    meetings, t = [], 0.0
    while t < 24 * 3600:
        for _ in range(poisson(rng, diurnal(t / 60) / diurnal(600) * PEAK_PER_MINUTE * STEP / 60)):
            size = min(40, max(2, int(rng.paretovariate(1.6) * 2)))
            meetings.append((t + rng.uniform(0, STEP), size, rng.uniform(20, 90) * 60))
        t += STEP
    return meetings


@dataclass
class Shard:
    number: int
    name: str
    ready_at: float
    draining: bool = False
    gone_at: float | None = None  # being removed (destroy + the front door redeployed): gone then
    rooms: dict[int, int] = field(default_factory=dict)

    @property
    def participants(self) -> int:
        return sum(self.rooms.values())


class SimulatedFleet:
    """The hosts, the front door's view and the lifecycle's scale, simulated for `autoscale_once`:
    the provider (list_hosts), the view (refresh_now's state), scale (create: ready `boot` seconds
    later, the round blocked meanwhile as the real scale waits for the front door to read them ready;
    remove: only empty shards, as the real drain-and-wait), set_drain, and the clock."""

    name = "simulated"
    account = "simulated"

    def __init__(self, spec, count: int, boot: float) -> None:
        self.spec, self.boot, self.now = spec, boot, 0.0
        self.shards = [Shard(n, spec.shard_name(n), 0.0) for n in range(1, count + 1)]

    def list_hosts(self, spec) -> list[Host]:
        return [Host(name=spec.fleet.domain, role="frontdoor", shard=None, address="192.0.2.1"),
                *(Host(name=s.name, role="shard", shard=s.number, address="192.0.2.2")
                  for s in self.shards if s.gone_at is None)]

    def view(self, door: Host) -> dict:
        def state(s: Shard) -> str:
            return "draining" if s.draining else "ready" if s.ready_at <= self.now else "unhealthy"

        return {"refreshed_at": self.now, "plan": {"shards": [
            {"name": s.name, "state": state(s), "participants": s.participants, "stress": 0.0, "capacity": CAPACITY}
            for s in self.shards if s.gone_at is None]}}

    def scale(self, spec, count: int, **_) -> None:
        live = [s for s in self.shards if s.gone_at is None]
        for n in range(len(live) + 1, count + 1):
            self.shards.append(Shard(n, spec.shard_name(n), self.now + self.boot))
        for s in live[count:]:
            if s.rooms:  # the real drain-and-wait would wait; the decision never asks for it
                raise EnsembleError(f"{s.name} still in use")
            s.gone_at = self.now + REMOVE
        self.now += self.boot if count > len(live) else REMOVE

    def set_drain(self, host: Host, drain: bool) -> None:
        next(s for s in self.shards if s.name == host.name).draining = drain

    def clock(self) -> float:
        return self.now


def simulate(meetings: list[tuple[float, int, float]], strategy: str, fixed: int = 0, boot: float = BOOT) -> dict:
    """One day with one strategy (see the module)."""
    spec = spec_from_dict({"fleet": {"name": "bench", "domain": "bench.test"},
                           "frontdoor": {"capacity_per_shard": CAPACITY},
                           "autoscale": {**POLICY, "lead_time": int(boot)}})
    count = fixed if strategy == "fixed" else POLICY["min_shards"]
    fleet = SimulatedFleet(spec, count, boot)
    made = count
    ends: list[tuple[float, int, str]] = []
    pending = sorted(meetings)
    shard_seconds = over_minutes = 0.0
    peak = 0.0
    t, i, next_decision = 0.0, 0, 0.0
    actions = {"up": 0, "drain": 0, "down": 0, "undrain": 0}
    with tempfile.TemporaryDirectory() as folder:
        os.environ["ENSEMBLE_LOCK_DIR"] = folder  # the round takes the (simulated) fleet's lock
        state = Path(folder) / "autoscale.json"
        while t < 24 * 3600 or ends:
            while ends and ends[0][0] <= t:
                _, room, name = heapq.heappop(ends)
                for s in fleet.shards:
                    if s.name == name:
                        s.rooms.pop(room, None)
            fleet.shards = [s for s in fleet.shards if not (s.gone_at is not None and s.gone_at <= t)
                            and not (strategy == "threshold" and s.draining and not s.rooms)]
            while i < len(pending) and pending[i][0] <= t:
                start, size, duration = pending[i]
                open_ = [s for s in fleet.shards if not s.draining and s.gone_at is None]
                ready = [s for s in open_ if s.ready_at <= t] or open_
                target = min(ready, key=lambda s: (s.participants, s.number))
                target.rooms[i] = size
                heapq.heappush(ends, (start + duration, i, target.name))
                i += 1
            for s in fleet.shards:
                load = s.participants / CAPACITY
                peak = max(peak, load)
                if load > 1:
                    over_minutes += s.participants * STEP / 60
            shard_seconds += len(fleet.shards) * STEP
            if strategy == "threshold" and t >= next_decision and t < 24 * 3600:
                next_decision += DECIDE_EVERY
                live = [s for s in fleet.shards if not s.draining]
                ready = [s for s in live if s.ready_at <= t]
                used = sum(s.participants for s in ready) / (CAPACITY * len(ready)) if ready else 1.0
                if used > 0.8:
                    made += 1
                    fleet.shards.append(Shard(made, f"s{made}", t + boot))
                elif used < 0.4 and len(live) > 1:
                    min(live, key=lambda s: s.participants).draining = True
            elif strategy == "ensemble" and t >= next_decision and t < 24 * 3600:
                fleet.now = t
                result = autoscale_once(spec, state_path=state, provider=fleet, view=fleet.view, scale=fleet.scale,
                                        set_drain=fleet.set_drain, now=t, clock=fleet.clock)
                decision = result.decision
                actions["undrain" if decision.undrain else decision.action] = actions.get(
                    "undrain" if decision.undrain else decision.action, 0) + 1
                # the next round starts `interval` after this one ended (a scale up ends once ready)
                next_decision = max(fleet.now, t + ROUND) + POLICY["interval"]
            t += STEP
    out = {"shard_hours": round(shard_seconds / 3600, 1), "peak_overload": round(peak, 3),
           "participant_minutes_over_capacity": round(over_minutes)}
    if strategy == "ensemble":
        out["actions"] = {k: v for k, v in actions.items() if k != "hold"}
    return out


def figures(seeds: int, boot: float = BOOT) -> dict:
    runs = {"fixed": [], "threshold": [], "ensemble": []}
    for seed in range(3, 3 + seeds):
        meetings = day_of_meetings(seed)
        # the day's peak of simultaneous participants (one ideal shard of places per CAPACITY)
        changes = sorted([(s, n) for s, n, _ in meetings] + [(s + d, -n) for s, n, d in meetings])
        now = peak = 0
        for _, delta in changes:
            now += delta
            peak = max(peak, now)
        fixed = math.ceil(peak / CAPACITY)
        runs["fixed"].append({**simulate(meetings, "fixed", fixed, boot), "shards": fixed})
        runs["threshold"].append(simulate(meetings, "threshold", boot=boot))
        runs["ensemble"].append(simulate(meetings, "ensemble", boot=boot))

    def median(name: str, key: str) -> float:
        values = sorted(r[key] for r in runs[name])
        return values[len(values) // 2]

    summary = {name: {key: median(name, key) for key in ("shard_hours", "peak_overload",
                                                         "participant_minutes_over_capacity")} for name in runs}
    summary["fixed"]["shards"] = median("fixed", "shards")
    return {"seeds": seeds, "capacity": CAPACITY, "boot_seconds": boot, "policy": {**POLICY, "lead_time": boot},
            "median": summary, "runs": runs, "missed_targets": missed_targets(summary),
            "target": "ensemble: shard_hours <= threshold's and < fixed's, peak_overload <= threshold's"}


def missed_targets(summary: dict) -> list[str]:
    """One line per missed target (empty: every target met).

    Example::

        missed_targets({"ensemble": {"shard_hours": 400, "peak_overload": 1.0}, ...})
        # ["shard_hours: ensemble 400 > threshold 366.5"]
    """
    mine, plain, fixed = summary["ensemble"], summary["threshold"], summary["fixed"]
    missed = []
    if mine["shard_hours"] > plain["shard_hours"]:
        missed.append(f"shard_hours: ensemble {mine['shard_hours']} > threshold {plain['shard_hours']}")
    if mine["shard_hours"] >= fixed["shard_hours"]:
        missed.append(f"shard_hours: ensemble {mine['shard_hours']} >= fixed {fixed['shard_hours']}")
    if mine["peak_overload"] > plain["peak_overload"]:
        missed.append(f"peak_overload: ensemble {mine['peak_overload']} > threshold {plain['peak_overload']}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, default=3, help="days simulated (median reported); default 3")
    parser.add_argument("--boot", type=float, default=BOOT, help=f"seconds a scale up takes; default {BOOT:.0f}")
    parser.add_argument("--quick", action="store_true", help="one day only (a smoke run: tests/test_bench.py)")
    args = parser.parse_args()
    if not 1 <= args.seeds <= 50 or not 0 <= args.boot <= 7200:
        parser.error("--seeds must be 1..50 and --boot 0..7200")
    result = figures(1 if args.quick else args.seeds, args.boot)
    m = result["median"]
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"a day of meetings, {CAPACITY} places per shard, new shards ready after {args.boot:.0f}s, "
              f"median of {result['seeds']} day(s):")
        for name in ("fixed", "threshold", "ensemble"):
            f = m[name]
            extra = f" ({f['shards']} shards)" if name == "fixed" else ""
            print(f"  {name:<9} shard-hours {f['shard_hours']:>6}  peak overload {f['peak_overload']:.3f}  "
                  f"participant-minutes over capacity {f['participant_minutes_over_capacity']}{extra}")
        for line in result["missed_targets"]:
            print(f"MISSED {line}")
        print(f"target ({result['target']}): {'MISSED' if result['missed_targets'] else 'met'}")
    return 1 if result["missed_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
