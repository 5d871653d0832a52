"""Selection: from shard readings to routing decisions (pins, weights, states). Pure and deterministic.

Inputs are what the refresher read (`ShardReading`), what it remembers (`Memory`: flap damping,
last pins of shards it cannot read, recently routed new rooms) and the time. Output is a
`RoutingPlan` (what the nginx maps say) and the next `Memory`. Same inputs, same plan: two front
doors that read the same shards write the same maps.

Rules:
- state: ``unhealthy`` when unreadable/unhealthy or still damped after a failure (it must answer
  ``ready_after`` times in a row), ``draining`` when its drain flag is set, else ``ready``.
- pins: every live room of a readable shard; an unreadable shard keeps its last pins for
  ``grace_period`` seconds; a room routed as new but not yet in any census stays pinned for
  ``recent_ttl`` seconds; a room seen on two shards goes where it has more participants.
- weights: ready shards only. A shard's used fraction is ``max((participants + pending) / capacity,
  JVB stress)``, where pending counts the people still expected: rooms routed but not yet in its
  census (at the fleet's settled room size), rooms younger than ``growth_window`` up to their
  expected final size (people join over a meeting's first minutes; `final_size_estimate`: Bayes
  over the settled rooms' sizes, given how many joined how fast), and ``headroom`` standard
  deviations of a new room's size (at most ``margin`` of its capacity: small shards, where one big
  meeting weighs most, stay a little emptier). New rooms fill shards up to a water level, the
  fleet's used fraction + ``margin`` (0.05): weight = ``capacity * (level - used)``, so the
  emptiest shards get the most and shards above the level none (``margin`` >= 1 is plain
  "proportional to free capacity"; the day simulation in bench/placement.py balances markedly
  better with a low margin, the size estimate and the headroom). The room is quantised in
  steps of 5 % so small changes do not move new rooms; in 0.01 % units summing to 10000 (nginx
  split_clients' precision). If every ready shard is full, new rooms spread by capacity.
- unconfirmed routes (routed as new, in no census yet) are what anyone can create by requesting
  names, so their effect is bounded: one client (an IPv4 address, an IPv6 /64) counts as pending
  for its ``unconfirmed_per_client`` newest rooms only, all of them together add at most
  ``unconfirmed_share`` of a shard's capacity to its used fraction, and at most
  ``max_unconfirmed_pins`` of them are pinned (the newest). A room confirmed by a census counts in
  full. nginx limits how many new rooms a client may open per minute (limit_req, see render.py).

Example::

    plan, memory = select([ShardReading("s1", ok=True, participants=10)], Memory(), now=100.0,
                          params=SelectionParams(capacity=200))
    plan.split        # [("s1", 10000)]
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

STATES = ("ready", "draining", "unhealthy")
AGE_STEP = 5.0  # seconds: young rooms' ages in these steps when their final sizes are estimated


@dataclass(frozen=True)
class LiveRoom:
    """A room of a shard's census, by routing key (see rooms.key_from_census)."""

    key: str
    participants: int = 0
    created: float = 0.0


@dataclass(frozen=True)
class ShardReading:
    """One read of one shard's census, JVB stats, health and drain state.

    Example::

        ShardReading("demo-1.meet.example.org", ok=True, participants=12, conferences=3,
                     rooms=(LiveRoom("myroom", 4),))
    """

    name: str
    ok: bool
    error: str = ""
    healthy: bool = True
    drain: bool = False
    conferences: int = 0
    participants: int = 0
    stress: float = 0.0
    capacity: int | None = None
    rooms: tuple[LiveRoom, ...] = ()


