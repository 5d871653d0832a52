"""`ensemble autoscale`: keep enough free places on the fleet, within bounds, without ever cutting a meeting.

Runs on an ops host that holds the cloud credentials and the fleet's SSH key (the same place as
`ensemble fleet scale`), never on a shard or the front door. Each round:

1. reads the front door's own view (one refresh of its unit over SSH: occupancy per shard),
2. decides with `decide` (pure: the view, the spec's [autoscale] policy, the last actions),
3. acts: up = the lifecycle's scale (parallel create + deploy, back in service as the front door
   reads it); down = the lifecycle's drain-and-wait (a shard goes only once empty: a meeting is
   never cut; after drain_timeout it stays drained and the next round continues),
4. logs the decision with its reason and figures, and keeps the last actions in a small state
   file on the ops host (cooldowns survive restarts and cron).

Free places are counted on ready shards only: a shard's load is the larger of its participants
and its bridge's stress times its capacity, so a stressed bridge with few people counts as full.

Example::

    decision = decide(spec.autoscale, 200, loads, ["demo-1...", "demo-2..."], AutoscaleMemory(), now)
    decision.action, decision.target, decision.reason      # ("up", 3, "42 free places < target_free 100")
    autoscale_once(spec, dry_run=True).decision.as_dict()
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from ensemble.errors import EnsembleError, UsageError
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


@dataclass(frozen=True)
class AutoscaleMemory:
    """The last actions (the ops host's state file): cooldowns and a scale down under way."""

    last_up: float | None = None
    last_down: float | None = None
    draining: tuple[str, ...] = ()  # shards this autoscaler drained to remove them

    def to_json(self) -> dict:
        return {"last_up": self.last_up, "last_down": self.last_down, "draining": list(self.draining)}


@dataclass(frozen=True)
class Decision:
    """What to do and why: action up/down/hold, the shard count before and after, the figures."""

    action: str
    current: int
    target: int
    reason: str
    figures: dict = field(default_factory=dict)
    remove: tuple[str, ...] = ()  # down: the shards drained and removed (highest numbers)
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
    return AutoscaleMemory(last_up=when("last_up"), last_down=when("last_down"), draining=names)


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


def decide(policy: AutoscaleSection, capacity: int, loads: dict[str, ShardLoad], shards: list[str],
           memory: AutoscaleMemory, now: float, view_age: float = 0.0, max_age: float = math.inf) -> Decision:
    """The decision of one round (pure). `shards`: the fleet's shards in number order (the provider's
    hosts); `loads`: the front door's view of them; `view_age`: seconds since that view was read.

    Bounds (min/max, schedule) apply at once; otherwise scale up when fewer than target_free places
    are free on ready shards (by step, or more when the gap needs it; after cooldown_up), scale down
    by step when target_free + hysteresis places would still be free without the highest-numbered
    shards (after cooldown_down since any action). A scale down this autoscaler started (shards it
    drained) continues without cooldown, and is undone first when the fleet needs places again.

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
    draining = tuple(n for n in memory.draining if n in shards)
    figures = {"shards": current, "ready": len(ready), "capacity": total, "used": round(used, 1),
               "free": round(free, 1), "target_free": policy.target_free, "min": floor, "max": policy.max_shards}

    def made(action: str, target: int, reason: str, **extra) -> Decision:
        return Decision(action=action, current=current, target=target, reason=reason, figures=figures, **extra)

    def removal(count: int, why: str) -> Decision:
        doomed = tuple(reversed(shards[current - count:]))
        return made("down", current - count, why, remove=doomed)

    if current < floor:
        return made("up", floor, f"{current} shard(s) < the minimum {floor}"
                    + (" (schedule)" if floor > policy.min_shards else ""))
    if current > policy.max_shards:
        return removal(current - policy.max_shards, f"{current} shard(s) > max_shards {policy.max_shards}")
    if view_age > max_age:
        return made("hold", current, f"the front door's view is {view_age:.0f}s old (more than {max_age:.0f}s): "
                    "not acting on it")
    per_shard = capacity
    if not ready:
        return made("hold", current, "no shard is ready in the front door's view (starting, or a fleet-wide "
                    "problem that more shards would not fix)")
    if free < policy.target_free:
        need = math.ceil((policy.target_free - free) / per_shard) if per_shard > 0 else policy.step
        if draining:  # the fleet needs places again: first take back the shards being drained
            back = draining[:max(need, 1)]
            return made("up", current, f"{free:.0f} free place(s) < target_free {policy.target_free}: "
                        f"stopping the scale down of {', '.join(back)}", undrain=back)
        target = min(policy.max_shards, current + max(policy.step, need))
        if target <= current:
            return made("hold", current, f"{free:.0f} free place(s) < target_free {policy.target_free}, "
                        f"but the fleet is at max_shards {policy.max_shards}")
        if memory.last_up is not None and now - memory.last_up < policy.cooldown_up:
            left = policy.cooldown_up - (now - memory.last_up)
            return made("hold", current, f"{free:.0f} free place(s) < target_free {policy.target_free}, "
                        f"but cooling down after the last scale up ({left:.0f}s left)")
        return made("up", target, f"{free:.0f} free place(s) < target_free {policy.target_free}")
    count = min(policy.step, current - floor)
    if count <= 0:
        return made("hold", current, f"{free:.0f} free place(s) >= target_free {policy.target_free}; "
                    f"at the minimum {floor}")
    doomed = shards[current - count:]
    removed = sum(loads[n].capacity for n in doomed if n in loads and loads[n].state == "ready")
    after = free - removed
    figures["free_after_down"] = round(after, 1)
    keep = policy.target_free + policy.hysteresis
    if after < keep:
        return made("hold", current, f"{free:.0f} free place(s): removing {count} shard(s) would leave "
                    f"{after:.0f} < target_free + hysteresis {keep}")
    if draining:
        return removal(count, f"continuing the scale down: {after:.0f} free place(s) without "
                       f"{', '.join(draining)} >= {keep}")
    if any(loads.get(n) is None or loads[n].state == "unhealthy" for n in shards):
        return made("hold", current, "a shard is unreadable or not yet in the front door's view: "
                    "not removing capacity on an incomplete view")
    last = max((t for t in (memory.last_up, memory.last_down) if t is not None), default=None)
    if last is not None and now - last < policy.cooldown_down:
        left = policy.cooldown_down - (now - last)
        return made("hold", current, f"{after:.0f} free place(s) would stay without {count} shard(s), "
                    f"but cooling down after the last action ({left:.0f}s left)")
    return removal(count, f"{after:.0f} free place(s) would stay without {count} shard(s) "
                   f">= target_free + hysteresis {keep}")


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


def autoscale_once(spec: FleetSpec, *, dry_run: bool = False, state_path: Path | None = None,
                   provider: Provider | None = None, view: ViewReader | None = None,
                   scale: Scaler | None = None, set_drain: DrainSetter | None = None,
                   now: float | None = None, progress: Progress = None) -> RoundResult:
    """One round: read, decide, act (not with dry_run), remember. A scale step that fails (a drain
    that timed out, a deploy that failed) is reported in `error`; nothing is cut, and the next
    round continues from what is there.

    Example::

        autoscale_once(spec, dry_run=True).decision.line()
    """
    provider = provider or provider_for(spec)
    state_path = state_path or default_state_path(spec)
    memory = load_memory(state_path)
    now = time.time() if now is None else now
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
    if dry_run or decision.action == "hold":
        if not dry_run and memory.draining and not set(memory.draining) & set(names):
            save_memory(state_path, AutoscaleMemory(memory.last_up, memory.last_down, ()))
        return result
    by_name = {h.name: h for h in shard_hosts}
    if decision.undrain:
        for name in decision.undrain:
            (set_drain or _set_drain)(by_name[name], False)
        left = tuple(n for n in memory.draining if n not in decision.undrain and n in by_name)
        save_memory(state_path, AutoscaleMemory(now, memory.last_down, left))
        result.done = f"undrained {', '.join(decision.undrain)}"
        return result
    scaler = scale or scale_fleet
    if decision.action == "up":
        save_memory(state_path, AutoscaleMemory(now, memory.last_down, memory.draining))
        try:
            scaler(spec, decision.target, timeout=spec.autoscale.drain_timeout, provider=provider, progress=progress)
        except EnsembleError as exc:
            result.error = str(exc)
            return result
        result.done = f"scaled up to {decision.target} shard(s)"
        return result
    # down: remembered before the drain starts, so an interrupted round is continued, not forgotten
    save_memory(state_path, AutoscaleMemory(memory.last_up, now, decision.remove))
    try:
        # never force: the lifecycle's scale drains and waits until the shards are empty
        scaler(spec, decision.target, timeout=spec.autoscale.drain_timeout, provider=provider, progress=progress)
    except EnsembleError as exc:
        result.error = f"{exc} (nothing was cut; the next round continues the scale down)"
        return result
    save_memory(state_path, AutoscaleMemory(memory.last_up, now, ()))
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
