"""`ensemble autoscale`: keep enough free places on the fleet, within bounds, without ever cutting a meeting.

Runs on an ops host that holds the cloud credentials and the fleet's SSH key (the same place as
`ensemble fleet scale`), never on a shard or the front door. Each round:

1. reads the front door's own view (one refresh of its unit over SSH: occupancy per shard),
2. decides with `decide` (pure: the view, the spec's [autoscale] policy, the last actions),
3. acts, under the fleet lock (one round at a time, beside any other command changing the fleet):
   up = the lifecycle's scale (parallel create + deploy, back in service as the front door reads
   it) or drained shards put back in service; drain = the drain flag of the highest-numbered
   shards (no new meeting; this round does not wait); down = the lifecycle's scale removing drained
   shards once the front door reads them empty (its drain-and-wait checks again: never a cut),
4. logs the decision with its reason and figures, and keeps the last actions, the places in use at
   recent rounds (the fleet's growth) and the last scale up's duration in a small state file on
   the ops host (cooldowns and growth survive restarts and timers).

bench/autoscale.py runs this very round (autoscale_once with the hosts, the front door's view and
the lifecycle simulated) over a day of meetings.

Free places are counted on ready shards only: a shard's load is the larger of its participants
and its bridge's stress times its capacity, so a stressed bridge with few people counts as full.

Example::

    decision = decide(spec.autoscale, 200, loads, ["demo-1...", "demo-2..."], AutoscaleMemory(), now)
    decision.action, decision.target, decision.reason      # ("up", 3, "42 free place(s) < 100 to keep (...)")
    autoscale_once(spec, dry_run=True).decision.as_dict()
"""

from __future__ import annotations

import contextlib
import getpass
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from ensemble import paths
from ensemble.errors import EnsembleError, UsageError
from ensemble.grammar import text_problem
from ensemble.lifecycle import Progress, provider_for, scale_fleet
from ensemble.providers.base import Host, Provider
from ensemble.spec import AutoscaleSection, FleetSpec, parse_schedule_entry

STALE_AFTER = 3  # refresh intervals (+ 60 s) after which the front door's view is too old to act on


# ---------------------------------------------------------------- facts (pure)

@dataclass(frozen=True)
class ShardLoad:
    """One shard as the front door's last refresh read it."""

    name: str
    state: str  # ready, draining, unhealthy (selection.STATES)
    participants: int = 0
    stress: float = 0.0
    capacity: int = 0

    @property
    def load(self) -> float:
        """Places used: participants, or the bridge's stress in places when that is higher."""
        return max(float(self.participants), self.stress * self.capacity)


MAX_SAMPLES = 256  # growth samples kept in the state file (a round a minute: over 4 hours)


@dataclass(frozen=True)
class AutoscaleMemory:
    """The last actions (the ops host's state file): cooldowns, a scale down under way, the places in
    use at recent rounds (the fleet's growth) and how long the last scale up took (its lead time)."""

    last_up: float | None = None
    last_down: float | None = None
    draining: tuple[str, ...] = ()  # shards this autoscaler drained to remove them
    samples: tuple[tuple[float, float], ...] = ()  # (time, places in use on every shard) of recent rounds
    lead_time: float | None = None  # seconds the last finished scale up took, decision to ready

    def to_json(self) -> dict:
        return {"last_up": self.last_up, "last_down": self.last_down, "draining": list(self.draining),
                "samples": [list(p) for p in self.samples], "lead_time": self.lead_time}

    def sampled(self, now: float, in_use: float, window: float) -> AutoscaleMemory:
        """This memory with the round's places in use added (samples older than `window` dropped).

        Example::

            AutoscaleMemory().sampled(60.0, 12.0, 900).samples     # ((60.0, 12.0),)
        """
        kept = [p for p in self.samples if now - window <= p[0] < now]
        return replace(self, samples=tuple([*kept, (now, float(in_use))][-MAX_SAMPLES:]))


