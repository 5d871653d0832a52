"""Accented room names on real hosts, in redirect and in proxy mode.

Participants typing "Réunion d'équipe" in different spellings through the front door all land on one shard,
which prosody's census counts, and the front door pins the room under the node the census reports even when
the split would send the name elsewhere (its shard is drained). In proxy mode the participants contact the
front door's address only (shard names do not even resolve for them).

Participants are real Jitsi Meet participants (signalling only, tests/standins/xmpp_participant.py): they open
the room's page at the front door as a browser does (the canonicalising page included), then the conference
request and XMPP at the URLs of the config.js they get.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import ssh_run, wait_jicofo_healthy
from standins.xmpp_participant import Participant, ParticipantError

from ensemble.frontdoor.drain import set_drain

FLEETS = {"redirect": "t-ro-rooms", "proxy": "t-ro-proxy"}
NODE = "r%c3%a9union%20d%c3%a9quipe"
SPELLINGS = ["RÉUNION D'ÉQUIPE", "Re\u0301union d'E\u0301QUIPE", "r%c3%a9union d'%C3%89quipe"]

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


@pytest.fixture(scope="module", params=["redirect", "proxy"])
def fleet(request, local_fleet_factory, local_provider):
    from ensemble.fleet import deploy_fleet, summary_table

    mode = request.param
    spec, hosts = local_fleet_factory(FLEETS[mode], shards=2, tls={"mode": "self-signed"},
                                      jitsi={"etherpad": False}, frontdoor={"refresh_interval": 5, "mode": mode})
    started = time.monotonic()
    result = deploy_fleet(spec, provider=local_provider, hosts=hosts, progress=lambda _line: None)
    print(f"\n[rooms e2e] deploy of {len(hosts)} hosts: {time.monotonic() - started:.1f} s")
    assert result.ok, summary_table(result)
    shards = {h.name: h for h in hosts if h.role == "shard"}
    door = next(h for h in hosts if h.role == "frontdoor")
    wait_jicofo_healthy(shards.values())
    def all_ready() -> bool:
        maps = routing_maps(door)  # not the seed maps: the refresher's own reading, new rooms taken
        return "(seed" not in maps and all(re.search(rf"^# {re.escape(name)} ready weight=[1-9]", maps, re.M)
                                           for name in shards)

    wait_for(all_ready, 180, "the front door to read every shard as ready")

    # the reload that put those maps in service has finished, and they stay (no probe room is routed here:
    # a routed room counts as pending and moves the weights of the next refreshes)
    time.sleep(2 * spec.frontdoor.refresh_interval)
    wait_for(all_ready, 60, "the front door to keep every shard ready")
    yield spec, shards, door
    local_provider.destroy_all(spec)  # one fleet at a time on the shared machine


def census(shard) -> dict[str, int]:
    code, out, err = ssh_run(shard, f"curl -fsS -H 'Host: {shard.name}' http://127.0.0.1:5280/room-census")
    assert code == 0, err
    return {r["room_name"].split("@")[0]: int(r["participants"]) for r in json.loads(out).get("room_census", [])}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout:.0f} s: {what}"
        time.sleep(1)


def routing_maps(door) -> str:
    code, out, err = ssh_run(door, "cat /var/lib/ensemble/frontdoor/routing.conf")
    assert code == 0, err
    return out


def test_every_spelling_lands_on_the_rooms_shard_and_the_census_counts_them(fleet):
    spec, shards, door = fleet
    proxy = spec.frontdoor.mode == "proxy"
    front = spec.fleet.domain
    resolve = {front: door.address}
    if not proxy:  # redirect mode: the browser goes on to the shard's own name
        resolve.update({name: h.address for name, h in shards.items()})

    def shard_of(p: Participant) -> str:
        shard = p.room_jid.split("@conference.", 1)[1]
        if proxy:  # the page, config.js, conference request and XMPP all at the front door's address
            assert p.page_url.startswith(f"https://{front}/") and p.service_url.startswith(f"wss://{front}/"), p
            assert p.config.conference_request_url.startswith(f"https://{front}/"), p.config
        else:
            assert p.page_url.startswith(f"https://{shard}/"), p.page_url
        return shard

    def participant(room: str) -> Participant:
        try:
            return Participant(f"https://{front}", room, resolve=resolve, verify=False).join()
        except ParticipantError as error:  # say what the front door had in service
            _, log, _ = ssh_run(door, "tail -n 5 /var/log/nginx/error.log")
            raise AssertionError(f"{room}: {error}\n{routing_maps(door)}\n{log}") from error

    joined = [participant("Réunion d'équipe")]
    try:
        first = joined[0]
        home = shard_of(first)
        other = next(name for name in shards if name != home)
        assert first.room_jid == f"{NODE}@conference.{home}", first.room_jid
        wait_for(lambda: census(shards[home]) == {NODE: 1}, 20, "the census to count the first participant")
        # the room's shard takes no new rooms; only the census pin can still send the room there
        set_drain(shards[home], True)
        wait_for(lambda: f"# {home} draining" in routing_maps(door) and f'"\\\\{NODE}" {home};' in routing_maps(door),
                 60, "the front door to drain the shard and pin the room under its census node")
        assert f"# {other} ready" in routing_maps(door)
        for typed in SPELLINGS:
            p = participant(typed)
            joined.append(p)
            assert shard_of(p) == home and p.room_jid == first.room_jid, (typed, p.page_url, p.room_jid)
        first.wait_for_participants(len(joined), timeout=20)
        assert census(shards[home]) == {NODE: len(joined)}
        assert census(shards[other]) == {}
        # a new room goes to the other shard meanwhile (the drain is in force)
        with participant("Planning") as newcomer:
            assert shard_of(newcomer) == other
    finally:
        for p in joined:
            p.leave()
        set_drain(shards[home], False) if "home" in locals() else None
