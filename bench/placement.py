"""A day of meetings on one trace, placed by ensemble and by the peers' strategies (bench/frontdoor.py, 3).

The trace: meetings start through a working day (morning and afternoon peaks), each with a size
(Pareto, 2-40 people) and a duration (20-90 min); its people join over its first minutes, all leave
at its end. Every strategy routes every join of the same trace; the fleet's load at each moment is
the same for all of them, so the ideal (every shard as full as the fleet) is the same too.

Strategies (peers from /work/shared/reference/frontdoor.md, each in its strongest fair form):

- ``ensemble``: the real `select` (refresh every 15 s, census = who has joined) and nginx's
  split_clients model; rooms routed as new are pinned from the route log at the next refresh.
- ``consistent-hash``: 8x8's HAProxy front: consistent hash of the room over a ring weighted by
  capacity, bounded loads (no shard above 150 % of its share of the connections HAProxy holds, in
  real time), a stick table room -> shard whose entries expire 5 minutes after the last join that
  matched them; a later join re-hashes (and may land elsewhere: a split room).
- ``most-free-cpu``: Scaleway Ensemble 2020: every 30 s, the shard with the most free CPU
  (1 - load/capacity) gets every new meeting until the next poll; people then use that shard's link.
- ``round-robin``: new meetings in turn, weighted by capacity (nginx's smooth weighted round robin);
  rooms stay where they started.
- ``least-conferences``: a new meeting goes to the shard with the fewest live conferences per unit of
  capacity, known in real time (HAProxy leastconn with weights); rooms stay where they started.
- ``clairvoyant``: not a front door anyone can build, a yardstick: it knows each meeting's final size
  at its first join and the shards' load in real time, and puts the meeting where the fleet stays
  most even (least (committed + size) / capacity). What it cannot reach, no placement on arrival can.
- ``real-time-blind``: the second yardstick, the same without the sizes: the shards' rooms in real
  time (no refresh delay, no hash), each young room (under 10 minutes) counted at least at the fleet's
  settled room size, the new meeting too; least (load + expected) / capacity. The gap between the
  two yardsticks is what not knowing a meeting's size costs.

Example::

    trace = make_trace(seed=3)
    figures = run_day(trace, Ensemble)        # {"peak_vs_ideal": ..., "split_rooms": 0, ...}
"""

from __future__ import annotations

import bisect
import heapq
import math
import random
from dataclasses import dataclass, field

from ensemble.frontdoor.refresh import selection_params
from ensemble.frontdoor.rooms import murmur2, room_key, split_bounds, split_choice
from ensemble.frontdoor.selection import LiveRoom, Memory, SelectionParams, ShardReading, select
from ensemble.spec import spec_from_dict

SHARDS = 20
CAPACITIES = (200, 300, 400, 600, 800)
STEP = 15.0  # seconds between two refreshes of ensemble's front door (and between two measurements)
DAY = 24 * 3600.0


@dataclass(frozen=True)
class Trace:
    """Joins and leaves of a day, in time order: (time, order, "join"/"leave", room key)."""

    events: tuple[tuple[float, int, str, str], ...]
    sizes: dict[str, int]  # room key -> people who will join (known to the clairvoyant yardstick only)
    meetings: int
    joins: int
    start: float = 0.0
    end: float = DAY


def diurnal(minute: float) -> float:
    """Meetings started per minute over a working day: morning and afternoon peaks, quiet night."""
    hour = minute / 60
    return 0.3 + 9 * math.exp(-((hour - 10) ** 2) / 3) + 7 * math.exp(-((hour - 15) ** 2) / 4)


def poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def make_trace(seed: int = 3, peak_per_minute: float = 24.0, start: float = 0.0, end: float = DAY) -> Trace:
    """Meetings of a day (or of the hours between `start` and `end` seconds), reproducible per seed.

    Example::

        make_trace(3).meetings     # about 9,300
    """
    rng = random.Random(seed)
    events: list[tuple[float, int, str, str]] = []
    sizes: dict[str, int] = {}
    meetings = joins = order = 0
    t = start
    while t < end:
        for _ in range(poisson(rng, diurnal(t / 60) / diurnal(600) * peak_per_minute * STEP / 60)):
            meetings += 1
            key = room_key(f"Meeting{meetings}x{rng.randrange(10**9)}")
            size = min(40, max(2, int(rng.paretovariate(1.6) * 2)))
            duration = rng.uniform(20, 90) * 60
            sizes[key] = size
            for _ in range(size):
                order += 1
                events.append((t + rng.uniform(0, min(600, duration / 3)), order, "join", key))
            order += 1
            events.append((t + duration, order, "leave", key))
            joins += size
        t += STEP
    events.sort()
    return Trace(events=tuple(events), sizes=sizes, meetings=meetings, joins=joins, start=start, end=end)