def growth_rate(samples: list[tuple[float, float]] | tuple, now: float, window: float) -> float:
    """Places per second the fleet's use grows by: the least-squares slope of the samples within
    `window` before `now` (0 when shrinking, or with fewer than 2 samples a minute apart).

    Example::

        growth_rate([(0, 10), (60, 20), (120, 30)], 120, 900)     # 0.1666... (10 places a minute)
    """
    points = [(t, u) for t, u in samples if now - window <= t <= now]
    if len(points) < 2 or points[-1][0] - points[0][0] < 60:
        return 0.0
    mean_t = sum(t for t, _ in points) / len(points)
    mean_u = sum(u for _, u in points) / len(points)
    spread = sum((t - mean_t) ** 2 for t, _ in points)
    slope = sum((t - mean_t) * (u - mean_u) for t, u in points) / spread if spread else 0.0
    return max(0.0, slope)


@dataclass(frozen=True)
class Decision:
    """What to do and why: action up/drain/down/hold, the shard count before and after, the figures.

    up: create + deploy to `target` shards, or (with `undrain`) put drained shards back in service;
    drain: set the drain flag of `remove` (no new meeting goes there; live ones go on);
    down: remove `remove`, drained shards the front door reads empty (nothing to cut)."""

    action: str
    current: int
    target: int
    reason: str
    figures: dict = field(default_factory=dict)
    remove: tuple[str, ...] = ()  # drain: the shards to drain (highest numbers); down: the empty ones removed
    undrain: tuple[str, ...] = ()  # up: shards drained by an unfinished scale down, put back in service first

    def as_dict(self) -> dict:
        return {"action": self.action, "current": self.current, "target": self.target, "reason": self.reason,
                "figures": self.figures, "remove": list(self.remove), "undrain": list(self.undrain)}

    def line(self) -> str:
        """The log line: action, count, reason, figures."""
        figures = " ".join(f"{k}={v}" for k, v in self.figures.items())
        count = f"{self.current} -> {self.target}" if self.target != self.current else f"{self.current}"
        return f"autoscale: {self.action} ({count} shard(s)): {self.reason} [{figures}]"


def memory_from_json(data: object) -> AutoscaleMemory:
    """The state file's content; anything damaged counts as no memory (cooldowns restart from now).

    Example::

        memory_from_json({"last_up": 10.0}).last_up      # 10.0
    """
    if not isinstance(data, dict):
        return AutoscaleMemory()

    def when(key: str) -> float | None:
        value = data.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    draining = data.get("draining")
    names = tuple(n for n in draining if isinstance(n, str)) if isinstance(draining, list) else ()
    samples = data.get("samples")
    points = tuple((float(p[0]), float(p[1])) for p in (samples if isinstance(samples, list) else [])
                   if isinstance(p, list) and len(p) == 2
                   and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in p))
    lead = when("lead_time")
    return AutoscaleMemory(last_up=when("last_up"), last_down=when("last_down"), draining=names,
                           samples=points[-MAX_SAMPLES:], lead_time=lead if lead is not None and lead >= 0 else None)


def shard_loads(state: dict, capacity: int) -> dict[str, ShardLoad]:
    """{shard: load} from the front door's state (its last plan); `capacity` when the plan has none.

    Example::

        shard_loads({"plan": {"shards": [{"name": "a", "state": "ready", "participants": 3}]}}, 200)["a"].load  # 3.0
    """
    plan = state.get("plan") if isinstance(state, dict) else None
    rows = plan.get("shards", []) if isinstance(plan, dict) else []
    loads = {}
    for row in rows:
        if not isinstance(row, dict) or not isinstance(row.get("name"), str):
            continue
        try:
            loads[row["name"]] = ShardLoad(name=row["name"], state=str(row.get("state", "unhealthy")),
                                           participants=max(0, int(row.get("participants", 0))),
                                           stress=max(0.0, float(row.get("stress", 0.0))),
                                           capacity=max(0, int(row.get("capacity") or capacity)))
        except (TypeError, ValueError):
            loads[row["name"]] = ShardLoad(name=row["name"], state="unhealthy")
    return loads


