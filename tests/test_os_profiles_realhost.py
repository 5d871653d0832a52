"""Every OS profile that boots here runs for real: a shard and a front door per system (trixie, bullseye).

Per system, as a user does it with the real CLI: `ensemble deploy` reports success; the shard serves
its pages over TLS and a participant who joins a room there is counted by its census; the front door's
refresher runs ON that OS (its own python: 3.13 on trixie; 3.9 on bullseye, which has no tomllib, with
click 7.1 and jinja2 2.11) and routes a new room to the shard and the live room to where it lives; a
second deploy reports 0 changes.

trixie: the whole fleet runs debian-trixie (prosody 13, openjdk-21, nginx 1.26 from trixie).
bullseye: only the front door runs bullseye (`provider.local.frontdoor_suite`, a test switch) beside a
bookworm shard. A bullseye shard needs prosody >= 0.12 (jitsi-meet-prosody's Depends), which for bullseye
only prosody.im publishes; prosody.im is out of reach here and bullseye's own prosody is 0.11.9, so no
honest bullseye shard can be installed on this machine (docs/architecture.md, "OS profiles").
bookworm is covered by the other real-host tests (test_deploy_e2e, test_lifecycle_chains, ...).
"""

from __future__ import annotations

import http.client
import json
import ssl
import time

import pytest
from conftest import TEST_STATE_DIR, ssh_run
from conftest import ensemble_json as ensemble
from standins.xmpp_participant import Participant

pytestmark = [pytest.mark.realhost, pytest.mark.slow]

# system -> (fleet name, fleet.os, the front door's suite, the python its refresher runs with there)
SYSTEMS = {"trixie": ("t-os-trixie", "debian-trixie", "", "3.13"),
           "bullseye": ("t-os-bullseye", "debian-bookworm", "bullseye", "3.9")}


def spec_text(fleet: str, os_profile: str, frontdoor_suite: str) -> str:
    return f"""# test fleet of tests/test_os_profiles_realhost.py
[fleet]
name = "{fleet}"
domain = "{fleet}.test"
shards = 1
os = "{os_profile}"

[provider]
kind = "local"

[provider.local]
state_dir = "{TEST_STATE_DIR}"
frontdoor_suite = "{frontdoor_suite}"

[tls]
mode = "self-signed"

[jitsi]
etherpad = false
"""


def https_get(address: str, host: str, path: str) -> tuple[int, str, str]:
    """GET over TLS with the Host a browser sends: (status, Location, body)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # self-signed fleet: the chain is not the point
    conn = http.client.HTTPSConnection(address, 443, timeout=20, context=context)
    try:
        conn.request("GET", path, headers={"Host": host})
        answer = conn.getresponse()
        return answer.status, answer.getheader("Location") or "", answer.read().decode("utf-8", "replace")
    finally:
        conn.close()


def census(shard) -> dict[str, int]:
    """{room node: participants} from prosody's census on the shard (what the front door reads)."""
    code, out, err = ssh_run(shard, f"curl -s -H 'Host: {shard.name}' http://127.0.0.1:5280/room-census")
    assert code == 0, err
    return {r["room_name"].split("@")[0]: int(r["participants"]) for r in json.loads(out).get("room_census", [])}


@pytest.fixture(params=list(SYSTEMS))
def os_fleet(request, local_provider, tmp_path):
    from ensemble.spec import load_spec

    fleet, os_profile, frontdoor_suite, python = SYSTEMS[request.param]
    config = tmp_path / "ensemble.toml"
    config.write_text(spec_text(fleet, os_profile, frontdoor_suite))
    spec = load_spec(config)
    local_provider.destroy_all(spec)
    try:
        yield config, spec, request.param, python
    finally:
        local_provider.destroy_all(spec)


