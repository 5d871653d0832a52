#!/usr/bin/env python3
"""Front door benchmarks: three figures.

1. redirect throughput: wrk against the generated front door (redirect mode, 10,000 pins, 20 shards)
   vs. a `return 200` server of the same nginx, same machine, both at the same time; target >= 90 %.
2. refresh with 500 shards and 10,000 live rooms: selection + maps rendering, and the whole cycle
   with the maps written, `nginx -t` and a reload of a real nginx; target < 1 s.
3. a day of meetings on 20 shards of different capacities through the real selection and the real
   split_clients model (refresh every 15 s, new rooms pinned from the route log, live rooms from the
   census): each shard's peak load/capacity vs. the fleet's ideal (target within 10 %), split rooms (0).

Usage: .venv/bin/python bench/frontdoor.py [--json] [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from standins.shard_occupancy import NginxInstance, free_port, nginx_main_conf  # noqa: E402

from ensemble.frontdoor.refresh import NginxControl, refresh  # noqa: E402
from ensemble.frontdoor.render import FrontdoorLayout, frontdoor_files, routing_conf, seed_plan  # noqa: E402
from ensemble.frontdoor.rooms import room_key, split_bounds, split_choice  # noqa: E402
from ensemble.frontdoor.selection import (  # noqa: E402
    LiveRoom,
    Memory,
    SelectionParams,
    ShardReading,
    select,
    to_units,
)
from ensemble.spec import spec_from_dict  # noqa: E402

# Room names like real traffic: Jitsi's generated CamelCase names (four capitals) for two thirds,
# lower-case typed names for the rest. ADVERSARIAL: random mixed case, up to 18 letters.
WRK_SCRIPT = """
local rooms = {}
math.randomseed(42)
local words = {"Impossible", "Crimes", "Refuse", "Alright", "Happy", "Whales", "Fly", "High", "Green",
               "Ideas", "Sleep", "Gently", "Brave", "Foxes", "Jump", "Over", "Tiny", "Owls", "Sing", "Loud"}
local letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
for i = 1, 20000 do
  local name = ""
  if MODE == "adversarial" then
    for j = 1, 8 + (i % 12) do
      local k = math.random(1, #letters)
      name = name .. letters:sub(k, k)
    end
  elseif i % 3 == 0 then
    name = "team-meeting-"
  else
    for j = 1, 4 do name = name .. words[math.random(1, #words)] end
  end
  rooms[i] = "/" .. name .. i
end
local n = 0
request = function()
  n = n + 1
  return wrk.format("GET", rooms[(n % #rooms) + 1])
end
"""


def make_spec(shards: int, mode: str = "redirect"):
    return spec_from_dict({"fleet": {"name": "bench", "domain": "fd.bench.test", "shards": shards},
                           # one wrk client plays every user: no per-client limit of new rooms
                           "frontdoor": {"mode": mode, "capacity_per_shard": 200, "new_rooms_per_minute": 1_000_000}})


def readings_for(spec, rooms: int, seed: int = 1) -> list[ShardReading]:
    """Every shard readable, `rooms` live rooms spread over them (1-12 participants each)."""
    rng = random.Random(seed)
    names = spec.shard_names()
    per: dict[str, list[LiveRoom]] = {n: [] for n in names}
    for i in range(rooms):
        per[names[i % len(names)]].append(LiveRoom(f"room{i}x{rng.randrange(10**6)}", rng.randint(1, 12)))
    return [ShardReading(name=n, ok=True, participants=sum(r.participants for r in per[n]),
                         conferences=len(per[n]), stress=rng.random() * 0.5, rooms=tuple(per[n])) for n in names]


def layout_under(prefix: Path, port: int) -> FrontdoorLayout:
    return FrontdoorLayout(site_path=str(prefix / "site.conf"), proxy_params_path=str(prefix / "proxy.conf"),
                           routing_path=str(prefix / "routing.conf"), seed_path=str(prefix / "seed.conf"),
                           state_path=str(prefix / "state.json"), webroot=str(prefix / "www"),
                           routes_log=str(prefix / "routes.log"), listen=(f"127.0.0.1:{port} reuseport",),
                           pcre_jit_path=str(prefix / "pcre-jit.conf"),
                           tls=False, shard_scheme="https")


def start_frontdoor(prefix: Path, spec, readings, extra: str = "") -> tuple[NginxInstance, FrontdoorLayout, int]:
    port = free_port()
    layout = layout_under(prefix, port)
    for item in frontdoor_files(spec, {}, None, layout):
        if item.path.startswith(str(prefix)):
            Path(item.path).parent.mkdir(parents=True, exist_ok=True)
            Path(item.path).write_text(item.content)
    plan, _ = select(readings, Memory(), time.time(), SelectionParams()) if readings else (seed_plan(spec), None)
    Path(layout.routing_path).write_text(routing_conf(plan, spec, layout))
    nginx = NginxInstance(prefix)
    # main context as on the front door host: Debian's nginx.conf includes modules-enabled/*.conf (PCRE JIT)
    nginx.conf.write_text(f"include {layout.pcre_jit_path};\n"
                          + nginx_main_conf(prefix, f"    include {layout.site_path};\n{extra}"))
    return nginx.start(), layout, port


# ---------------------------------------------------------------- 1. wrk

def cpu_seconds(pids: set[int]) -> float:
    """User + system CPU time of processes (from /proc), in seconds."""
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (clock ticks)
    return total / os.sysconf("SC_CLK_TCK")


def wrk_run(nginx: NginxInstance, url: str, script: Path, seconds: int) -> dict:
    """One wrk run; requests per second of wall time and per second of the nginx worker's CPU time."""
    workers = nginx.worker_pids()
    before = cpu_seconds(workers)
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    cpu = cpu_seconds(workers) - before
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    count = re.search(r"(\d+) requests in", out)
    if not rps or not count or re.search(r"Non-2xx or 3xx responses", out):
        raise RuntimeError(f"wrk: unexpected output:\n{out}")
    return {"rps": float(rps.group(1)), "per_cpu_second": int(count.group(1)) / max(cpu, 1e-3)}


def bench_redirect(seconds: int) -> dict:
    """Front door vs `return 200`, one nginx worker each, alternating runs. The machine is shared:
    besides requests per second, report requests per CPU second of the worker (what a dedicated
    core would serve), which other processes on the machine do not disturb."""
    if not shutil.which("wrk"):
        return {"skipped": "wrk is not installed (apt-get install wrk)"}
    spec = make_spec(20)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp)
        door, _, port = start_frontdoor(prefix / "door", spec, readings_for(spec, 10_000))
        base_port = free_port()
        plain = NginxInstance(prefix / "plain")
        plain.conf.write_text(nginx_main_conf(prefix / "plain",
                                              f"    server {{ listen 127.0.0.1:{base_port}; return 200; }}"))
        plain.start()
        scripts = {}
        for mode in ("realistic", "adversarial"):
            scripts[mode] = prefix / f"{mode}.lua"
            scripts[mode].write_text(f'MODE = "{mode}"\n' + WRK_SCRIPT)
        runs: dict[str, list[tuple[dict, dict]]] = {"realistic": [], "adversarial": []}
        try:
            for mode, script in scripts.items():
                for _ in range(3):
                    runs[mode].append((wrk_run(door, f"http://127.0.0.1:{port}", script, seconds),
                                       wrk_run(plain, f"http://127.0.0.1:{base_port}", script, seconds)))
        finally:
            door.stop()
            plain.stop()

    def median_ratio(pairs: list[tuple[dict, dict]], key: str) -> float:
        return sorted(a[key] / b[key] for a, b in pairs)[len(pairs) // 2]

    real = runs["realistic"]
    return {"frontdoor_redirect_rps": round(sorted(a["rps"] for a, _ in real)[1]),
            "nginx_return_200_rps": round(sorted(b["rps"] for _, b in real)[1]),
            "ratio_per_cpu_second": round(median_ratio(real, "per_cpu_second"), 3),
            "ratio_wall_clock": round(median_ratio(real, "rps"), 3),
            "adversarial_names_ratio_per_cpu_second": round(median_ratio(runs["adversarial"], "per_cpu_second"), 3),
            "target": ">= 0.90", "pins": 10_000, "shards": 20}


# ---------------------------------------------------------------- 2. refresh at scale

def bench_refresh() -> dict:
    spec = make_spec(500)
    readings = readings_for(spec, 10_000)
    params = SelectionParams(capacity=200)
    started = time.perf_counter()
    plan, _ = select(readings, Memory(), time.time(), params)
    text = routing_conf(plan, spec, FrontdoorLayout())
    compute = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp)
        nginx, layout, _ = start_frontdoor(prefix, spec, None)
        try:
            control = NginxControl(test=nginx.command("-t", "-q"), reload=nginx.command("-s", "reload"),
                                   reopen=nginx.command("-s", "reopen"), settle=0.0)
            started = time.perf_counter()
            result = refresh(spec, layout, None, control, readings=readings)
            cycle = time.perf_counter() - started
            assert result.reloaded and len(result.plan.pins) == 10_000
        finally:
            nginx.stop()
    return {"shards": 500, "live_rooms": 10_000, "select_and_render_s": round(compute, 3),
            "full_cycle_s": round(cycle, 3), "maps_bytes": len(text), "target": "< 1 s"}


# ---------------------------------------------------------------- 3. a day of meetings

def diurnal(minute: float) -> float:
    """Meetings started per minute over a working day: morning and afternoon peaks, quiet night."""
    hour = minute / 60
    return 0.3 + 9 * math.exp(-((hour - 10) ** 2) / 3) + 7 * math.exp(-((hour - 15) ** 2) / 4)


def simulate_day(seed: int = 3, step: float = 15.0, capacities: tuple[int, ...] = (200, 300, 400, 600, 800),
                 peak_per_minute: float = 24.0, margin: float | None = None, static: bool = False) -> dict:
    """A day of meetings through `select` and the split_clients model; every join is routed like nginx
    does it (pin, else split), the census is what has joined, refreshes every `step` seconds."""
    import heapq

    rng = random.Random(seed)
    spec = make_spec(20)
    names = spec.shard_names()
    cap = {n: capacities[i % len(capacities)] for i, n in enumerate(names)}
    params = SelectionParams(capacity=200, recent_ttl=60)
    if margin is not None:
        params = SelectionParams(capacity=200, recent_ttl=60, margin=margin)
    memory = Memory()
    events: list[tuple[float, int, str, str]] = []  # (time, order, "join"/"leave", room key)
    room_shard: dict[str, str] = {}
    created: dict[str, float] = {}
    present: dict[str, dict[str, int]] = {n: {} for n in names}  # shard -> room -> participants
    routed: list[tuple[float, str, str]] = []
    split_rooms = joins = meetings = order = 0
    peak_util = dict.fromkeys(names, 0.0)
    ideal_peak, at_peak = 0.0, {}
    t = 0.0
    while t < 24 * 3600:
        # refresh: the census is who is in a room now
        readings = [ShardReading(n, ok=True, participants=sum(present[n].values()), conferences=len(present[n]),
                                 capacity=cap[n],
                                 rooms=tuple(LiveRoom(k, v, created[k]) for k, v in present[n].items()))
                    for n in names]
        plan, memory = select(readings, memory, t, params, routed)
        routed = []
        bounds, pins = split_bounds(plan.split), dict(plan.pins)
        if static:  # baseline: weights by capacity only, no occupancy feedback
            bounds = split_bounds(to_units([(n, float(cap[n])) for n in names]))
        load = {r.name: r.participants for r in readings}
        utilisation = sum(load.values()) / sum(cap.values())
        if utilisation > ideal_peak:
            ideal_peak, at_peak = utilisation, {n: load[n] / cap[n] for n in names}
        for n in names:
            peak_util[n] = max(peak_util[n], load[n] / cap[n])
        # meetings starting in this step: participants join over the first minutes, all leave at the end
        for _ in range(_poisson(rng, diurnal(t / 60) / diurnal(600) * peak_per_minute * step / 60)):
            meetings += 1
            key = room_key(f"Meeting{meetings}x{rng.randrange(10**9)}")
            size = min(40, max(2, int(rng.paretovariate(1.6) * 2)))
            duration = rng.uniform(20, 90) * 60
            for _ in range(size):
                order += 1
                heapq.heappush(events, (t + rng.uniform(0, min(600, duration / 3)), order, "join", key))
            order += 1
            heapq.heappush(events, (t + duration, order, "leave", key))
        # joins and leaves until the next refresh, in time order, each join routed like nginx does
        while events and events[0][0] < t + step:
            when, _, kind, key = heapq.heappop(events)
            if kind == "leave":
                shard = room_shard.pop(key, None)
                created.pop(key, None)
                if shard:
                    present[shard].pop(key, None)
                continue
            shard = pins.get(key) or split_choice(key, bounds)
            if key not in pins:
                routed.append((when, key, shard))  # nginx's route log; the next refresh pins it
                pins[key] = shard
            created.setdefault(key, when)
            if room_shard.setdefault(key, shard) != shard:
                split_rooms += 1
            present[room_shard[key]][key] = present[room_shard[key]].get(key, 0) + 1
            joins += 1
        t += step
    deviation = {n: peak_util[n] / ideal_peak - 1 for n in names}
    return {"shards": 20, "capacities": sorted(set(cap.values())), "meetings": meetings, "joins": joins,
            "ideal_peak_utilisation": round(ideal_peak, 3),
            "peak_utilisation": {n.split(".")[0]: round(peak_util[n], 3) for n in names},
            "worst_deviation_of_daily_peak": round(max(deviation.values(), key=abs), 3),
            "worst_deviation_at_fleet_peak": round(max((at_peak[n] / ideal_peak - 1 for n in names), key=abs), 3),
            "split_rooms": split_rooms, "target": "|deviation| <= 0.10, split_rooms == 0"}


def day_figures(seeds: tuple[int, ...] = (3, 4, 5)) -> dict:
    """simulate_day over a few days, occupancy-aware vs capacity-only weights; medians of the worst deviations."""
    runs = [simulate_day(seed) for seed in seeds]
    base = [simulate_day(seed, static=True) for seed in seeds]

    def median_abs(values: list[float]) -> float:
        return sorted(values, key=abs)[len(values) // 2]

    return {"seeds": len(seeds), "meetings": runs[0]["meetings"], "capacities": runs[0]["capacities"],
            "at_fleet_peak": median_abs([r["worst_deviation_at_fleet_peak"] for r in runs]),
            "daily_peak": median_abs([r["worst_deviation_of_daily_peak"] for r in runs]),
            "baseline_at_fleet_peak": median_abs([r["worst_deviation_at_fleet_peak"] for r in base]),
            "baseline_daily_peak": median_abs([r["worst_deviation_of_daily_peak"] for r in base]),
            "split_rooms": sum(r["split_rooms"] for r in runs + base), "runs": runs, "baseline_runs": base}


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--seconds", type=int, default=5, help="seconds per wrk run (3 runs each)")
    args = parser.parse_args()
    results = {"redirect_throughput": bench_redirect(args.seconds), "refresh_500_shards": bench_refresh(),
               "day_simulation": day_figures()}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    r, f, d = results["redirect_throughput"], results["refresh_500_shards"], results["day_simulation"]
    if "skipped" in r:
        print(f"1. redirect throughput: skipped ({r['skipped']})")
    else:
        print(f"1. redirect throughput: front door {r['frontdoor_redirect_rps']} req/s, nginx return 200 "
              f"{r['nginx_return_200_rps']} req/s; ratio per CPU second {r['ratio_per_cpu_second']:.1%} "
              f"(wall clock {r['ratio_wall_clock']:.1%}; target >= 90%); random mixed-case names "
              f"{r['adversarial_names_ratio_per_cpu_second']:.1%}")
    print(f"2. refresh, 500 shards / 10,000 live rooms: select+render {f['select_and_render_s']:.3f} s, "
          f"full cycle with nginx -t and reload {f['full_cycle_s']:.3f} s (target < 1 s)")
    print(f"3. a day of ~{d['meetings']} meetings on 20 shards ({d['capacities']} participants), median of "
          f"{d['seeds']} days: worst shard load/capacity vs the fleet's at its peak {d['at_fleet_peak']:+.1%} "
          f"(capacity-only weights: {d['baseline_at_fleet_peak']:+.1%}); worst shard's own daily peak vs the "
          f"fleet's {d['daily_peak']:+.1%} (baseline {d['baseline_daily_peak']:+.1%}); target within 10%; "
          f"split rooms {d['split_rooms']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