def scheduled_minimum(policy: AutoscaleSection, now: float) -> int:
    """min_shards, raised by the schedule entries whose UTC window holds `now`.

    Example::

        # schedule = ["mon-fri 08:00-19:00 4"], on a Tuesday at 10:00 UTC
        scheduled_minimum(policy, tuesday_10h)     # 4
    """
    moment = datetime.fromtimestamp(now, UTC)
    minute, day = moment.hour * 60 + moment.minute, moment.weekday()
    best = policy.min_shards
    for entry in policy.schedule:
        parsed = parse_schedule_entry(entry)
        if isinstance(parsed, str):
            continue
        days, start, end, minimum = parsed
        if start < end:
            inside = day in days and start <= minute < end
        else:  # past midnight: the evening of a listed day, or the morning after it
            inside = (day in days and minute >= start) or ((day - 1) % 7 in days and minute < end)
        if inside:
            best = max(best, minimum)
    return best


def places_in_use(loads: dict[str, ShardLoad], shards: list[str]) -> float:
    """Places used on every shard of the fleet, drained ones included: the fleet's use, whose growth
    decide() measures (ready-only use would drop when a shard is drained, though nobody left).

    Example::

        places_in_use({"a": ShardLoad("a", "draining", 3)}, ["a"])     # 3.0
    """
    return sum(loads[n].load for n in shards if n in loads)


