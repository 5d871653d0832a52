"""Lifecycle chains on real hosts, as a user types them, with real participants in real rooms.

deploy 2 shards -> fleet scale 3 -> a new room lands on shard 3 -> deploy (0 changes) and plan agree
-> fleet scale 2 while a participant is in a room on shard 3 (the command waits; the participant
leaves; shard 3 goes; the front door stops routing there; a meeting on shard 1 was never cut)
-> upgrade with a meeting on each shard (each drain waits for its meeting; a newcomer to a running
meeting still lands on its shard; afterwards the front door reads every shard ready, new rooms 302).

Every step is checked from the user's side: the front door's redirects, prosody's census on the
shards, the front door's own state. Participants join through the shards' public nginx the way
jitsi-meet does (tests/standins/xmpp_participant.py).
"""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ensemble_json as ensemble
from conftest import local_spec_toml, ssh_run
from standins.xmpp_participant import Participant

REPO = Path(__file__).resolve().parent.parent
FLEET = "t-chain"

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


def spec_toml() -> str:
    return local_spec_toml(FLEET, 2, header="# test fleet of tests/test_lifecycle_chains.py\n",
                           tail="[jitsi]\netherpad = false\n\n[frontdoor]\nrefresh_interval = 5\n"
                                # the test looks for rooms each shard gets: many new rooms from one client
                                "new_rooms_per_minute = 60000\n")