@dataclass(frozen=True)
class SelectionParams:
    """Tunables of selection (from spec.frontdoor).

    Example::

        SelectionParams(capacity=200, grace_period=120, ready_after=3, recent_ttl=300)
    """

    capacity: int = 200
    grace_period: float = 120.0
    ready_after: int = 3
    recent_ttl: float = 300.0
    quantum: float = 0.05
    margin: float = 0.05
    growth_window: float = 600.0
    size_prior: bool = True  # young rooms' final sizes from how fast people joined them (final_size_estimate)
    headroom: float = 1.0  # standard deviations of a new room's size kept free on every shard (at most margin)
    unconfirmed_per_client: int = 3  # newest routed-not-joined rooms of one client counted as pending
    unconfirmed_share: float = 0.05  # at most this much of a shard's capacity pending from unconfirmed routes
    max_unconfirmed_pins: int = 5000  # routed-not-joined rooms pinned (the newest): bounds the maps


@dataclass(frozen=True)
class ShardMemory:
    """What the refresher remembers of a shard between runs (derived data, safe to lose)."""

    last_ok: float | None = None
    streak: int = 0  # consecutive good reads
    damped: bool = False  # failed since it was last ready: must reach ready_after good reads
    pins: tuple[str, ...] = ()  # room keys of the last good read


@dataclass(frozen=True)
class Memory:
    """The refresher's memory of the fleet: per-shard damping and pins, recently routed rooms."""

    shards: dict[str, ShardMemory] = field(default_factory=dict)
    # room key -> (shard, routed at, client): rooms routed as new, not (yet) in any census
    recent: dict[str, tuple[str, float, str]] = field(default_factory=dict)


@dataclass(frozen=True)
class ShardDecision:
    """One shard's line of `ensemble status`."""

    name: str
    state: str
    reason: str
    conferences: int
    participants: int
    stress: float
    capacity: int
    weight: int  # 0.01 % units of new rooms
    pinned: int
    used: float = 0.0  # used fraction the weights saw: participants + pending, or stress (ready shards)


@dataclass(frozen=True)
class RoutingPlan:
    """What the maps say: pins (room key -> shard) and split (shard, 0.01 % units), in a stable order."""

    shards: tuple[ShardDecision, ...]
    pins: dict[str, str]
    split: list[tuple[str, int]]


# ---------------------------------------------------------------- facts

def is_good(reading: ShardReading) -> bool:
    """A read that counts as a success for damping: answered and healthy."""
    return reading.ok and reading.healthy


def next_shard_memory(reading: ShardReading, before: ShardMemory | None, now: float,
                      params: SelectionParams) -> ShardMemory:
    """Damping bookkeeping after one read. A shard never seen failing is ready on its first good read.

    Example::

        next_shard_memory(ShardReading("s", ok=False), None, 10.0, SelectionParams()).damped   # True
    """
    before = before or ShardMemory()
    if not is_good(reading):
        pins = tuple(sorted(r.key for r in reading.rooms)) if reading.ok else before.pins
        last_ok = now if reading.ok else before.last_ok
        return ShardMemory(last_ok=last_ok, streak=0, damped=True, pins=pins)
    streak = before.streak + 1
    damped = before.damped and streak < params.ready_after
    return ShardMemory(last_ok=now, streak=streak, damped=damped, pins=tuple(sorted(r.key for r in reading.rooms)))


def shard_state(reading: ShardReading, memory: ShardMemory) -> tuple[str, str]:
    """(state, reason) of a shard after this read.

    Example::

        shard_state(ShardReading("s", ok=True, drain=True), ShardMemory())   # ("draining", "drain flag set")
    """
    if not reading.ok:
        return "unhealthy", reading.error or "unreadable"
    if not reading.healthy:
        return "unhealthy", reading.error or "health check failed"
    if memory.damped:
        return "unhealthy", f"recovering ({memory.streak} good reads)"
    if reading.drain:
        return "draining", "drain flag set"
    return "ready", ""


def used_fraction(reading: ShardReading, capacity: int, pending: float = 0.0) -> float:
    """How full a shard is: participants (plus `pending` expected ones) over capacity, or its JVB
    stress if higher.

    Example::

        used_fraction(ShardReading("s", ok=True, participants=50, stress=0.1), 200)   # 0.25
    """
    return max((reading.participants + pending) / capacity, reading.stress, 0.0)


