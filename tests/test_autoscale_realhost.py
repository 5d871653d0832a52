"""`ensemble autoscale --once` and the front door's metrics on a real local fleet, as an operator runs them.

deploy 1 shard (4 places, target_free 2) -> 3 participants join -> `autoscale --once` scales up
(shard 2 created, deployed, read ready by the front door; the round's duration is its measured lead
time, printed: bench/autoscale.py's --boot) -> a real Prometheus scrapes the front door's metrics
over HTTPS from this (allow-listed) machine -> the 3 leave, 1 joins shard 2 -> `autoscale --once`
drains shard 2 and ends at once (exit 0) -> the next round waits for it: shard 2 and its participant
are still there (nothing cut), new rooms go to shard 1 -> the participant leaves -> `autoscale --once`
removes the drained, empty shard 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
from conftest import ensemble_json as ensemble
from conftest import local_spec_toml, ssh_run
from helpers.ports import free_port
from standins.xmpp_participant import Participant
from test_lifecycle_chains import census, route, wait_until

REPO = Path(__file__).resolve().parent.parent
FLEET = "t-as"

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


def spec_toml() -> str:
    return local_spec_toml(FLEET, 1, header="# test fleet of tests/test_autoscale_realhost.py\n", tail="""[jitsi]
etherpad = false

[frontdoor]
refresh_interval = 5
capacity_per_shard = 4
metrics_allowed_cidrs = ["10.0.0.0/8"]

[autoscale]
min_shards = 1
max_shards = 2
target_free = 2
hysteresis = 1
cooldown_up = 0
cooldown_down = 0
drain_timeout = 20
""")


def autoscale(config: Path, state: Path) -> tuple[int, dict, str]:
    proc = subprocess.run([sys.executable, "-m", "ensemble.cli", "autoscale", "--once", "--json", "-c", str(config),
                           "--state-file", str(state)], cwd=REPO, capture_output=True, text=True, timeout=1200)
    try:
        return proc.returncode, json.loads(proc.stdout), proc.stderr
    except ValueError:
        return proc.returncode, {}, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def fleet(local_provider, tmp_path_factory):
    from ensemble.spec import load_spec

    folder = tmp_path_factory.mktemp("autoscale")
    config = folder / "ensemble.toml"
    config.write_text(spec_toml())
    spec = load_spec(config)
    local_provider.destroy_all(spec)
    try:
        yield config, spec, folder
    finally:
        local_provider.destroy_all(spec)


def door_reads(door) -> dict[str, tuple[str, int]]:
    """{shard: (state, participants)} of the front door's last refresh."""
    code, out, _ = ssh_run(door, "cat /var/lib/ensemble/frontdoor/state.json")
    if code != 0:
        return {}
    return {s["name"]: (s["state"], s["participants"]) for s in json.loads(out)["plan"]["shards"]}


def hosts_of(local_provider, spec) -> dict:
    return {h.name: h for h in local_provider.list_hosts(spec)}


