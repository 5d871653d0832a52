"""The front door's Prometheus metrics: a text file the refresher writes and nginx serves (allow-listed).

Pure rendering from the refresher's state (the same document `ensemble status` reads), in the
Prometheus text exposition format 0.0.4. A static file cannot know its own age at scrape time, so
the refresh's time is a timestamp gauge: its age is ``time() - ensemble_frontdoor_refresh_timestamp_seconds``
in PromQL (the textfile-collector convention).

Example::

    text = metrics_text(state)          # state: the refresher's state.json as a dict
    # ensemble_shard_participants{shard="demo-1.meet.example.org"} 12
"""

from __future__ import annotations

import math

from ensemble.frontdoor.selection import STATES

ROUTE_WINDOW = 60.0  # seconds of refresh history behind ensemble_frontdoor_routes_per_minute

# name, type, help, field of a plan shard (None: rendered specially)
SHARD_METRICS = (
    ("ensemble_shard_participants", "gauge", "Participants on the shard (prosody census).", "participants"),
    ("ensemble_shard_conferences", "gauge", "Conferences on the shard.", "conferences"),
    ("ensemble_shard_stress", "gauge", "The bridge's stress level (1.0 = overloaded).", "stress"),
    ("ensemble_shard_capacity_participants", "gauge", "Participants the shard takes before it counts as full.",
     "capacity"),
    ("ensemble_shard_weight_ratio", "gauge", "Share of new meetings the front door sends to the shard (0-1).",
     "weight"),
    ("ensemble_shard_pinned_rooms", "gauge", "Meetings pinned to the shard by the front door.", "pinned"),
)


def escape_label(value: str) -> str:
    """A label value as the text format wants it (backslash, double quote and newline escaped).

    Example::

        escape_label('a"b')      # 'a\\\\"b'
    """
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def number(value: object) -> str:
    """A sample value: ints as ints, floats in Go's spelling for the specials (NaN, +Inf, -Inf).

    Example::

        number(0.5), number(3), number(float("inf"))     # ("0.5", "3", "+Inf")
    """
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    try:
        f = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "NaN"
    if math.isnan(f):
        return "NaN"
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    return repr(f)


def routes_per_minute(history: list, now: float, window: float = ROUTE_WINDOW) -> float:
    """New meetings routed per minute over the refreshes of the last `window` seconds.

    `history`: [[refresh time, routes logged since the previous refresh], ...], oldest first.

    Example::

        routes_per_minute([[100.0, 10], [115.0, 5]], now=115.0)     # 15.0
    """
    recent = [(float(t), int(n)) for t, n in history if now - float(t) < window]
    return float(sum(n for _, n in recent)) * 60.0 / window


def metrics_text(state: dict) -> str:
    """The metrics document of one refresh (see the module); every family has HELP and TYPE once.

    Example::

        metrics_text({"plan": {"shards": []}, "refreshed_at": 1.0, "stats": {}}).splitlines()[0]
        # '# HELP ensemble_shard_participants Participants on the shard (prosody census).'
    """
    plan = state.get("plan") if isinstance(state.get("plan"), dict) else {}
    shards = [s for s in plan.get("shards", []) if isinstance(s, dict) and "name" in s]
    errors = state.get("errors") if isinstance(state.get("errors"), dict) else {}
    stats = state.get("stats") if isinstance(state.get("stats"), dict) else {}
    out: list[str] = []

    def family(name: str, kind: str, help_text: str) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")

    for name, kind, help_text, key in SHARD_METRICS:
        family(name, kind, help_text)
        for shard in shards:
            value = shard.get(key, 0)
            if key == "weight":  # the plan keeps 0.01 % units
                value = float(value) / 10000.0
            out.append(f'{name}{{shard="{escape_label(str(shard["name"]))}"}} {number(value)}')
    family("ensemble_shard_state", "gauge", "1 for the shard's state as the front door decided it, else 0.")
    for shard in shards:
        label = escape_label(str(shard["name"]))
        for state_name in STATES:
            out.append(f'ensemble_shard_state{{shard="{label}",state="{state_name}"}} '
                       f'{1 if shard.get("state") == state_name else 0}')
    family("ensemble_shard_up", "gauge", "1 when the last refresh read the shard, 0 when it could not.")
    for shard in shards:
        out.append(f'ensemble_shard_up{{shard="{escape_label(str(shard["name"]))}"}} '
                   f'{0 if shard["name"] in errors else 1}')
    family("ensemble_frontdoor_refresh_timestamp_seconds", "gauge",
           "When the last refresh ran (Unix time); its age is time() minus this.")
    out.append(f"ensemble_frontdoor_refresh_timestamp_seconds {number(float(state.get('refreshed_at') or 0))}")
    family("ensemble_frontdoor_refresh_duration_seconds", "gauge", "How long the last refresh took.")
    out.append(f"ensemble_frontdoor_refresh_duration_seconds {number(float(stats.get('duration', 0.0)))}")
    family("ensemble_frontdoor_refreshes_total", "counter", "Refreshes run since the state file was created.")
    out.append(f"ensemble_frontdoor_refreshes_total {number(int(stats.get('refreshes', 0)))}")
    family("ensemble_frontdoor_refresh_failures_total", "counter",
           "Refreshes that failed (nginx -t refused the maps, reload failed) since the state file was created.")
    out.append(f"ensemble_frontdoor_refresh_failures_total {number(int(stats.get('failures', 0)))}")
    family("ensemble_frontdoor_routes_total", "counter", "New meetings routed since the state file was created.")
    out.append(f"ensemble_frontdoor_routes_total {number(int(stats.get('routes', 0)))}")
    family("ensemble_frontdoor_routes_per_minute", "gauge", "New meetings routed over the last minute.")
    history = stats.get("route_history", [])
    now = float(state.get("refreshed_at") or 0)
    out.append(f"ensemble_frontdoor_routes_per_minute {number(routes_per_minute(history, now))}")
    return "\n".join(out) + "\n"


def next_stats(before: dict, now: float, duration: float, failed: bool, routes: int,
               window: float = ROUTE_WINDOW) -> dict:
    """The refresher's counters after one run (kept in its state file beside the plan).

    Example::

        next_stats({}, 100.0, 0.2, False, 3)["refreshes"]       # 1
    """
    history = [[float(t), int(n)] for t, n in before.get("route_history", []) if now - float(t) < window]
    history.append([now, routes])
    return {"refreshes": int(before.get("refreshes", 0)) + 1, "failures": int(before.get("failures", 0)) + failed,
            "routes": int(before.get("routes", 0)) + routes, "duration": round(duration, 4),
            "route_history": history}