def decide(policy: AutoscaleSection, capacity: int, loads: dict[str, ShardLoad], shards: list[str],
           memory: AutoscaleMemory, now: float, view_age: float = 0.0, max_age: float = math.inf) -> Decision:
    """The decision of one round (pure). `shards`: the fleet's shards in number order (the provider's
    hosts); `loads`: the front door's view of them; `view_age`: seconds since that view was read.

    Free places are kept at `keep` = target_free + headroom_per_shard x ready shards + growth x
    (lead_time + interval): room for a big meeting on whichever shard it lands, plus the fleet's
    growth (places per second over growth_window, from the memory's samples) over the time a scale
    up takes to bring places plus one round, so a ramp is met before it fills the fleet and a quiet
    night keeps little. Bounds (min/max, schedule) apply at once. Below `keep`: drained shards come back
    first (instant places), else scale up by enough shards to hold `keep` once they are ready (at least
    step; after cooldown_up). A drained shard the front door reads empty is removed (nothing to cut).
    Scale down by draining the highest-numbered shards (by step; the lifecycle removes the highest
    numbers) when keep + hysteresis places stay free without them, after cooldown_down since any
    action, never on an incomplete view: the drain waits for their meetings across rounds, never
    blocking a scale up.

    Example::

        decide(policy, 10, {"s1": ShardLoad("s1", "ready", 9, 0.0, 10)}, ["s1"], AutoscaleMemory(), 0.0).action
        # "up" (1 free place < target_free)
    """
    current = len(shards)
    floor = min(scheduled_minimum(policy, now), policy.max_shards)
    ready = [loads[n] for n in shards if n in loads and loads[n].state == "ready"]
    total = sum(s.capacity for s in ready)
    used = sum(s.load for s in ready)
    free = total - used
    # ours to remove: drained by this autoscaler and not read back in service (an operator's undrain wins)
    draining = tuple(n for n in shards if n in memory.draining and (n not in loads or loads[n].state != "ready"))
    in_use = places_in_use(loads, shards)
    growth = growth_rate([*memory.samples, (now, in_use)], now, policy.growth_window)
    lead = memory.lead_time if memory.lead_time is not None else float(policy.lead_time)
    keep = policy.target_free + policy.headroom_per_shard * len(ready) + growth * (lead + policy.interval)
    figures = {"shards": current, "ready": len(ready), "draining": len(draining), "capacity": total,
               "used": round(used, 1), "free": round(free, 1), "growth_per_min": round(growth * 60, 1),
               "lead_time": round(lead), "keep_free": round(keep), "target_free": policy.target_free,
               "min": floor, "max": policy.max_shards}

    def made(action: str, target: int, reason: str, **extra) -> Decision:
        return Decision(action=action, current=current, target=target, reason=reason, figures=figures, **extra)

    if current < floor:
        return made("up", floor, f"{current} shard(s) < the minimum {floor}"
                    + (" (schedule)" if floor > policy.min_shards else ""))
    if current > policy.max_shards:
        extra = tuple(n for n in reversed(shards[policy.max_shards:]) if n not in draining)
        if extra:
            return made("drain", current, f"{current} shard(s) > max_shards {policy.max_shards}: draining "
                        f"{', '.join(extra)} (removed once empty)", remove=extra)
    if view_age > max_age:
        return made("hold", current, f"the front door's view is {view_age:.0f}s old (more than {max_age:.0f}s): "
                    "not acting on it")
    # drained shards the front door reads empty, from the highest number down (the lifecycle removes those)
    empty = []
    for name in reversed(shards):
        load = loads.get(name)
        if name not in draining or load is None or load.state != "draining" or load.load > 0:
            break
        empty.append(name)
    if current > policy.max_shards and empty:
        return made("down", current - len(empty), f"{current} shard(s) > max_shards {policy.max_shards}: "
                    f"removing the drained, empty {', '.join(empty)}", remove=tuple(empty))
    if not ready and not draining:
        return made("hold", current, "no shard is ready in the front door's view (starting, or a fleet-wide "
                    "problem that more shards would not fix)")
    if free < keep:
        gap = keep - free
        why = f"{free:.0f} free place(s) < {keep:.0f} to keep (target_free {policy.target_free}"
        if policy.headroom_per_shard:
            why += f" + headroom {policy.headroom_per_shard} x {len(ready)} shard(s)"
        why += f" + growth {growth * 60:.1f}/min x {lead + policy.interval:.0f}s)" if growth > 0 else ")"
        # instant places: the shards being drained go back in service, lowest numbers first (never
        # those above max_shards)
        allowed = [n for n in draining if shards.index(n) < policy.max_shards]
        if allowed:
            back, found = [], 0.0
            for name in allowed:
                if found >= gap:
                    break
                back.append(name)
                load = loads.get(name)
                found += (load.capacity - load.load) if load is not None else capacity
            return made("up", current, f"{why}: stopping the scale down of {', '.join(back)}", undrain=tuple(back))
        # enough new shards to still hold `keep` when they are ready, the fleet growing meanwhile (each
        # new shard brings its places but raises `keep` by its headroom)
        per_shard = capacity - policy.headroom_per_shard
        need = math.ceil((gap + growth * lead) / per_shard) if per_shard > 0 else policy.step
        target = min(policy.max_shards, current + max(policy.step, need))
        if target <= current:
            return made("hold", current, f"{why}, but the fleet is at max_shards {policy.max_shards}")
        if memory.last_up is not None and now - memory.last_up < policy.cooldown_up:
            left = policy.cooldown_up - (now - memory.last_up)
            return made("hold", current, f"{why}, but cooling down after the last scale up ({left:.0f}s left)")
        return made("up", target, why)
    if empty:
        return made("down", current - len(empty), f"removing the drained, empty {', '.join(empty)} "
                    "(nothing to cut)", remove=tuple(empty))
    live = [n for n in shards if n not in draining]
    count = min(policy.step, len(live) - floor)
    if count <= 0:
        return made("hold", current, f"{free:.0f} free place(s) >= {keep:.0f} to keep; at the minimum {floor}")
    doomed = tuple(reversed(live[len(live) - count:]))
    removed = sum(loads[n].capacity - loads[n].load for n in doomed if n in loads and loads[n].state == "ready")
    after = free - removed
    figures["free_after_drain"] = round(after, 1)
    bar = keep + policy.hysteresis
    if after < bar:
        return made("hold", current, f"{free:.0f} free place(s): draining {count} shard(s) would leave "
                    f"{after:.0f} < {bar:.0f} (to keep + hysteresis {policy.hysteresis})")
    if any(loads.get(n) is None or loads[n].state == "unhealthy" for n in live):
        return made("hold", current, "a shard is unreadable or not yet in the front door's view: "
                    "not removing capacity on an incomplete view")
    last = max((t for t in (memory.last_up, memory.last_down) if t is not None), default=None)
    if last is not None and now - last < policy.cooldown_down:
        left = policy.cooldown_down - (now - last)
        return made("hold", current, f"{after:.0f} free place(s) would stay without {count} shard(s), "
                    f"but cooling down after the last action ({left:.0f}s left)")
    return made("drain", current, f"{after:.0f} free place(s) would stay without {', '.join(doomed)} "
                f">= {bar:.0f} (to keep + hysteresis): draining (removed once empty)", remove=doomed)