def scrape_with_prometheus(door, folder: Path, query: str) -> list:
    """Start Debian's Prometheus scraping the front door's /_ensemble/metrics; the query's result."""
    port = free_port()
    config = folder / "prometheus.yml"
    config.write_text(json.dumps({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s"},
        "scrape_configs": [{"job_name": "ensemble", "metrics_path": "/_ensemble/metrics", "scheme": "https",
                            "tls_config": {"insecure_skip_verify": True},  # the test fleet's self-signed cert
                            "static_configs": [{"targets": [f"{door.address}:443"]}]}],
    }))
    proc = subprocess.Popen(["prometheus", f"--config.file={config}", f"--storage.tsdb.path={folder / 'tsdb'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            time.sleep(1)
            try:
                url = f"http://127.0.0.1:{port}/api/v1/query?query={urllib.parse.quote(query)}"
                with urllib.request.urlopen(url, timeout=5) as response:
                    result = json.loads(response.read())["data"]["result"]
            except (OSError, ValueError, KeyError):
                continue
            if result:
                return result
        return []
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.needs_tool("prometheus")
def test_autoscale_up_then_down_by_drain_and_wait_never_cutting(fleet, local_provider):
    config, spec, folder = fleet
    state = folder / "autoscale-state.json"
    one, two = spec.shard_name(1), spec.shard_name(2)

    code, out, err = ensemble("deploy", "--config", str(config))
    assert code == 0 and out["ok"], err[-3000:]
    hosts = hosts_of(local_provider, spec)
    door = hosts[spec.fleet.domain]

    # 3 participants on the only shard: 1 free place < target_free 2
    crowd = [Participant(url=f"https://{one}", room="busy", address=hosts[one].address, verify=False).join()
             for _ in range(3)]
    try:
        wait_until(lambda: census(hosts[one]).get("busy", 0) == 3, 60, "3 participants in the census")
        wait_until(lambda: door_reads(door).get(one) == ("ready", 3), 120,
                   "the front door reads shard 1 ready with 3 participants")
        began = time.monotonic()
        code, out, err = autoscale(config, state)
        took = time.monotonic() - began
        print(f"\nautoscale scale up round (create + deploy + read ready), measured: {took:.0f}s "
              f"(recorded lead time {json.loads(state.read_text())['lead_time']}s)")
        assert code == 0, err[-3000:]
        assert (out["action"], out["current"], out["target"]) == ("up", 1, 2), out
        assert 30 <= json.loads(state.read_text())["lead_time"] <= took + 1
        assert out["figures"]["ready"] == 1 and out["figures"]["used"] >= 3, out  # (stress may count more)
        assert out["figures"]["free"] < 2, out
        assert "target_free 2" in out["reason"], out
        hosts = hosts_of(local_provider, spec)
        assert two in hosts

        # the front door's metrics, scraped by a real Prometheus from this (allow-listed) machine
        result = scrape_with_prometheus(door, folder, f'ensemble_shard_participants{{shard="{one}"}}')
        assert result and float(result[0]["value"][1]) == 3, result
        code, text, _ = ssh_run(door, "cat /var/lib/ensemble/frontdoor/metrics.prom")
        assert code == 0 and f'ensemble_shard_state{{shard="{two}",state="ready"}} 1' in text
    finally:
        for person in crowd:
            person.leave()

    # one participant stays on shard 2, the one a scale down removes: it waits, then stops; nothing cut
    straggler = Participant(url=f"https://{two}", room="late", address=hosts[two].address, verify=False).join()
    try:
        wait_until(lambda: census(hosts[two]).get("late", 0) == 1 and not census(hosts[one]).get("busy"), 60,
                   "the crowd gone from shard 1, the straggler on shard 2")
        code, out, err = autoscale(config, state)
        assert code == 0, (out, err[-3000:])
        assert (out["action"], out["remove"]) == ("drain", [two]), out
        assert json.loads(state.read_text())["draining"] == [two]
        # the next round waits for the straggler: nothing cut, nothing removed
        code, out, err = autoscale(config, state)
        assert code == 0 and out["action"] == "hold", (out, err[-3000:])
        assert out["figures"]["draining"] == 1, out
        assert two in hosts_of(local_provider, spec)
        assert straggler.joined and census(hosts[two]).get("late", 0) == 1
        for i in range(10):  # drained: new rooms go to shard 1 only
            assert route(door, spec.fleet.domain, f"meanwhile{i}") == (302, one)
    finally:
        straggler.leave()

    # the straggler gone, the next round removes shard 2
    wait_until(lambda: door_reads(door).get(two) == ("draining", 0), 60, "the front door reads shard 2 empty")
    began = time.monotonic()
    code, out, err = autoscale(config, state)
    print(f"\nautoscale removal round (drained, empty shard destroyed, front door redeployed), measured: "
          f"{time.monotonic() - began:.0f}s")
    assert code == 0, (out, err[-3000:])
    assert (out["action"], out["remove"]) == ("down", [two]) and "empty" in out["reason"], out
    assert two not in hosts_of(local_provider, spec)
    assert json.loads(state.read_text())["draining"] == []
    for i in range(10):
        assert route(door, spec.fleet.domain, f"after{i}") == (302, one)
    # nothing left to do
    code, out, err = autoscale(config, state)
    assert code == 0 and out["action"] == "hold", (out, err[-2000:])
