"""The benchmarks' code runs and their exit status is honest (a smoke in --quick mode; the figures
themselves come from `make bench`, never from tests).

Example::

    .venv/bin/pytest tests/test_bench.py
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRONTDOOR_BENCH = ROOT / "bench" / "frontdoor.py"


def run_frontdoor_bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(FRONTDOOR_BENCH), "--quick", *args],
                          capture_output=True, text=True, timeout=600)


def test_day_simulation_runs_every_strategy_and_exit_status_follows_the_misses():
    done = run_frontdoor_bench("--only", "day", "--json")
    results = json.loads(done.stdout)
    strategies = results["day_simulation"]["strategies"]
    assert set(strategies) == {"ensemble", "consistent-hash", "most-free-cpu", "round-robin", "least-conferences",
                               "clairvoyant", "real-time-blind"}
    assert strategies["ensemble"]["split_rooms"] == 0
    assert done.returncode == (1 if results["missed_targets"] else 0), done.stderr


def test_a_missed_target_exits_1_and_names_it():
    done = run_frontdoor_bench("--only", "day", "--target", "day_split_rooms=-1")
    assert done.returncode == 1
    assert "day_split_rooms: ensemble: split rooms = 0, target <= -1.0" in done.stdout


def test_targets_met_exit_0():
    done = run_frontdoor_bench("--only", "day",
                               "--target", "day_ensemble_lowest_peak=10", "--target", "day_peak_vs_ideal=10")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every target met" in done.stdout


def test_an_unknown_target_is_a_usage_error():
    done = run_frontdoor_bench("--only", "day", "--target", "speed=1")
    assert done.returncode == 2
    assert "unknown target 'speed'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.needs_tool("wrk", "nginx")
def test_redirect_throughput_is_measured_against_a_bare_302():
    done = run_frontdoor_bench("--only", "redirect", "--json", "--target", "redirect_new_rooms=0",
                               "--target", "redirect_live_mix=0")
    assert done.returncode == 0, done.stdout + done.stderr
    figures = json.loads(done.stdout)["redirect_throughput"]
    assert figures["new_rooms_vs_bare_302_per_cpu_second"] > 0
    assert figures["live_mix_vs_bare_302_per_cpu_second"] > 0


def test_deploy_bench_names_each_missed_target():
    spec = importlib.util.spec_from_file_location("bench_deploy", ROOT / "bench" / "deploy.py")
    deploy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(deploy)
    assert deploy.missed_targets({"ratio_3_vs_1": 1.2, "rerun_changes": 0, "ratio_ensemble_vs_shell": 1.1}) == []
    assert deploy.missed_targets({"ratio_3_vs_1": 2.0, "rerun_changes": 3}) == [
        "ratio_3_vs_1 = 2.0, target <= 1.5", "rerun_changes = 3, target == 0"]


AUTOSCALE_BENCH = ROOT / "bench" / "autoscale.py"


def test_autoscale_bench_quick_reports_three_fleets_and_its_exit_follows_the_misses():
    done = subprocess.run([sys.executable, str(AUTOSCALE_BENCH), "--quick", "--json"], capture_output=True,
                          text=True, timeout=600)
    result = json.loads(done.stdout)
    assert set(result["median"]) == {"fixed", "threshold", "ensemble"} and result["seeds"] == 1
    assert done.returncode == (1 if result["missed_targets"] else 0), done.stderr
    # the real round ran: it scaled up, drained and removed shards over the day
    actions = result["runs"]["ensemble"][0]["actions"]
    assert actions["up"] > 0 and actions["drain"] > 0 and actions["down"] > 0


def test_autoscale_bench_names_each_missed_target():
    spec = importlib.util.spec_from_file_location("bench_autoscale", AUTOSCALE_BENCH)
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_autoscale"] = bench  # its dataclasses look their module up
    spec.loader.exec_module(bench)
    fixed = {"shard_hours": 700, "peak_overload": 1.1}
    assert bench.missed_targets({"fixed": fixed, "threshold": {"shard_hours": 360, "peak_overload": 1.05},
                                 "ensemble": {"shard_hours": 350, "peak_overload": 1.05}}) == []
    assert bench.missed_targets({"fixed": fixed, "threshold": {"shard_hours": 360, "peak_overload": 1.05},
                                 "ensemble": {"shard_hours": 361, "peak_overload": 1.06}}) == [
        "shard_hours: ensemble 361 > threshold 360", "peak_overload: ensemble 1.06 > threshold 1.05"]


def test_run_all_refuses_an_unknown_benchmark_and_knows_autoscale():
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "nope"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2 and "valid: provision, frontdoor, deploy, autoscale" in done.stderr
