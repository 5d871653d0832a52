"""The front door's Prometheus metrics: the text format checked by Debian's promtool, served by the
generated nginx site to allow-listed addresses only (403 otherwise), and scraped by a real Prometheus.

The front door here is the real generated nginx configuration on loopback, shards played by
nginx + the occupancy stand-in (tests/standins/shard_occupancy.py), refreshed by the real refresher.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
from helpers.ports import free_port
from standins.shard_occupancy import Client, FrontdoorUnderTest, OccupancyStandin, ShardsNginx

from ensemble.frontdoor.metrics import metrics_text, next_stats, routes_per_minute
from ensemble.paths import METRICS_URL_PATH
from ensemble.spec import spec_from_dict

TOKEN = "test-occupancy-token"


def promtool_check(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)


def samples(text: str) -> dict[str, float]:
    """{'name{labels}': value} of a metrics document (comments skipped)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
    return out


STATE = {
    "refreshed_at": 1700000000.5,
    "errors": {"b.example.org": "census HTTP 502"},
    "plan": {"shards": [
        {"name": "a.example.org", "state": "ready", "reason": "", "conferences": 3, "participants": 17,
         "stress": 0.25, "capacity": 200, "weight": 7500, "pinned": 3},
        {"name": "b.example.org", "state": "unhealthy", "reason": "unreadable", "conferences": 0,
         "participants": 0, "stress": 0.0, "capacity": 200, "weight": 0, "pinned": 1},
        {"name": "c.example.org", "state": "draining", "reason": "drain flag set", "conferences": 1,
         "participants": 2, "stress": 0.01, "capacity": 200, "weight": 2500, "pinned": 1},
    ]},
    "stats": {"refreshes": 41, "failures": 2, "routes": 900, "duration": 0.084,
              "route_history": [[1699999940.0, 100], [1699999985.5, 4], [1700000000.5, 6]]},
}


# ---------------------------------------------------------------- the pure rendering

@pytest.mark.needs_tool("promtool")
def test_promtool_accepts_the_document_with_no_lint_problem():
    text = metrics_text(STATE)
    proc = promtool_check(text)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "" and proc.stderr.strip() == "", proc.stdout + proc.stderr


@pytest.mark.needs_tool("promtool")
def test_promtool_accepts_an_empty_or_damaged_state():
    for state in ({}, {"plan": "junk", "stats": []}, {"plan": {"shards": [{"no": "name"}]}}):
        proc = promtool_check(metrics_text(state))
        assert proc.returncode == 0, (state, proc.stdout + proc.stderr)


def test_every_figure_the_issue_names_is_there():
    values = samples(metrics_text(STATE))
    assert values['ensemble_shard_participants{shard="a.example.org"}'] == 17
    assert values['ensemble_shard_conferences{shard="a.example.org"}'] == 3
    assert values['ensemble_shard_stress{shard="a.example.org"}'] == 0.25
    assert values['ensemble_shard_weight_ratio{shard="a.example.org"}'] == 0.75
    assert values['ensemble_shard_pinned_rooms{shard="b.example.org"}'] == 1
    assert values['ensemble_shard_state{shard="c.example.org",state="draining"}'] == 1
    assert values['ensemble_shard_state{shard="c.example.org",state="ready"}'] == 0
    assert values['ensemble_shard_up{shard="b.example.org"}'] == 0
    assert values['ensemble_shard_up{shard="a.example.org"}'] == 1
    assert values["ensemble_frontdoor_refresh_timestamp_seconds"] == 1700000000.5
    assert values["ensemble_frontdoor_refresh_duration_seconds"] == 0.084
    assert values["ensemble_frontdoor_refreshes_total"] == 41
    assert values["ensemble_frontdoor_refresh_failures_total"] == 2
    assert values["ensemble_frontdoor_routes_total"] == 900
    assert values["ensemble_frontdoor_routes_per_minute"] == 10  # the 100 of 60.5 s ago are out of the minute


def test_label_values_are_escaped():
    state = {"plan": {"shards": [{"name": 'x"y\\z\nw', "state": "ready"}]}}
    assert 'ensemble_shard_participants{shard="x\\"y\\\\z\\nw"} 0' in metrics_text(state)


def test_counters_add_up_and_the_route_window_slides():
    stats = next_stats({}, 100.0, 0.2, False, 3)
    stats = next_stats(stats, 115.0, 0.3, True, 5)
    assert (stats["refreshes"], stats["failures"], stats["routes"], stats["duration"]) == (2, 1, 8, 0.3)
    stats = next_stats(stats, 170.0, 0.1, False, 0)  # the run at 100 s is out of the minute
    assert stats["route_history"] == [[115.0, 5], [170.0, 0]]
    assert routes_per_minute(stats["route_history"], 170.0) == 5.0
    assert routes_per_minute([], 170.0) == 0.0


