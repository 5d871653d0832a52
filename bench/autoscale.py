#!/usr/bin/env python3
"""Autoscaling on a simulated day of meetings: shard-hours used and peak overload, three fleets.

The same day of meetings as bench/frontdoor.py (its `diurnal` arrival curve, meeting sizes and
durations), shards of `frontdoor.capacity_per_shard` places, each new meeting placed on the ready
shard with the most free places (what the front door's weights aim at). Every 60 s an autoscaler
decides; a new shard takes `boot` seconds (create + deploy) before it is ready; a removed shard is
drained (no new meeting) and goes only once empty (nobody is ever cut, for every strategy):

- fixed: as many shards as the day's peak needs (ceil(peak participants / capacity)), all day;
- threshold: the plain autoscaler: +1 shard when the ready shards are > 80 % full, -1 when < 40 %;
- ensemble: `ensemble.autoscale.decide` with the policy below (target_free = 5 shards of places,
  about the morning ramp's joins during one boot; hysteresis one shard; cooldowns 2 and 10 minutes),
  run like the real loop: a scale up blocks the next decision until its shards are ready.

Figures: shard-hours (every shard that exists, booting and draining included), peak overload (the
fullest shard's participants / capacity over the day; > 1.0 means over capacity), and the
participant-minutes spent on shards over capacity. Target: ensemble uses fewer shard-hours than the
fixed fleet with a peak overload no higher than the fixed fleet's; exit 1 when missed.

Usage: .venv/bin/python bench/autoscale.py [--json] [--seeds 3]
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ensemble.autoscale import AutoscaleMemory, ShardLoad, decide  # noqa: E402
from ensemble.spec import spec_from_dict  # noqa: E402

CAPACITY = 200
PEAK_PER_MINUTE = 24.0  # meetings starting per minute at the morning peak, as bench/frontdoor.py
STEP = 15.0  # seconds of simulated time per tick
DECIDE_EVERY = 60.0
BOOT = 360.0  # seconds from "create" to ready: Scaleway server + deploy (docs/scaleway.md order of magnitude)
POLICY = {"min_shards": 2, "max_shards": 60, "target_free": 5 * CAPACITY, "hysteresis": CAPACITY, "step": 1,
          "cooldown_up": 120, "cooldown_down": 600}  # target_free ~ the morning ramp's joins during one BOOT


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
    name: str
    ready_at: float
    draining: bool = False
    rooms: dict[int, int] = field(default_factory=dict)

    @property
    def participants(self) -> int:
        return sum(self.rooms.values())


def simulate(meetings: list[tuple[float, int, float]], strategy: str, fixed: int = 0) -> dict:
    """One day with one strategy (see the module)."""
    policy = spec_from_dict({"autoscale": POLICY}).autoscale
    count = fixed if strategy == "fixed" else POLICY["min_shards"]
    shards = [Shard(f"s{n}", 0.0) for n in range(1, count + 1)]
    made, memory = count, AutoscaleMemory()
    ends: list[tuple[float, int, str]] = []
    pending = sorted(meetings)
    shard_seconds = over_minutes = 0.0
    peak = 0.0
    t, i, next_decision = 0.0, 0, 0.0
    while t < 24 * 3600 or ends:
        while ends and ends[0][0] <= t:
            _, room, name = heapq.heappop(ends)
            for s in shards:
                if s.name == name:
                    s.rooms.pop(room, None)
        shards = [s for s in shards if not (s.draining and not s.rooms)]
        while i < len(pending) and pending[i][0] <= t:
            start, size, duration = pending[i]
            ready = [s for s in shards if not s.draining and s.ready_at <= t] or [s for s in shards if not s.draining]
            target = min(ready, key=lambda s: (s.participants, s.name))
            target.rooms[i] = size
            heapq.heappush(ends, (start + duration, i, target.name))
            i += 1
        for s in shards:
            load = s.participants / CAPACITY
            peak = max(peak, load)
            if load > 1:
                over_minutes += s.participants * STEP / 60
        shard_seconds += len(shards) * STEP
        if strategy != "fixed" and t >= next_decision and t < 24 * 3600:
            next_decision += DECIDE_EVERY
            live = [s for s in shards if not s.draining]
            ready = [s for s in live if s.ready_at <= t]
            if strategy == "threshold":
                used = sum(s.participants for s in ready) / (CAPACITY * len(ready)) if ready else 1.0
                want = len(live) + (1 if used > 0.8 else -1 if used < 0.4 and len(live) > 1 else 0)
            else:
                loads = {s.name: ShardLoad(s.name, "ready" if s.ready_at <= t else "unhealthy", s.participants, 0.0,
                                           CAPACITY) for s in live}
                names = [s.name for s in live]
                decision = decide(policy, CAPACITY, loads, names, memory, t)
                want = decision.target
                if decision.action == "up":
                    memory = AutoscaleMemory(t, memory.last_down)
                    # the real round waits in the lifecycle's scale until the new shards are ready
                    next_decision = max(next_decision, t + BOOT)
                elif decision.action == "down":
                    memory = AutoscaleMemory(memory.last_up, t)
            while len(live) < want:
                made += 1
                shard = Shard(f"s{made}", t + BOOT)
                shards.append(shard)
                live.append(shard)
            for s in sorted(live, key=lambda s: s.participants)[:max(0, len(live) - want)]:
                s.draining = True
        t += STEP
    return {"shard_hours": round(shard_seconds / 3600, 1), "peak_overload": round(peak, 3),
            "participant_minutes_over_capacity": round(over_minutes)}


def figures(seeds: int) -> dict:
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
        runs["fixed"].append({**simulate(meetings, "fixed", fixed), "shards": fixed})
        runs["threshold"].append(simulate(meetings, "threshold"))
        runs["ensemble"].append(simulate(meetings, "ensemble"))

    def median(name: str, key: str) -> float:
        values = sorted(r[key] for r in runs[name])
        return values[len(values) // 2]

    summary = {name: {key: median(name, key) for key in ("shard_hours", "peak_overload",
                                                         "participant_minutes_over_capacity")} for name in runs}
    summary["fixed"]["shards"] = median("fixed", "shards")
    return {"seeds": seeds, "capacity": CAPACITY, "boot_seconds": BOOT, "policy": POLICY, "median": summary,
            "runs": runs, "target": "ensemble: shard_hours < fixed's, peak_overload <= fixed's"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    result = figures(args.seeds)
    m = result["median"]
    ok = (m["ensemble"]["peak_overload"] <= m["fixed"]["peak_overload"]
          and m["ensemble"]["shard_hours"] < m["fixed"]["shard_hours"])
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(f"a day of meetings, {CAPACITY} places per shard, new shards ready after {BOOT:.0f}s, "
              f"median of {args.seeds} days:")
        for name in ("fixed", "threshold", "ensemble"):
            f = m[name]
            extra = f" ({f['shards']} shards)" if name == "fixed" else ""
            print(f"  {name:<9} shard-hours {f['shard_hours']:>6}  peak overload {f['peak_overload']:.3f}  "
                  f"participant-minutes over capacity {f['participant_minutes_over_capacity']}{extra}")
        print(f"target ({result['target']}): {'met' if ok else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