def settled_room_size(readings: list[ShardReading], now: float, growth_window: float) -> float:
    """The average participants of rooms older than `growth_window` (people have joined by then);
    the average of all rooms when none is that old yet; 1 with no room at all.

    Example::

        settled_room_size([ShardReading("s", ok=True, rooms=(LiveRoom("a", 6, 0.0), LiveRoom("b", 1, 990.0)))],
                          now=1000.0, growth_window=600.0)   # 6.0
    """
    rooms = [room for r in readings if r.ok for room in r.rooms]
    settled = [room.participants for room in rooms if room.created and now - room.created >= growth_window]
    sizes = settled or [room.participants for room in rooms]
    return max(1.0, sum(sizes) / len(sizes)) if sizes else 1.0


def size_prior(readings: list[ShardReading], now: float, growth_window: float) -> tuple[tuple[int, int], ...]:
    """How many people the fleet's settled rooms (older than `growth_window`) hold: ((participants,
    rooms), ...) by size, the prior of a young room's final size. Empty when no room is settled.

    Example::

        size_prior([ShardReading("s", ok=True, rooms=(LiveRoom("a", 6, 1.0), LiveRoom("b", 6, 10.0),
                                                      LiveRoom("c", 2, 20.0), LiveRoom("d", 1, 990.0)))],
                   now=1000.0, growth_window=600.0)    # ((2, 1), (6, 2))
    """
    counts: dict[int, int] = {}
    for reading in readings:
        if reading.ok:
            for room in reading.rooms:
                if room.created and now - room.created >= growth_window and room.participants > 0:
                    counts[room.participants] = counts.get(room.participants, 0) + 1
    return tuple(sorted(counts.items()))


def size_spread(prior: tuple[tuple[int, int], ...]) -> float:
    """The standard deviation of the settled rooms' sizes (0 without any): how far a new room's size
    may fall from the average.

    Example::

        size_spread(((2, 1), (6, 1)))     # 2.0
    """
    rooms = sum(count for _, count in prior)
    if not rooms:
        return 0.0
    mean = sum(size * count for size, count in prior) / rooms
    return math.sqrt(max(0.0, sum(size * size * count for size, count in prior) / rooms - mean * mean))


def final_size_estimate(joined: int, age: float, growth_window: float, prior: tuple[tuple[int, int], ...],
                        room_size: float) -> float:
    """A young room's expected final size, given `joined` people `age` seconds after its first join.

    Model: a room's final size S follows the fleet's settled rooms (`prior`); after its first person,
    each of the other S - 1 has joined by age a with probability f = a / growth_window (joins spread
    over the window). Bayes: P(S = s | joined n) ~ prior(s) * C(s-1, n-1) f^(n-1) (1-f)^(s-n), s >= n.
    A room where people arrive fast is expected to be big, one that stays at 1 small; a room older
    than the window is as big as it is. Without a prior (nothing settled yet): max(joined, room_size).

    Example::

        prior = ((2, 50), (20, 10))
        final_size_estimate(1, 0.0, 600.0, prior, 5.0)      # 5.0: the prior's mean
        final_size_estimate(6, 60.0, 600.0, prior, 5.0)     # 20.0: 6 people in a minute
    """
    if age >= growth_window or joined <= 0:
        return float(max(joined, 0))
    if not prior:
        return max(float(joined), room_size)
    log_stay = math.log(1.0 - max(age, 0.0) / growth_window)  # chance one person has not joined yet
    logs = [(size, math.log(rooms) + math.lgamma(size) - math.lgamma(size - joined + 1) + (size - joined) * log_stay)
            for size, rooms in prior if size >= joined]
    if not logs:
        return float(joined)  # bigger than every settled room: it is its own best guess
    top = max(value for _, value in logs)
    weights = [(size, math.exp(value - top)) for size, value in logs]
    return sum(size * w for size, w in weights) / sum(w for _, w in weights)