# ---------------------------------------------------------------- served by the real front door

def make_spec(allowed: list[str] | None = None):
    frontdoor = {"capacity_per_shard": 100, "refresh_interval": 15, "grace_period": 60, "ready_after": 2}
    if allowed is not None:
        frontdoor["metrics_allowed_cidrs"] = allowed
    return spec_from_dict({"fleet": {"name": "fdm", "domain": "fd.ensemble.test", "shards": 2},
                           "frontdoor": frontdoor})


@pytest.fixture()
def door(tmp_path, request):
    spec = make_spec(getattr(request, "param", None))
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    client = Client(door.port, spec.fleet.domain)
    try:
        yield spec, standin, door, client
    finally:
        client.close()
        door.stop()
        shards.stop()
        standin.stop()


def metrics_response(port: int) -> tuple[int, str, str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{METRICS_URL_PATH}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers.get("Content-Type", ""), ""


@pytest.mark.needs_tool("nginx", "promtool")
def test_the_front_door_serves_what_the_last_refresh_read(door):
    spec, standin, fd, client = door
    one, two = spec.shard_names()
    standin.set_rooms(one, {"alpha": 5, "beta": 2})
    standin.set_stress(one, 0.125)
    fd.refresh()
    status, location = client.get("/SomeNewRoom")  # a new room routed through the front door
    assert status == 302, location
    time.sleep(1.5)  # the route log's buffer is flushed every second (flush=1s)
    fd.refresh()
    code, content_type, text = metrics_response(fd.port)
    assert code == 200 and content_type.startswith("text/plain; version=0.0.4"), (code, content_type)
    assert promtool_check(text).returncode == 0
    values = samples(text)
    assert values[f'ensemble_shard_participants{{shard="{one}"}}'] == 7
    assert values[f'ensemble_shard_conferences{{shard="{one}"}}'] == 2
    assert values[f'ensemble_shard_stress{{shard="{one}"}}'] == 0.125
    assert values[f'ensemble_shard_state{{shard="{two}",state="ready"}}'] == 1
    assert values["ensemble_frontdoor_refreshes_total"] == 2
    assert values["ensemble_frontdoor_routes_total"] == 1
    assert values["ensemble_frontdoor_refresh_timestamp_seconds"] == pytest.approx(fd.clock)


@pytest.mark.needs_tool("nginx")
@pytest.mark.parametrize("door", [["192.0.2.0/24"], []], indirect=True)
def test_addresses_off_the_allow_list_get_403(door):
    _, _, fd, _ = door
    fd.refresh()
    code, _, text = metrics_response(fd.port)
    assert code == 403 and "ensemble_shard" not in text


@pytest.mark.needs_tool("nginx", "prometheus")
def test_a_real_prometheus_scrapes_the_front_door(door, tmp_path):
    spec, standin, fd, _ = door
    one = spec.shard_names()[0]
    standin.set_rooms(one, {"gamma": 4})
    fd.refresh()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(json.dumps({  # YAML is a superset of JSON
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "ensemble-frontdoor", "metrics_path": METRICS_URL_PATH,
                            "static_configs": [{"targets": [f"127.0.0.1:{fd.port}"]}]}],
    }))
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        query = urllib.parse.quote(f'ensemble_shard_participants{{shard="{one}"}}')
        result: list = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not result:
            time.sleep(1)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={query}",
                                            timeout=5) as response:
                    result = json.loads(response.read())["data"]["result"]
            except (OSError, ValueError, KeyError):
                continue
        assert result, "Prometheus scraped nothing in 60 s"
        assert float(result[0]["value"][1]) == 4
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5) as response:
            targets = json.loads(response.read())["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"], targets
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_the_metrics_file_follows_the_state_file_unless_set():
    from ensemble.frontdoor.render import FrontdoorLayout
    from ensemble.paths import FRONTDOOR_METRICS

    assert FrontdoorLayout().metrics_file() == FRONTDOOR_METRICS
    assert FrontdoorLayout(state_path="/tmp/x/state.json").metrics_file() == "/tmp/x/metrics.prom"
    assert FrontdoorLayout(state_path="/tmp/x/state.json", metrics_path="/m.prom").metrics_file() == "/m.prom"
