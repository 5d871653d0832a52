"""The test client `standins.xmpp_participant.Participant` (a real Jitsi Meet participant, signalling only).

Offline: room names as jitsi-meet encodes them, config.js reading, WebSocket frames.
On a real local fleet (1 shard, self-signed TLS, no Etherpad): participants join through the shard's
public nginx, over WebSocket (what the web app picks from config.js) and over BOSH, are counted by
prosody's room census (the front door's source) while joined, stay joined past every server idle limit,
and are no longer counted after leave().
"""

from __future__ import annotations

import json
import time
import xml.etree.ElementTree as ET

import pytest
from conftest import ssh_run
from standins.xmpp_participant import (
    FOCUS_NICK,
    NS_DISCO_ITEMS,
    NS_STANZAS,
    Participant,
    ParticipantError,
    _ws_frame,
    _ws_parse,
    append_url_param,
    backend_safe_room_name,
    parse_config_js,
)

FLEET = "t-xmpp"
ROOM = "Réunion-XMPP"  # typed with a capital and an accent: lives in prosody as r%c3%a9union-xmpp
HOLD_SECONDS = 70  # longer than prosody's BOSH inactivity limit and smacks hibernation (60 s)


# ---------------------------------------------------------------- offline


@pytest.mark.parametrize(("typed", "node"), [
    ("Réunion", "r%c3%a9union"),
    ("r%C3%A9union", "r%c3%a9union"),  # already encoded: decoded first
    ("Équipe", "%c3%a9quipe"),
    ("équipe", "%c3%a9quipe"),
    ("BravoRoom", "bravoroom"),
    ("100%", "100%25"),  # not decodable: kept, then encoded
    ("ﬁle", "file"),  # NFKC
    ("a b!(x)*'~", "a%20b!(x)*'~"),  # encodeURIComponent's unreserved characters stay
])
def test_room_names_are_encoded_like_jitsi_meet(typed, node):
    assert backend_safe_room_name(typed) == node


def test_config_js_as_rendered_by_ensemble_and_as_upstream_writes_it():
    rendered = """// d.test: Jitsi Meet client configuration.
var config = {
    hosts: {
        domain: "d.test",
        muc: "conference.d.test",
        focus: "focus.d.test",
    },
    bosh: "https://d.test/http-bind",
    websocket: "wss://d.test/xmpp-websocket",
    conferenceRequestUrl: "https://d.test/conference-request/v1",
    hiddenDomain: "recorder.d.test",
};"""
    cfg = parse_config_js(rendered, "https://d.test/room")
    assert (cfg.domain, cfg.muc, cfg.websocket, cfg.bosh, cfg.conference_request_url, cfg.prefer_bosh) == (
        "d.test", "conference.d.test", "wss://d.test/xmpp-websocket", "https://d.test/http-bind",
        "https://d.test/conference-request/v1", False)
    upstream = """var config = {
    hosts: {
        domain: 'up.test',
        // anonymousdomain: 'guest.example.com',
        muc: 'conference.' + subdomain + 'up.test',
    },
    bosh: '//up.test/' + subdir + 'http-bind',
    // websocket: 'wss://up.test/xmpp-websocket',
    preferBosh: true,
};"""
    cfg = parse_config_js(upstream, "https://up.test/room")
    assert (cfg.domain, cfg.muc, cfg.websocket, cfg.bosh, cfg.conference_request_url, cfg.prefer_bosh) == (
        "up.test", "conference.up.test", None, "https://up.test/http-bind", None, True)
    assert append_url_param("wss://d.test/xmpp-websocket", "room", "r%c3%a9") == "wss://d.test/xmpp-websocket?room=r%c3%a9"
    assert append_url_param("https://d.test/x?a=1", "room", "b") == "https://d.test/x?a=1&room=b"


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536])
def test_websocket_frames_round_trip(size):
    payload = bytes(range(256)) * (size // 256) + bytes(size % 256)
    buf = bytearray(_ws_frame(0x1, payload) + b"next")
    assert buf[1] & 0x80  # client frames are masked
    assert _ws_parse(buf) == (True, 0x1, payload)
    assert buf == b"next" and _ws_parse(buf) is None  # an incomplete frame waits for more bytes


def test_an_unreachable_site_is_one_clear_error():
    p = Participant("https://nowhere.test:9", "room", address="127.0.0.1", timeout=3)  # discard port: refused
    with pytest.raises(ParticipantError, match=r"^GET https://nowhere.test:9/room: .*refused"):
        p.join()
    assert not p.joined


# ---------------------------------------------------------------- on a real shard


@pytest.fixture(scope="module")
def shard(local_fleet_factory, local_provider):
    """A deployed one-shard fleet (and its front door); the shard's Host, jicofo healthy."""
    from ensemble.fleet import deploy_fleet, summary_table

    spec, hosts = local_fleet_factory(FLEET, shards=1, tls={"mode": "self-signed"}, jitsi={"etherpad": False})
    started = time.monotonic()
    result = deploy_fleet(spec, provider=local_provider, hosts=hosts, progress=lambda _line: None)
    print(f"\n[xmpp participant] deploy of {len(hosts)} host(s): {time.monotonic() - started:.1f} s")
    assert result.ok, summary_table(result)
    host = next(h for h in hosts if h.role == "shard")
    code, out, err = ssh_run(host, "for i in $(seq 90); do "
                                   "curl -fs -o /dev/null http://127.0.0.1:8888/about/health && exit 0; sleep 1; "
                                   "done; exit 1")
    assert code == 0, f"jicofo never became healthy: {out}{err}"
    return host


def census(host) -> dict[str, int]:
    """prosody's room census on the shard: {room JID: participants}."""
    code, out, err = ssh_run(host, f"curl -fsS -H 'Host: {host.name}' http://127.0.0.1:5280/room-census")
    assert code == 0, err
    return {room["room_name"]: room["participants"] for room in json.loads(out)["room_census"]}


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.5)