def frontdoor_params() -> SelectionParams:
    """The tunables the real refresher derives from a default spec (refresh.selection_params): the
    simulation runs the front door as deployed, refreshing every `frontdoor.refresh_interval` (STEP).

    Example::

        frontdoor_params().recent_ttl     # 60.0
    """
    spec = spec_from_dict({"fleet": {"name": "day", "domain": "day.bench.test", "shards": SHARDS}})
    assert spec.frontdoor.refresh_interval == STEP, "the simulation refreshes every STEP seconds"
    return selection_params(spec)


def capacities(names: list[str]) -> dict[str, int]:
    return {n: CAPACITIES[i % len(CAPACITIES)] for i, n in enumerate(names)}


@dataclass
class Fleet:
    """Who is where, in real time: the census a refresh reads, and the counts real-time balancers see."""

    cap: dict[str, int]
    present: dict[str, dict[str, int]] = field(default_factory=dict)  # shard -> room -> participants
    created: dict[str, float] = field(default_factory=dict)
    load: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.present = {n: {} for n in self.cap}
        self.load = dict.fromkeys(self.cap, 0)

    def readings(self) -> list[ShardReading]:
        return [ShardReading(n, ok=True, participants=self.load[n], conferences=len(self.present[n]),
                             capacity=self.cap[n],
                             rooms=tuple(LiveRoom(k, v, self.created[k]) for k, v in self.present[n].items()))
                for n in self.cap]


# ---------------------------------------------------------------- strategies

class Ensemble:
    """ensemble's front door: `select` at every refresh, pins else split_clients, route log -> pins."""

    name = "ensemble"

    def __init__(self, cap: dict[str, int], params: SelectionParams | None = None):
        self.params = params or frontdoor_params()
        self.memory = Memory()
        self.routed: list[tuple[float, str, str]] = []
        self.pins: dict[str, str] = {}
        self.bounds: list[tuple[str, int]] = []

    def refresh(self, t: float, fleet: Fleet) -> None:
        plan, self.memory = select(fleet.readings(), self.memory, t, self.params, self.routed)
        self.routed = []
        self.bounds, self.pins = split_bounds(plan.split), dict(plan.pins)

    def route(self, when: float, key: str, fleet: Fleet) -> str:
        shard = self.pins.get(key)
        if shard is None:
            shard = split_choice(key, self.bounds)
            self.routed.append((when, key, shard))  # nginx's route log; the next refresh pins it
            self.pins[key] = shard
        return shard

    def ended(self, key: str) -> None:
        pass


class Sticky:
    """Peers whose rooms stay where their first join went (a room table, or the shard's own link)."""

    name = "sticky"

    def __init__(self, cap: dict[str, int]):
        self.cap = cap
        self.rooms: dict[str, str] = {}

    def refresh(self, t: float, fleet: Fleet) -> None:
        pass

    def route(self, when: float, key: str, fleet: Fleet) -> str:
        if key not in self.rooms:
            self.rooms[key] = self.place(when, key, fleet)
        return self.rooms[key]

    def place(self, when: float, key: str, fleet: Fleet) -> str:
        raise NotImplementedError

    def ended(self, key: str) -> None:
        self.rooms.pop(key, None)


class MostFreeCpu(Sticky):
    """Scaleway Ensemble 2020: every 30 s the shard with the most free CPU takes every new meeting."""

    name = "most-free-cpu"
    poll = 30.0

    def __init__(self, cap: dict[str, int]):
        super().__init__(cap)
        self.target = min(cap)
        self.polled = -math.inf

    def refresh(self, t: float, fleet: Fleet) -> None:
        if t - self.polled >= self.poll:
            self.polled = t
            self.target = max(self.cap, key=lambda n: (1 - fleet.load[n] / self.cap[n], n))

    def place(self, when: float, key: str, fleet: Fleet) -> str:
        return self.target


class RoundRobin(Sticky):
    """nginx's smooth weighted round robin, weights = capacities."""

    name = "round-robin"

    def __init__(self, cap: dict[str, int]):
        super().__init__(cap)
        self.current = dict.fromkeys(cap, 0)

    def place(self, when: float, key: str, fleet: Fleet) -> str:
        total = sum(self.cap.values())
        for n in self.cap:
            self.current[n] += self.cap[n]
        best = max(self.cap, key=lambda n: (self.current[n], n))
        self.current[best] -= total
        return best