# ---------------------------------------------------------------- the state file on the ops host

def default_state_path(spec: FleetSpec) -> Path:
    """$XDG_STATE_HOME/ensemble/autoscale-<fleet>.json (~/.local/state/... by default).

    Example::

        default_state_path(spec)     # PosixPath('/root/.local/state/ensemble/autoscale-demo.json')
    """
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "ensemble" / f"autoscale-{spec.fleet.name}.json"


def load_memory(path: Path) -> AutoscaleMemory:
    """The last actions; a missing file is a fresh start, a non-regular one is refused (exit 2)."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        raise UsageError(f"--state-file: {path} is not a regular file")
    try:
        text = path.read_text(encoding="utf-8")[:65536]
    except FileNotFoundError:
        return AutoscaleMemory()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--state-file: cannot read {path}: {exc}") from None
    try:
        return memory_from_json(json.loads(text))
    except ValueError:
        return AutoscaleMemory()  # derived data: a damaged file only resets the cooldowns


def save_memory(path: Path, memory: AutoscaleMemory) -> None:
    """Replace the state file in one rename (0600: it names the fleet's hosts)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(memory.to_json(), sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


# ---------------------------------------------------------------- actions

ViewReader = Callable[[Host], dict]  # the front door's state after one refresh (frontdoor.control.refresh_now)
Scaler = Callable[..., object]  # lifecycle.scale_fleet
DrainSetter = Callable[[Host, bool], None]


@dataclass
class RoundResult:
    decision: Decision
    dry_run: bool
    done: str = ""  # what was done ("" when nothing, or dry run)
    error: str = ""  # a scale step that did not finish (the next round continues it)

    def as_dict(self) -> dict:
        return {**self.decision.as_dict(), "dry_run": self.dry_run, "done": self.done, "error": self.error,
                "at": datetime.now(UTC).isoformat(timespec="seconds")}


def _view(door: Host) -> dict:
    from ensemble.frontdoor.control import refresh_now

    return refresh_now(door)


def _set_drain(host: Host, drain: bool) -> None:
    from ensemble.frontdoor.drain import set_drain

    set_drain(host, drain)


MEASURED_LEAD = (30.0, 3600.0)  # a timed scale up outside these bounds is clamped (a clock jump, a stuck run)


def autoscale_once(spec: FleetSpec, *, dry_run: bool = False, state_path: Path | None = None,
                   provider: Provider | None = None, view: ViewReader | None = None,
                   scale: Scaler | None = None, set_drain: DrainSetter | None = None,
                   now: float | None = None, clock: Callable[[], float] = time.time,
                   progress: Progress = None) -> RoundResult:
    """One round under the fleet lock: read, decide, act (not with dry_run), remember. A scale step
    that fails (a deploy that failed) is reported in `error`; nothing is cut, and the next round
    continues from what is there. Another command holding the fleet lock makes the round a hold.

    Example::

        autoscale_once(spec, dry_run=True).decision.line()
    """
    provider = provider or provider_for(spec)
    state_path = state_path or default_state_path(spec)
    if dry_run:
        return _round(spec, True, state_path, provider, view, scale, set_drain, now, clock, progress)
    from ensemble.fleetlock import FleetLocked
    from ensemble.lifecycle import locked

    with autoscaler_lock(spec, provider):
        try:
            with locked(spec, provider):
                return _round(spec, False, state_path, provider, view, scale, set_drain, now, clock, progress)
        except FleetLocked as exc:  # a deploy, an upgrade... under way: this round waits for the next
            count = len([h for h in provider.list_hosts(spec) if h.role == "shard"])
            return RoundResult(decision=Decision("hold", count, count, f"not this round: {exc}"), dry_run=False)


@contextlib.contextmanager
def autoscaler_lock(spec: FleetSpec, provider: Provider):
    """One autoscaler per fleet on this ops host: a lock beside the fleet lock (`<fleet>.autoscaler`),
    held by the long-running loop for its whole life and by each --once round; a second autoscaler
    of the same fleet (a loop beside the timer, two timers) is refused with who holds it (exit 2).

    Example::

        with autoscaler_lock(spec, provider):
            ...   # meanwhile `ensemble autoscale --once`: "another autoscaler of fleet 'demo' runs: ..."
    """
    from ensemble.fleetlock import FleetLocked, fleet_lock
    from ensemble.identity import provider_account

    try:
        lock = fleet_lock(f"{spec.fleet.name}.autoscaler", provider_account(provider))
        lock.__enter__()
    except FleetLocked as exc:
        raise UsageError(f"another autoscaler of fleet {spec.fleet.name!r} runs: {exc}") from None
    try:
        yield
    finally:
        lock.__exit__(*sys.exc_info())


def _round(spec: FleetSpec, dry_run: bool, state_path: Path, provider: Provider, view: ViewReader | None,
           scale: Scaler | None, set_drain: DrainSetter | None, now: float | None, clock: Callable[[], float],
           progress: Progress) -> RoundResult:
    memory = load_memory(state_path)
    now = clock() if now is None else now
    hosts = provider.list_hosts(spec)
    door = next((h for h in hosts if h.role == "frontdoor"), None)
    shard_hosts = sorted((h for h in hosts if h.role == "shard"), key=lambda h: h.shard or 0)
    if door is None or not shard_hosts:
        raise EnsembleError(f"autoscale: the fleet {spec.fleet.name!r} has no front door or no shard "
                            "(run `ensemble deploy` first)")
    state = (view or _view)(door)
    refreshed = state.get("refreshed_at") if isinstance(state.get("refreshed_at"), (int, float)) else None
    age = now - refreshed if refreshed else math.inf
    max_age = STALE_AFTER * spec.frontdoor.refresh_interval + 60.0
    loads = shard_loads(state, spec.frontdoor.capacity_per_shard)
    names = [h.name for h in shard_hosts]
    decision = decide(spec.autoscale, spec.frontdoor.capacity_per_shard, loads, names, memory, now, age, max_age)
    result = RoundResult(decision=decision, dry_run=dry_run)
    if dry_run:
        return result
    draining = tuple(n for n in memory.draining if n in names)
    if age <= max_age:  # a stale view is no sample of the fleet's growth
        memory = memory.sampled(now, places_in_use(loads, names), spec.autoscale.growth_window)
    memory = replace(memory, draining=draining)
    by_name = {h.name: h for h in shard_hosts}
    flag = set_drain or _set_drain
    if decision.action == "hold":
        save_memory(state_path, memory)
        return result
    if decision.action == "drain":
        # remembered first: a round stopped half-way still knows which shards it meant to drain
        memory = replace(memory, last_down=now, draining=tuple(n for n in names if n in {*draining, *decision.remove}))
        save_memory(state_path, memory)
        for name in decision.remove:
            flag(by_name[name], True)
        result.done = f"drained {', '.join(decision.remove)} (removed once the front door reads them empty)"
        return result
    if decision.undrain:
        for name in decision.undrain:
            flag(by_name[name], False)
        save_memory(state_path, replace(memory, last_up=now,
                                        draining=tuple(n for n in draining if n not in decision.undrain)))
        result.done = f"undrained {', '.join(decision.undrain)}"
        return result
    scaler = scale or scale_fleet
    if decision.action == "up":
        save_memory(state_path, replace(memory, last_up=now))
        try:
            scaler(spec, decision.target, timeout=spec.autoscale.drain_timeout, provider=provider, progress=progress)
        except EnsembleError as exc:
            result.error = str(exc)
            return result
        took = min(max(clock() - now, MEASURED_LEAD[0]), MEASURED_LEAD[1])
        save_memory(state_path, replace(memory, last_up=now, lead_time=round(took, 1)))
        result.done = f"scaled up to {decision.target} shard(s) in {took:.0f}s"
        return result
    # down: drained shards the front door read empty; the lifecycle's scale still checks each is
    # empty (drain-and-wait, never forced), so a participant who joined meanwhile is waited for
    try:
        scaler(spec, decision.target, timeout=spec.autoscale.drain_timeout, provider=provider, progress=progress)
    except EnsembleError as exc:
        result.error = f"{exc} (nothing was cut; the next round continues the scale down)"
        save_memory(state_path, memory)
        return result
    save_memory(state_path, replace(memory, last_down=now,
                                    draining=tuple(n for n in draining if n not in decision.remove)))
    result.done = f"scaled down to {decision.target} shard(s): removed {', '.join(decision.remove)}"
    return result


def autoscale_forever(spec: FleetSpec, interval: float, round_done: Callable[[RoundResult], None], *,
                      dry_run: bool = False, state_path: Path | None = None, progress: Progress = None,
                      rounds: int | None = None, sleep: Callable[[float], None] = time.sleep,
                      one_round: Callable[..., RoundResult] | None = None) -> None:
    """Rounds every `interval` seconds (after the previous one ends) until interrupted; a failing
    round (SSH, cloud API) is reported through `progress` and tried again at the next interval; bad
    input (UsageError) stops the loop.

    Example::

        autoscale_forever(spec, 60, lambda r: print(r.decision.line()))
    """
    with contextlib.ExitStack() as stack:
        if not dry_run and one_round is None:  # the loop's whole life: no second autoscaler meanwhile
            stack.enter_context(autoscaler_lock(spec, provider_for(spec)))
        _loop(spec, interval, round_done, dry_run, state_path, progress, rounds, sleep, one_round)


def _loop(spec: FleetSpec, interval: float, round_done: Callable[[RoundResult], None], dry_run: bool,
          state_path: Path | None, progress: Progress, rounds: int | None, sleep: Callable[[float], None],
          one_round: Callable[..., RoundResult] | None) -> None:
    done = 0
    while rounds is None or done < rounds:
        try:
            round_done((one_round or autoscale_once)(spec, dry_run=dry_run, state_path=state_path, progress=progress))
        except UsageError:
            raise
        except EnsembleError as exc:
            if progress:
                progress(f"autoscale: this round failed, retrying in {interval:.0f}s: {exc}")
        done += 1
        if rounds is None or done < rounds:
            sleep(interval)


# ---------------------------------------------------------------- the ops host's systemd unit + timer

MAX_UNIT_WORD = 4096  # characters of a path in a unit (PATH_MAX)
UNIT_TIMEOUT = 3600  # seconds a round may take (a scale up: create + deploy + ready) before systemd stops it


def systemd_word(value: str, key: str, *, variables: bool = True) -> str:
    """One word of a unit's ExecStart= (or, variables=False, Environment=), double-quoted for systemd:
    `%` (specifiers) doubled, `$` (ExecStart's variables) doubled, `\\` and `"` escaped; a control
    character (or bidi/format character, as in any spec string) is refused (exit 2, naming `key`).

    Example::

        systemd_word("/srv/50% ops/ensemble.toml", "--config")     # '"/srv/50%% ops/ensemble.toml"'
    """
    problem = text_problem(value, MAX_UNIT_WORD)
    if problem:
        raise UsageError(f"{key}: {problem}; a systemd unit cannot carry it")
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%")
    return f'"{escaped.replace("$", "$$") if variables else escaped}"'


def unit_name(spec: FleetSpec) -> str:
    """ensemble-autoscale-<fleet> (a .service and a .timer). Example: unit_name(spec) -> "ensemble-autoscale-demo"."""
    return f"ensemble-autoscale-{spec.fleet.name}"


def autoscale_units(spec: FleetSpec, spec_path: Path, state_path: Path, interval: int,
                    command: list[str] | None = None) -> dict[str, str]:
    """{file name: text} of the systemd service (one `autoscale --once` round, as this user, in this
    folder, with this spec and state file) and its timer (a round `interval` s after the last one ended: rounds never
    overlap; the fleet lock and the autoscaler lock cover the rest).

    Example::

        autoscale_units(spec, Path("/srv/ops/ensemble.toml"), default_state_path(spec), 60)
        # {"ensemble-autoscale-demo.service": "...", "ensemble-autoscale-demo.timer": "..."}
    """
    from ensemble.templating import render_template

    if command is None:
        script = Path(sys.executable).parent / "ensemble"
        command = [str(script)] if script.is_file() else [sys.executable, "-m", "ensemble.cli"]
    words = [*command, "autoscale", "--once", "--config", str(spec_path), "--state-file", str(state_path)]
    env = {"HOME": str(Path.home()),
           "XDG_STATE_HOME": os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")}
    if os.environ.get("ENSEMBLE_LOCK_DIR"):  # the same lock folder as the commands run by hand
        env["ENSEMBLE_LOCK_DIR"] = os.environ["ENSEMBLE_LOCK_DIR"]
    user = getpass.getuser()
    if not user.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"--install-unit: the user name {user!r} cannot go in a unit's User=")
    # the spec's relative file paths are read from the folder the command runs in: this one
    workdir = str(Path.cwd())
    if "\\" in workdir or text_problem(workdir, MAX_UNIT_WORD):
        raise UsageError(f"--install-unit: the current folder {workdir!r} cannot be a unit's WorkingDirectory= "
                         "(a backslash or control character); run it from another folder")
    context = {
        "fleet": spec.fleet.name, "user": user, "interval": interval, "timeout": UNIT_TIMEOUT,
        "env_file": paths.OPS_AUTOSCALE_ENV.format(fleet=spec.fleet.name),
        "environment": " ".join(systemd_word(f"{k}={v}", k, variables=False) for k, v in env.items()),
        "workdir": workdir.replace("%", "%%"),  # one path to the end of the line: no quotes
        "exec_start": " ".join(systemd_word(w, "--config or --state-file") for w in words),
    }
    name = unit_name(spec)
    return {f"{name}.service": render_template("autoscale/ensemble-autoscale.service.j2", context),
            f"{name}.timer": render_template("autoscale/ensemble-autoscale.timer.j2", context)}


def install_units(units: dict[str, str], unit_dir: Path) -> list[str]:
    """Write the unit files into `unit_dir` (0644, each in one rename); the names that changed
    (none on a second run: idempotent).

    Example::

        install_units(autoscale_units(spec, path, state, 60), Path("/etc/systemd/system"))
    """
    if unit_dir.is_symlink() or not unit_dir.is_dir():
        raise UsageError(f"--unit-dir: {unit_dir} is not a directory")
    changed = []
    for name, text in units.items():
        path = unit_dir / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise UsageError(f"--unit-dir: {path} is not a regular file; not replacing it")
        try:
            if path.exists() and path.read_text(encoding="utf-8") == text:
                continue
            tmp = path.with_name(f".{name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--unit-dir: cannot write {path}: {exc}") from None
        changed.append(name)
    return changed
