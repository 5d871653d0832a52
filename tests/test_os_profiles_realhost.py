"""Every OS profile that boots here runs for real: a shard and a front door per profile (bullseye, trixie).

Per profile, as a user does it with the real CLI: `ensemble deploy` reports success; the shard serves
its pages over TLS and a participant who joins a room there is counted by its census; the front door's
refresher runs ON that OS (its own python: 3.9 on bullseye, which has no tomllib, 3.13 on trixie) and
routes a new room to the shard and a live room to where it lives; a second deploy reports 0 changes.
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

# profile -> (fleet name, the python the front door's refresher runs with there)
PROFILES = {"debian-bullseye": ("t-os-bullseye", "3.9"), "debian-trixie": ("t-os-trixie", "3.13")}


def spec_text(fleet: str, os_profile: str) -> str:
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


@pytest.fixture(params=sorted(PROFILES))
def os_fleet(request, local_provider, tmp_path):
    from ensemble.spec import load_spec

    os_profile = request.param
    fleet, python = PROFILES[os_profile]
    config = tmp_path / "ensemble.toml"
    config.write_text(spec_text(fleet, os_profile))
    spec = load_spec(config)
    local_provider.destroy_all(spec)
    try:
        yield config, spec, python
    finally:
        local_provider.destroy_all(spec)


def test_a_shard_and_a_front_door_run_on_the_profile(os_fleet, local_provider):
    config, spec, python = os_fleet
    started = time.monotonic()
    code, out, err = ensemble("deploy", "--config", str(config))
    first_deploy = time.monotonic() - started
    assert code == 0 and out.get("ok"), err[-3000:]
    hosts = {h.name: h for h in local_provider.list_hosts(spec)}
    shard, door = hosts[spec.shard_name(1)], hosts[spec.fleet.domain]
    for host in (shard, door):
        code, release, _ = ssh_run(host, ". /etc/os-release && echo $VERSION_CODENAME")
        assert release.strip() == spec.profile.codename, (host.name, release)

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
        code, out_, err = ssh_run(door, "systemctl start ensemble-frontdoor-refresh.service")
        assert code == 0, (err, ssh_run(door, "journalctl -u ensemble-frontdoor-refresh --no-pager -n 30")[1])
        code, state_text, err = ssh_run(door, "cat /var/lib/ensemble/frontdoor/state.json")
        state = json.loads(state_text)
        assert not state["errors"], state["errors"]
        shards = {s["name"]: s for s in state["plan"]["shards"]}
        assert shards[shard.name]["state"] == "ready" and "osroom" in shards[shard.name]["pinned_rooms"], shards

        # a new room and the live room both go to the shard
        for room in ("osroom", "brandnewroom"):
            status, location, _ = https_get(door.address, spec.fleet.domain, f"/{room}")
            assert status == 302 and location.split("://", 1)[-1].split("/", 1)[0] == shard.name, (room, status,
                                                                                                  location)

    started = time.monotonic()
    code, out, err = ensemble("deploy", "--config", str(config))
    second_deploy = time.monotonic() - started
    assert code == 0 and out["changed"] == 0, ({n: h["changes"] for n, h in out.get("hosts", {}).items()}, err[-2000:])
    print(f"{spec.fleet.os}: first deploy {first_deploy:.0f} s, second deploy {second_deploy:.0f} s")