def test_a_shard_and_a_front_door_run_on_the_profile(os_fleet, local_provider):
    config, spec, system, python = os_fleet
    started = time.monotonic()
    code, out, err = ensemble("deploy", "--config", str(config))
    first_deploy = time.monotonic() - started
    assert code == 0 and out.get("ok"), err[-3000:]
    hosts = {h.name: h for h in local_provider.list_hosts(spec)}
    shard, door = hosts[spec.shard_name(1)], hosts[spec.fleet.domain]
    for host, codename in ((shard, spec.profile.codename), (door, system)):
        code, release, _ = ssh_run(host, ". /etc/os-release && echo $VERSION_CODENAME")
        assert release.strip() == codename, (host.name, release)

    # what the system runs: its own prosody (13 on trixie), nginx and coturn (TURN is on by default)
    code, versions, err = ssh_run(shard, "dpkg-query -W -f '${Package} ${Version}\\n' prosody nginx coturn; "
                                         "systemctl is-active prosody nginx coturn")
    assert code == 0 and versions.count("active") == 3, (versions, err)
    series = {"0.12": "0.12", "13": "13."}[spec.profile.prosody_series]
    assert any(line.startswith(f"prosody {series}") for line in versions.splitlines()), versions
    print(f"{system}: shard runs", ", ".join(versions.splitlines()[:3]))

    # the shard: its pages over TLS, a participant in a room, its census counting them
    status, _, body = https_get(shard.address, shard.name, "/")
    assert status == 200 and "<html" in body.lower(), (status, body[:300])
    status, _, body = https_get(shard.address, shard.name, "/config.js")
    assert status == 200 and shard.name in body, (status, body[:300])
    with Participant(url=f"https://{shard.name}", room="osroom", address=shard.address, verify=False):
        assert census(shard).get("osroom") == 1

        # the front door's refresher, run by the host's own python (the timer's unit, started now)
        code, version, err = ssh_run(door, "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'")
        assert version.strip() == python, version
        # jicofo and the bridge may still be joining the brewery: the refresh reads "unhealthy" till then
        deadline, reading, spawn_failures = time.monotonic() + 150, {}, 0
        while time.monotonic() < deadline:
            code, _, err = ssh_run(door, "systemctl start ensemble-frontdoor-refresh.service")
            if code != 0:
                journal = ssh_run(door, "journalctl -u ensemble-frontdoor-refresh --no-pager -n 30")[1]
                result = ssh_run(door, "systemctl show -P Result ensemble-frontdoor-refresh.service")[1].strip()
                # systemd could not spawn the unit's process (seen once in 4 full runs on trixie, not the
                # refresher's doing: that would be Result=exit-code): said, retried once
                if result == "resources" and spawn_failures == 0:
                    spawn_failures += 1
                    print(f"[os profiles] {system}: systemd could not start the refresher once:\n{journal}")
                    time.sleep(3)
                    continue
                pytest.fail(f"the refresher's unit failed (Result={result}): {err}\n{journal}")
            code, state_text, err = ssh_run(door, "cat /var/lib/ensemble/frontdoor/state.json")
            state = json.loads(state_text)
            assert not state["errors"], state["errors"]
            reading = {s["name"]: s for s in state["plan"]["shards"]}[shard.name]
            if reading["state"] == "ready":
                break
            time.sleep(3)
        assert reading["state"] == "ready" and "osroom" in reading["pinned_rooms"], reading

        # a new room and the live room both go to the shard
        for room in ("osroom", "brandnewroom"):
            status, location, _ = https_get(door.address, spec.fleet.domain, f"/{room}")
            assert status == 302 and location.split("://", 1)[-1].split("/", 1)[0] == shard.name, (room, status,
                                                                                                  location)

    started = time.monotonic()
    code, out, err = ensemble("deploy", "--config", str(config))
    second_deploy = time.monotonic() - started
    changes = [f"{n}: {c}" for n, h in out.get("hosts", {}).items() for c in h["changes"]]
    assert code == 0 and out["changed"] == 0, "\n".join(["second deploy changed:", *changes, err[-2000:]])
    print(f"{system}: first deploy {first_deploy:.0f} s, second deploy {second_deploy:.0f} s")