class LeastConferences(Sticky):
    """Fewest live conferences per unit of capacity, in real time (leastconn with weights)."""

    name = "least-conferences"

    def place(self, when: float, key: str, fleet: Fleet) -> str:
        return min(self.cap, key=lambda n: (len(fleet.present[n]) / self.cap[n], n))


class Clairvoyant(Sticky):
    """The yardstick: each meeting's final size known at its first join, the load in real time."""

    name = "clairvoyant"

    def __init__(self, cap: dict[str, int], sizes: dict[str, int] | None = None):
        super().__init__(cap)
        self.sizes = sizes or {}
        self.committed = dict.fromkeys(cap, 0)  # final sizes of the live rooms placed on each shard

    def place(self, when: float, key: str, fleet: Fleet) -> str:
        size = self.sizes.get(key, 1)
        shard = min(self.cap, key=lambda n: ((self.committed[n] + size) / self.cap[n], n))
        self.committed[shard] += size
        return shard

    def ended(self, key: str) -> None:
        shard = self.rooms.pop(key, None)
        if shard:
            self.committed[shard] -= self.sizes.get(key, 1)


class RealTimeBlind(Sticky):
    """The second yardstick: real-time loads and young rooms, sizes unknown (settled room size)."""

    name = "real-time-blind"
    growth_window = 600.0

    def place(self, when: float, key: str, fleet: Fleet) -> str:
        settled = [v for rooms in fleet.present.values() for k, v in rooms.items()
                   if when - fleet.created[k] >= self.growth_window]
        size = max(1.0, sum(settled) / len(settled)) if settled else 1.0

        def expected(n: str) -> float:
            young = sum(max(0.0, size - v) for k, v in fleet.present[n].items()
                        if when - fleet.created[k] < self.growth_window)
            return (fleet.load[n] + young + size) / self.cap[n]

        return min(self.cap, key=lambda n: (expected(n), n))