class Background:
    """A CLI command running in the background; its stderr lines are collected as they come."""

    def __init__(self, *args: str):
        self.proc = subprocess.Popen([sys.executable, "-m", "ensemble.cli", *args, "--json"], cwd=REPO, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for_line(self, needle: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [line for line in self.lines if needle in line]
            if found:
                return found[0]
            assert self.proc.poll() is None, f"ended ({self.proc.returncode}) before {needle!r}: {self.lines[-20:]}"
            time.sleep(0.5)
        raise AssertionError(f"no line with {needle!r} after {timeout}s: {self.lines[-20:]}")

    def finish(self, timeout: float) -> tuple[int, dict]:
        out, _ = self.proc.communicate(timeout=timeout)
        self._reader.join(5)
        try:
            return self.proc.returncode, json.loads(out)
        except ValueError:
            return self.proc.returncode, {}


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(1)


def route(door, domain: str, room: str) -> tuple[int, str]:
    """Ask the front door for a room the way a browser does: (status, the shard it sends us to)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(door.address, 443, timeout=20, context=context)
    try:
        conn.request("GET", f"/{room}", headers={"Host": domain})
        answer = conn.getresponse()
        answer.read()
        location = answer.getheader("Location") or ""
    finally:
        conn.close()
    return answer.status, location.split("://", 1)[-1].split("/", 1)[0]


def census(shard) -> dict[str, int]:
    """{room node: participants} from prosody's census on the shard (what the front door reads)."""
    code, out, err = ssh_run(shard, f"curl -s -H 'Host: {shard.name}' http://127.0.0.1:5280/room-census")
    assert code == 0, err
    rooms = json.loads(out).get("room_census", [])
    return {r["room_name"].split("@")[0]: int(r["participants"]) for r in rooms}


def join(spec, hosts, shard_name: str, room: str) -> Participant:
    shard = hosts[shard_name]
    return Participant(url=f"https://{shard_name}", room=room, address=shard.address, verify=False).join()


def room_on(door, spec, shard_name: str, prefix: str) -> str:
    """A new room name the front door sends to this shard."""
    # a few names per refresh: each name asked for counts as a starting meeting where it went, which
    # moves the next refresh's weights (the front door's own placement at work)
    deadline, i, seen = time.monotonic() + 90, 0, {}
    while time.monotonic() < deadline:
        for _ in range(10):
            room, i = f"{prefix}{i}", i + 1
            status, target = route(door, spec.fleet.domain, room)
            assert status == 302, (room, status)
            seen[target] = seen.get(target, 0) + 1
            if target == shard_name:
                return room
        time.sleep(2)
    raise AssertionError(f"no new room went to {shard_name} in 90 s: {seen}")


@pytest.fixture(scope="module")
def chain(local_provider, tmp_path_factory):
    from ensemble.spec import load_spec

    config = tmp_path_factory.mktemp("chain") / "ensemble.toml"
    config.write_text(spec_toml())
    spec = load_spec(config)
    local_provider.destroy_all(spec)
    try:
        yield config, spec
    finally:
        local_provider.destroy_all(spec)


def hosts_of(local_provider, spec) -> dict:
    return {h.name: h for h in local_provider.list_hosts(spec)}


def test_deploy_scale_up_deploy_scale_down_with_a_meeting_then_upgrade(chain, local_provider):
    config, spec = chain
    one, two, three = (spec.shard_name(n) for n in (1, 2, 3))

    code, out, err = ensemble("deploy", "--config", str(config))
    assert code == 0 and out["ok"], err[-3000:]

    # scale up: created, deployed, and in the front door's maps as ready before the command returns
    code, out, err = ensemble("fleet", "scale", "3", "--config", str(config))
    assert code == 0, err[-3000:]
    assert out["created"] == [three]
    hosts = hosts_of(local_provider, spec)
    door = hosts[spec.fleet.domain]
    room3 = room_on(door, spec, three, "chainroom")

    # the spec still says 2: deploy keeps 3 and changes nothing; plan agrees
    code, out, err = ensemble("deploy", "--config", str(config))
    changes = {n: h["changes"] for n, h in out.get("hosts", {}).items() if h["changes"]}
    # no file rewritten, no package, no restart or reload (seen once in ~6 runs: one change, its name not
    # kept by the assertion then; now printed). Anything else must settle: the next deploy changes nothing.
    touched = [c for names in changes.values() for c in names
               if ": /" in c or "packages" in c or "restart" in c or "reload" in c]
    assert code == 0 and not touched, (changes, err[-2000:])
    if changes:
        print(f"second deploy after scale changed {changes}; deploying once more")
        code, out, err = ensemble("deploy", "--config", str(config))
        assert code == 0 and out["changed"] == 0, ({n: h["changes"] for n, h in out["hosts"].items()}, err[-2000:])
    assert set(out["hosts"]) == {one, two, three, spec.fleet.domain}
    assert any("has 3 shard(s)" in note for note in out["notes"]), out["notes"]
    code, planned, err = ensemble("plan", "--config", str(config))
    assert code == 0 and planned["changed"] == 0 and planned["created"] == [], (planned, err[-2000:])

    # scale down with a participant on shard 3 and one on shard 1 (a meeting elsewhere)
    room1 = room_on(door, spec, one, "keepme")
    staying = join(spec, hosts, one, room1)
    leaving = join(spec, hosts, three, room3)
    try:
        assert census(hosts[three]).get(room3, 0) >= 1 and census(hosts[one]).get(room1, 0) >= 1
        shrink = Background("fleet", "scale", "2", "--config", str(config), "--timeout", "600")
        shrink.wait_for_line(f"waiting for {three}: ", timeout=180)
        # draining: from the front door's next refresh, no new room goes to shard 3; the running room
        # stays pinned there
        # (fresh names each try: a name routed once is pinned to where it went, as a starting meeting is)
        tries = iter(range(1000))
        wait_until(lambda: all(route(door, spec.fleet.domain, f"new{next(tries)}")[1] != three for _ in range(20)),
                   timeout=30, what="the front door stops sending new rooms to the draining shard")
        assert route(door, spec.fleet.domain, room3) == (302, three)
        assert hosts_of(local_provider, spec).keys() >= {three}  # not removed while the meeting runs
        leaving.leave()
        code, out = shrink.finish(timeout=600)
        assert code == 0, shrink.lines[-20:]
        assert out["removed"] == [three]
        assert three not in hosts_of(local_provider, spec)
        for i in range(20):
            status, target = route(door, spec.fleet.domain, f"after{i}")
            assert status == 302 and target in (one, two)
        assert staying.joined and census(hosts[one]).get(room1, 0) >= 1  # never cut
    finally:
        leaving.leave()
        staying.leave()

    # upgrade with a meeting running on each shard
    hosts = hosts_of(local_provider, spec)
    meetings = {name: room_on(door, spec, name, f"upg{n}") for n, name in ((1, one), (2, two))}
    people = {name: join(spec, hosts, name, room) for name, room in meetings.items()}
    try:
        upgrade = Background("upgrade", "--config", str(config), "--timeout", "600")
        for name in (one, two):
            upgrade.wait_for_line(f"waiting for {name}: ", timeout=300)
            # a newcomer to the running meeting still lands on its shard while it drains
            assert route(door, spec.fleet.domain, meetings[name]) == (302, name)
            assert census(hosts[name]).get(meetings[name], 0) >= 1
            people[name].leave()
        code, out = upgrade.finish(timeout=600)
        assert code == 0, upgrade.lines[-30:]
        assert [r["shard"] for r in out["upgraded"]] == [one, two]
    finally:
        for person in people.values():
            person.leave()
    code, state, err = ssh_run(door, "cat /var/lib/ensemble/frontdoor/state.json")
    states = {s["name"]: s["state"] for s in json.loads(state)["plan"]["shards"]}
    assert states == {one: "ready", two: "ready"}, states
    targets = {route(door, spec.fleet.domain, f"fresh{i}") for i in range(20)}
    assert {status for status, _ in targets} == {302} and {t for _, t in targets} <= {one, two}