def growth_expected(reading: ShardReading, now: float, growth_window: float, room_size: float,
                    prior: tuple[tuple[int, int], ...] = (), memo: dict[tuple[int, int], float] | None = None) -> float:
    """Participants still expected in a shard's young rooms (younger than `growth_window`; rooms fill
    up over their first minutes): each is expected to reach `final_size_estimate` (with no prior:
    `room_size`). Ages count in steps of AGE_STEP seconds, so rooms share estimates (`memo`, one per
    prior).

    Example::

        growth_expected(ShardReading("s", ok=True, rooms=(LiveRoom("a", 1, 990.0),)), 1000.0, 600.0, 5.0)   # 4.0
    """
    memo = {} if memo is None else memo
    total = 0.0
    for room in reading.rooms:
        if room.created and now - room.created < growth_window:
            slot = (room.participants, int((now - room.created) // AGE_STEP))
            if slot not in memo:
                memo[slot] = final_size_estimate(slot[0], slot[1] * AGE_STEP, growth_window, prior, room_size)
            total += max(0.0, memo[slot] - room.participants)
    return total


def fill_weights(used: list[tuple[str, float, int]], margin: float, quantum: float) -> list[tuple[str, float]]:
    """Weights of ready shards (name, used fraction, capacity): capacity * room below a water level.

    The level is the fleet's utilisation plus `margin` (at most 1): shards above it get no new
    rooms until the others catch up; margin >= 1 gives "proportional to free capacity". The room
    is quantised down to steps of `quantum` so small changes do not move new rooms.

    Example::

        fill_weights([("a", 0.5, 100), ("b", 0.1, 100)], margin=0.1, quantum=0.05)   # [("a", 0.0), ("b", 40.0)]
    """
    total = sum(cap for _, _, cap in used)
    if not total:
        return []
    level = min(1.0, sum(u * cap for _, u, cap in used) / total + margin)
    return [(name, math.floor(max(0.0, level - u) / quantum + 1e-9) * quantum * cap) for name, u, cap in used]


def to_units(weights: list[tuple[str, float]], total_units: int = 10000) -> list[tuple[str, int]]:
    """Weights -> integer units summing to total_units (largest remainder); zero-unit shards dropped.

    Example::

        to_units([("a", 1.0), ("b", 2.0)])    # [("a", 3333), ("b", 6667)]
    """
    total = sum(w for _, w in weights)
    if total <= 0:
        return []
    exact = [(name, w * total_units / total) for name, w in weights]
    units = {name: math.floor(x) for name, x in exact}
    left = total_units - sum(units.values())
    by_remainder = sorted(exact, key=lambda item: (-(item[1] - math.floor(item[1])), item[0]))
    for name, _ in by_remainder[:left]:
        units[name] += 1
    return [(name, units[name]) for name, _ in weights if units[name] > 0]


def merge_pins(candidates: list[tuple[str, str, int, float]]) -> dict[str, str]:
    """(key, shard, participants, created) -> key: shard; a room on two shards goes to the fuller one.

    Example::

        merge_pins([("r", "s2", 1, 5.0), ("r", "s1", 3, 9.0)])   # {"r": "s1"}
    """
    best: dict[str, tuple[int, float, str]] = {}
    for key, shard, participants, created in candidates:
        rank = (-participants, created, shard)
        if key not in best or rank < best[key]:
            best[key] = rank
    return {key: best[key][2] for key in sorted(best)}


# ---------------------------------------------------------------- the selection

def route_client(route: tuple) -> str:
    """The client of a route (time, key, shard[, client]); "" when unknown.

    Example::

        route_client((1.0, "a", "s1", "192.0.2.7")), route_client((1.0, "a", "s1"))   # ("192.0.2.7", "")
    """
    return str(route[3]) if len(route) > 3 else ""


def bound_unconfirmed(recent: dict[str, tuple[str, float, str]], params: SelectionParams,
                      capacity: dict[str, int], room_size: float) -> tuple[dict[str, tuple[str, float, str]],
                                                                         dict[str, float]]:
    """Unconfirmed routes -> (the ones kept as pins, pending participants per shard), both bounded:
    the newest `max_unconfirmed_pins` are kept; a client's newest `unconfirmed_per_client` count
    `room_size` each (an unknown client "" is not grouped), at most `unconfirmed_share` x capacity
    per shard.

    Example::

        bound_unconfirmed({f"r{i}": ("s1", float(i), "198.51.100.9") for i in range(1000)},
                          SelectionParams(capacity=100), {"s1": 100}, 2.0)[1]     # {"s1": 5.0}: 3 x 2, capped at 5
    """
    newest = sorted(recent.items(), key=lambda item: (-item[1][1], item[0]))[:max(0, params.max_unconfirmed_pins)]
    kept = dict(sorted(newest))
    per_client: dict[str, int] = {}
    pending: dict[str, float] = {}
    for _, (shard, _, client) in newest:
        if client:
            per_client[client] = per_client.get(client, 0) + 1
            if per_client[client] > params.unconfirmed_per_client:
                continue
        pending[shard] = pending.get(shard, 0.0) + room_size
    caps = {shard: params.unconfirmed_share * capacity.get(shard, params.capacity) for shard in pending}
    return kept, {shard: min(value, caps[shard]) for shard, value in pending.items()}


def select(readings: list[ShardReading], memory: Memory, now: float, params: SelectionParams,
           routed: list[tuple] = ()) -> tuple[RoutingPlan, Memory]:
    """Compute the routing plan and the next memory. `routed`: (time, room key, shard[, client]) of
    new rooms from nginx's route log.

    Example::

        plan, mem = select(readings, Memory(), time.time(), SelectionParams(capacity=200))
    """
    shard_memory: dict[str, ShardMemory] = {}
    candidates: list[tuple[str, str, int, float]] = []
    decisions = []
    alive = set()
    for reading in readings:
        capacity = reading.capacity or params.capacity
        mem = next_shard_memory(reading, memory.shards.get(reading.name), now, params)
        shard_memory[reading.name] = mem
        state, reason = shard_state(reading, mem)
        if reading.ok:
            candidates += [(r.key, reading.name, r.participants, r.created) for r in reading.rooms]
            alive.add(reading.name)
        elif mem.last_ok is not None and now - mem.last_ok <= params.grace_period:
            # unreadable but within grace: keep its last pins (ranked below any readable shard's claim)
            candidates += [(key, reading.name, -1, math.inf) for key in mem.pins]
            alive.add(reading.name)
        decisions.append((reading, state, reason, capacity))
    pins = merge_pins(candidates)
    recent = {key: value for key, value in memory.recent.items() if now - value[1] <= params.recent_ttl}
    for route in routed:
        at, key, shard = route[:3]
        if now - at <= params.recent_ttl and (key not in recent or recent[key][1] < at):
            recent[key] = (shard, at, route_client(route))
    recent = {key: value for key, value in recent.items() if key not in pins and value[0] in alive}
    # rooms still filling up will bring about as many people as the fleet's settled rooms have
    room_size = settled_room_size(readings, now, params.growth_window)
    recent, unconfirmed = bound_unconfirmed(recent, params, {r.name: cap for r, _, _, cap in decisions}, room_size)
    pins.update({key: shard for key, (shard, _, _) in recent.items()})
    prior = size_prior(readings, now, params.growth_window) if params.size_prior else ()
    memo: dict[tuple[int, int], float] = {}
    pending = {r.name: growth_expected(r, now, params.growth_window, room_size, prior, memo)
               for r in readings if r.ok}
    for shard, extra in unconfirmed.items():
        pending[shard] = pending.get(shard, 0.0) + extra
    # every shard keeps `headroom` standard deviations of a new room's size free (at most `margin` of
    # its capacity): the same places are a larger share of a small shard, where one big meeting weighs most
    new_sd = size_spread(prior)
    ready = [(r.name, used_fraction(r, cap, pending.get(r.name, 0.0)
                                    + min(params.headroom * new_sd, params.margin * cap)), cap)
             for r, state, _, cap in decisions if state == "ready"]
    used = {name: round(u, 4) for name, u, _ in ready}
    weights = fill_weights(ready, params.margin, params.quantum)
    if ready and sum(w for _, w in weights) <= 0:
        # every ready shard is full: spread by capacity rather than refuse meetings
        weights = [(name, float(cap)) for name, _, cap in ready]
    pins = dict(sorted(pins.items()))
    split = to_units(weights)
    units = dict(split)
    pinned_count: dict[str, int] = {}
    for shard in pins.values():
        pinned_count[shard] = pinned_count.get(shard, 0) + 1
    shards = tuple(
        ShardDecision(name=r.name, state=state, reason=reason, conferences=r.conferences,
                      participants=r.participants, stress=r.stress, capacity=capacity,
                      weight=units.get(r.name, 0), pinned=pinned_count.get(r.name, 0), used=used.get(r.name, 0.0))
        for r, state, reason, capacity in decisions)
    return RoutingPlan(shards=shards, pins=pins, split=split), replace(memory, shards=shard_memory,
                                                                        recent=dict(sorted(recent.items())))


def pin_routed(plan: RoutingPlan, memory: Memory, routed: list[tuple],
               params: SelectionParams | None = None) -> tuple[RoutingPlan, Memory]:
    """Add rooms routed as new (time, key, shard[, client]) to the pins and the memory, weights
    unchanged, at most `params.max_unconfirmed_pins` unconfirmed pins in all (the newest).

    Example::

        plan, memory = pin_routed(plan, memory, [(1700000000.0, "lateroom", "s2")])
    """
    pins = dict(plan.pins)
    recent = dict(memory.recent)
    for route in routed:
        at, key, shard = route[:3]
        if key not in pins:
            pins[key] = shard
            recent[key] = (shard, at, route_client(route))
    limit = max(0, (params or SelectionParams()).max_unconfirmed_pins)
    for key, _ in sorted(recent.items(), key=lambda item: (-item[1][1], item[0]))[limit:]:
        del recent[key]  # the oldest unconfirmed routes go first
        pins.pop(key, None)
    counts: dict[str, int] = {}
    for shard in pins.values():
        counts[shard] = counts.get(shard, 0) + 1
    shards = tuple(replace(d, pinned=counts.get(d.name, 0)) for d in plan.shards)
    return (RoutingPlan(shards=shards, pins=dict(sorted(pins.items())), split=plan.split),
            replace(memory, recent=dict(sorted(recent.items()))))


# ---------------------------------------------------------------- memory <-> JSON (the state file)

def memory_to_json(memory: Memory) -> dict:
    """Memory as JSON-able data (the refresher's state file)."""
    return {
        "shards": {name: {"last_ok": m.last_ok, "streak": m.streak, "damped": m.damped, "pins": list(m.pins)}
                   for name, m in sorted(memory.shards.items())},
        "recent": {key: list(value) for key, value in sorted(memory.recent.items())},
    }


def memory_from_json(data: dict) -> Memory:
    """Read back memory_to_json's output; anything unreadable gives an empty memory (it is derived data)."""
    try:
        shards = {name: ShardMemory(last_ok=m.get("last_ok"), streak=int(m.get("streak", 0)),
                                    damped=bool(m.get("damped", False)), pins=tuple(m.get("pins", ())))
                  for name, m in data.get("shards", {}).items()}
        recent = {key: (str(v[0]), float(v[1]), str(v[2]) if len(v) > 2 else "")
                  for key, v in data.get("recent", {}).items()}
    except (AttributeError, TypeError, ValueError, IndexError, OverflowError):
        return Memory()
    return Memory(shards=shards, recent=recent)


def plan_to_json(plan: RoutingPlan) -> dict:
    """The plan as JSON for `ensemble status --json` (pins grouped per shard)."""
    rooms: dict[str, list[str]] = {}
    for key, shard in plan.pins.items():
        rooms.setdefault(shard, []).append(key)
    return {"shards": [{**d.__dict__, "pinned_rooms": rooms.get(d.name, [])} for d in plan.shards],
            "split": [[name, units] for name, units in plan.split]}