class ConsistentHash:
    """8x8's HAProxy: consistent hash with bounded loads (150 %) and a 5-minute stick table."""

    name = "consistent-hash"
    balance_factor = 1.5
    stick_expire = 300.0

    def __init__(self, cap: dict[str, int]):
        self.cap = cap
        self.total_cap = sum(cap.values())
        points = sorted((murmur2(f"{n}#{i}".encode()), n) for n in cap for i in range(cap[n] // 4))
        self.ring_hashes = [h for h, _ in points]
        self.ring = [n for _, n in points]
        self.stick: dict[str, tuple[str, float]] = {}

    def refresh(self, t: float, fleet: Fleet) -> None:
        self.stick = {k: v for k, v in self.stick.items() if t - v[1] <= self.stick_expire}

    def route(self, when: float, key: str, fleet: Fleet) -> str:
        entry = self.stick.get(key)
        if entry and when - entry[1] <= self.stick_expire:
            shard = entry[0]
        else:
            shard = self.hash_choice(key, fleet)
        self.stick[key] = (shard, when)  # a matched entry's expiry restarts
        return shard

    def hash_choice(self, key: str, fleet: Fleet) -> str:
        served = sum(fleet.load.values()) + 1
        start = bisect.bisect_left(self.ring_hashes, murmur2(key.encode()))
        for i in range(len(self.ring)):
            shard = self.ring[(start + i) % len(self.ring)]
            if fleet.load[shard] < math.ceil(served * self.balance_factor * self.cap[shard] / self.total_cap):
                return shard
        return self.ring[start % len(self.ring)]

    def ended(self, key: str) -> None:
        pass


STRATEGIES = (Ensemble, ConsistentHash, MostFreeCpu, RoundRobin, LeastConferences)
YARDSTICKS = (Clairvoyant, RealTimeBlind)


# ---------------------------------------------------------------- the day

def run_day(trace: Trace, strategy_class, shards: int = SHARDS, **options) -> dict:
    """Route every join of `trace` with one strategy; figures of load vs the fleet's (the ideal).

    peak_vs_ideal: at the fleet's busiest moment, the fullest shard's load/capacity over the fleet's,
    minus 1. spread_at_peak: the same moment, the shard furthest from the fleet's either way.
    daily_peak_vs_ideal: the highest load/capacity any shard reaches in the day over the fleet's own
    peak, minus 1. busy_peak_vs_ideal: the fullest shard over the fleet at each refresh while the
    fleet is within 90 % of its peak, averaged (the single-moment figures vary a lot from day to
    day). split_rooms: rooms whose people ended up on two shards.
    """
    names = [f"shard-{i + 1}" for i in range(shards)]
    fleet = Fleet(capacities(names))
    if strategy_class is Clairvoyant:
        options = {"sizes": trace.sizes, **options}
    strategy = strategy_class(fleet.cap, **options)
    shards_of: dict[str, set[str]] = {}
    split_rooms: set[str] = set()
    peak_util = dict.fromkeys(names, 0.0)
    ideal_peak, at_peak = 0.0, dict.fromkeys(names, 0.0)
    samples: list[tuple[float, float]] = []  # (fleet's utilisation, fullest shard's) at each refresh
    total_cap = sum(fleet.cap.values())
    events = list(trace.events)
    heapq.heapify(events)
    t = trace.start
    while t < trace.end:
        strategy.refresh(t, fleet)
        utilisation = sum(fleet.load.values()) / total_cap
        if utilisation > ideal_peak:
            ideal_peak, at_peak = utilisation, {n: fleet.load[n] / fleet.cap[n] for n in names}
        for n in names:
            peak_util[n] = max(peak_util[n], fleet.load[n] / fleet.cap[n])
        samples.append((utilisation, max(fleet.load[n] / fleet.cap[n] for n in names)))
        while events and events[0][0] < t + STEP:
            when, _, kind, key = heapq.heappop(events)
            if kind == "leave":
                for shard in shards_of.pop(key, ()):
                    fleet.load[shard] -= fleet.present[shard].pop(key, 0)
                fleet.created.pop(key, None)
                strategy.ended(key)
                continue
            shard = strategy.route(when, key, fleet)
            fleet.created.setdefault(key, when)
            shards_of.setdefault(key, set()).add(shard)
            if len(shards_of[key]) > 1:
                split_rooms.add(key)
            fleet.present[shard][key] = fleet.present[shard].get(key, 0) + 1
            fleet.load[shard] += 1
        t += STEP
    ideal_peak = max(ideal_peak, 1e-9)
    deviation = {n: at_peak[n] / ideal_peak - 1 for n in names}
    busy = [fullest / fleet_util - 1 for fleet_util, fullest in samples if fleet_util >= 0.9 * ideal_peak]
    return {"strategy": strategy.name, "meetings": trace.meetings, "joins": trace.joins,
            "ideal_peak_utilisation": round(ideal_peak, 3),
            "peak_vs_ideal": round(max(deviation.values()), 3),
            "spread_at_peak": round(max(deviation.values(), key=abs), 3),
            "daily_peak_vs_ideal": round(max(peak_util.values()) / ideal_peak - 1, 3),
            "busy_peak_vs_ideal": round(sum(busy) / len(busy), 3),
            "split_rooms": len(split_rooms),
            "at_peak": {n: [fleet.cap[n], round(deviation[n], 3)] for n in names}}


def median(values: list[float]) -> float:
    """The middle value (the lower middle of an even count)."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2]


def compare(seeds: tuple[int, ...] = (3, 4, 5), strategies=STRATEGIES + YARDSTICKS, start: float = 0.0,
            end: float = DAY) -> dict:
    """Every strategy on the same days; per strategy the median over the days of each figure.

    Example::

        compare(seeds=(3,))["ensemble"]["peak_vs_ideal"]
    """
    traces = [make_trace(seed, start=start, end=end) for seed in seeds]
    results: dict[str, dict] = {}
    for strategy_class in strategies:
        runs = [run_day(trace, strategy_class) for trace in traces]
        results[runs[0]["strategy"]] = {
            "peak_vs_ideal": median([r["peak_vs_ideal"] for r in runs]),
            "spread_at_peak": sorted((r["spread_at_peak"] for r in runs), key=abs)[(len(runs) - 1) // 2],
            "daily_peak_vs_ideal": median([r["daily_peak_vs_ideal"] for r in runs]),
            "busy_peak_vs_ideal": median([r["busy_peak_vs_ideal"] for r in runs]),
            "split_rooms": sum(r["split_rooms"] for r in runs),
            "runs": runs}
    return {"seeds": list(seeds), "meetings": traces[0].meetings, "shards": SHARDS,
            "capacities": sorted(set(CAPACITIES)), "strategies": results}