@pytest.mark.realhost
@pytest.mark.slow
def test_participants_are_counted_while_joined_and_not_after_leaving(shard):
    room_jid = f"r%c3%a9union-xmpp@conference.{shard.name}"
    url = f"https://{shard.name}"
    assert census(shard) == {}

    started = time.monotonic()
    first = Participant(url, ROOM, address=shard.address, verify=False).join()
    joined_first = time.monotonic() - started
    try:
        assert first.transport == "websocket"  # what the web app picks from the shard's config.js
        assert first.service_url == f"wss://{shard.name}/xmpp-websocket?room=r%c3%a9union-xmpp"
        assert first.room_jid == room_jid and first.jid.endswith(f"@{shard.name}/" + first.jid.rsplit("/", 1)[-1])
        assert FOCUS_NICK in first.occupants and first.participants == 1  # the focus created the room first
        assert census(shard) == {room_jid: 1}

        # the same room typed differently, over BOSH
        started = time.monotonic()
        with Participant(url, "réunion-xmpp", address=shard.address, verify=False, transport="bosh") as second:
            joined_second = time.monotonic() - started
            assert second.transport == "bosh" and second.room_jid == room_jid
            first.wait_for_participants(2, timeout=10)
            second.wait_for_participants(2, timeout=10)
            assert census(shard) == {room_jid: 2}

            time.sleep(HOLD_SECONDS)  # keep-alive: still there after every idle limit of the server
            assert first.joined and second.joined, (first.error, second.error)
            assert census(shard) == {room_jid: 2}
            assert first.pings_answered >= HOLD_SECONDS // 10 - 1 and second.pings_answered >= 1
            assert first.keepalive_gets >= 1  # lib-jitsi-meet's HTTP keep-alive of the WebSocket URL
            started = time.monotonic()
        assert not second.joined and second.error is None
        wait_for(lambda: census(shard) == {room_jid: 1}, 15, "the census to count 1 after the BOSH participant left")
        counted_after_leave = time.monotonic() - started
        first.wait_for_participants(1, timeout=10)
    finally:
        started = time.monotonic()
        first.leave()
    assert not first.joined and first.error is None
    # the room empties; the focus then leaves and prosody destroys it
    wait_for(lambda: census(shard).get(room_jid, 0) == 0, 15, "the census to count 0 after the last participant left")
    zero_after_leave = time.monotonic() - started
    wait_for(lambda: census(shard) == {}, 30, "the room to disappear from the census")
    print(f"\n[xmpp participant] join over websocket {joined_first:.2f} s (steps {first.timings}), "
          f"over BOSH {joined_second:.2f} s (steps {second.timings}); census updated "
          f"{counted_after_leave:.2f} s / {zero_after_leave:.2f} s after leave; "
          f"pings answered {first.pings_answered}/{first.pings_sent} (ws), "
          f"{second.pings_answered}/{second.pings_sent} (bosh) over {HOLD_SECONDS} s")


@pytest.mark.realhost
@pytest.mark.slow
def test_prosody_loaded_every_module_the_virtual_host_names(shard):
    """The deployed virtual host (upstream's current layout) names no module the installed jitsi-meet-prosody
    lacks: prosody's error log on the shard has no failed module load."""
    code, out, err = ssh_run(shard, "cat /var/log/prosody/prosody.err /var/log/prosody/prosody.log 2>/dev/null"
                                    " | grep -E 'Unable to load module|Error loading' || true")
    assert code == 0 and out.strip() == "", out + err


@pytest.mark.realhost
@pytest.mark.slow
def test_rooms_are_counted_apart_and_their_names_stay_private(shard):
    """Two rooms, counted apart by the census; through the shard's public signalling, an anonymous participant
    lists no room of the MUC (muc_hide_all) and cannot read a room it is not in, while it can read its own."""
    url = f"https://{shard.name}"
    with Participant(url, "planning", address=shard.address, verify=False) as a, \
            Participant(url, "Standup", address=shard.address, verify=False) as b:
        assert census(shard) == {f"planning@conference.{shard.name}": 1, f"standup@conference.{shard.name}": 1}
        assert a.participants == b.participants == 1
        listed = a.disco(f"conference.{shard.name}", "items")
        assert listed.get("type") == "result" and not list(listed.iter(f"{{{NS_DISCO_ITEMS}}}item")), \
            ET.tostring(listed, "unicode")
        other = a.disco(f"standup@conference.{shard.name}", "info")
        assert other.get("type") == "error" and other.find(f".//{{{NS_STANZAS}}}forbidden") is not None
        assert a.disco(f"planning@conference.{shard.name}", "info").get("type") == "result"
    wait_for(lambda: census(shard) == {}, 30, "both rooms to go")
