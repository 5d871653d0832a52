"""The generated front door served by real nginx, shards played by real nginx + stand-in occupancy.

Thousands of room requests prove: 100 % affinity for pinned and new rooms across refreshes that
change weights; new rooms split as the weights say (chi-square); nginx agrees with the Python
model of split_clients; drained and unreadable shards get no new rooms but keep their rooms;
malformed names get 400; a refresh changes nothing when nothing changed.
"""

from __future__ import annotations

import http.client
import random
import re
import string
import subprocess

import pytest
from standins.shard_occupancy import (
    Client,
    FrontdoorUnderTest,
    NginxInstance,
    OccupancyStandin,
    ShardsNginx,
    free_port,
    nginx_main_conf,
)

from ensemble.frontdoor.drain import set_drain
from ensemble.frontdoor.render import FrontdoorLayout, frontdoor_files, seed_plan
from ensemble.frontdoor.rooms import room_key, split_bounds, split_choice
from ensemble.frontdoor.selection import final_size_estimate
from ensemble.frontdoor.status import format_status, status_rows
from ensemble.providers.base import Host
from ensemble.spec import spec_from_dict

pytestmark = pytest.mark.needs_tool("nginx")

TOKEN = "test-occupancy-token"
CHI2_999 = {1: 10.83, 2: 13.82, 3: 16.27, 4: 18.47}  # chi-square critical values, p = 0.001


def make_spec(mode: str = "redirect", capacity: int = 100, new_rooms_per_minute: int = 60000):
    # these tests play thousands of users from one address: no per-client limit unless asked for
    return spec_from_dict({
        "fleet": {"name": "fdt", "domain": "fd.ensemble.test", "shards": 4},
        "frontdoor": {"mode": mode, "capacity_per_shard": capacity, "refresh_interval": 15, "grace_period": 60,
                      "ready_after": 2, "new_rooms_per_minute": new_rooms_per_minute},
    })


def room_names(count: int, seed: int) -> list[str]:
    """Readable CamelCase room names (like Jitsi's), fixed by the seed."""
    rng = random.Random(seed)
    return ["".join(rng.choice(string.ascii_letters) for _ in range(rng.randint(6, 18))) + str(i)
            for i in range(count)]


@pytest.fixture()
def fleet(tmp_path, request):
    spec = make_spec(capacity=getattr(request, "param", 100))
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    client = Client(door.port, spec.fleet.domain)
    try:
        yield spec, standin, shards, door, client
    finally:
        client.close()
        door.stop()
        shards.stop()
        standin.stop()


def shard_of(client: Client, room: str) -> str:
    """The shard the front door sends a page /<room> to, following the canonicalising step as a browser
    does (its room.js computes what rooms.room_key computes: tests/test_frontdoor_rooms.py)."""
    status, location = client.get(f"/{room}")
    query = ""
    if status == 200 and "/_ensemble/room.js" in location:
        query = f"?ensemble_room={room_key(room)}"
        status, location = client.get(f"/{room}{query}")
    assert status == 302, (room, status, location)
    match = re.fullmatch(r"http://([^/:]+):\d+/(.*)", location)
    assert match and match.group(2) == room + query, location
    return match.group(1)


def drain_writer(shards: ShardsNginx):
    """Writes the drain flag where the shard's nginx serves it (SSH does this on a real shard)."""
    import json

    def write(host: Host, document: dict) -> None:
        shards.state_file(host.name).write_text(json.dumps(document))
    return write


def test_landing_page_and_malformed_rooms(fleet):
    spec, _, _, door, client = fleet
    status, body = client.get("/")
    assert status == 200 and 'lang="fr"' in body and "Lancer une réunion" in body
    status, body = client.get("/?lang=en")
    assert status == 200 and 'lang="en"' in body and "Start a meeting" in body
    for asset in ("/_ensemble/landing.js", "/_ensemble/landing.css", "/", "/?lang=en"):
        _, text = client.get(asset)
        assert not re.search(r"(src|href)=\"(https?:)?//", text) and "url(http" not in text  # no third party
    for bad in ("/a.b", "/a/b", "/..%2F..%2Fetc", "/_ensemble/go?room=%2F%2Fevil.example", "/a%zz", "/a%2",
                "/a<b", '/a"b', "/a%C3%A9?ensemble_room=A%C3%A9", "/a%C3%A9?ensemble_room=~a",
                "/a%C3%A9?ensemble_room=a%2", "/a%C3%A9?ensemble_room=a%20B", "/a%2Fb", "/a%2eb", "/" + "%C3%A9" * 171,
                "/_ensemble/room.html"):
        status, _ = client.get(bad)
        assert status in (400, 404), bad
    # names jitsi-meet accepts but nginx cannot turn into a key: the browser computes it (room.js)
    for other in ("/a%20b", "/%25C3%25A9", "/x%41", "/" + "a" * 81, "/A" + "b" * 80, "/a'b", "/a%22b",
                  "/R%C3%A9union", "/%F0%9F%8E%89"):
        status, body = client.get(other)
        assert status == 200 and '<script src="/_ensemble/room.js">' in body, other
    assert client.get("/_ensemble/go?room=Team-1")[1].endswith("/Team-1")
    assert re.search(r"/reunion-[0-9a-f]{32}$", client.get("/_ensemble/go?room=")[1])
    # case and percent-encoding normalised: the same room whatever its spelling
    spellings = ("R%C3%A9union-X", "r%c3%a9union-x", "R%c3%A9UNION-x", "R%C3%89UNION-X", "Re%CC%81union-x")
    assert len({shard_of(client, room) for room in spellings}) == 1
    # every lower-casing path of the config (none, up to 4 capitals, up to 12, more) gives Python's key
    bounds = split_bounds(seed_plan(spec).split)
    for name in ("abc", "0", "r%c3%a9", "ABCD", "ImpossibleCrimesRefuseAlright", "A" + "b" * 79, "Team_4-Q",
                 "ABCDE", "ABCDEFGHIJKL",
                 "ABCDEFGHIJKLM", "Q" * 80, "aB%C3%A9Cd", "x%E2%82%ACY", "_-Z9"):
        assert shard_of(client, name) == shard_of(client, name.lower()) == split_choice(room_key(name), bounds)


def test_nginx_agrees_with_python_model_and_weights(fleet):
    spec, standin, _, door, client = fleet
    for i, name in enumerate(spec.shard_names()):
        standin.set_rooms(name, {f"busy{i}-{j}": 1 for j in range(10 * i)})  # 0, 10, 20, 30 participants
    result = door.refresh()
    assert result.reloaded
    units = dict(result.plan.split)
    # used 0, 0.1, 0.2, 0.3; fleet 0.15 -> level 0.2: room below it 0.2, 0.1, none, none
    assert [units.get(n, 0) for n in spec.shard_names()] == [6667, 3333, 0, 0]
    bounds = split_bounds(result.plan.split)
    rooms = room_names(4000, seed=7)
    counts = dict.fromkeys(spec.shard_names(), 0)
    for room in rooms:
        got = shard_of(client, room)
        assert got == split_choice(room_key(room), bounds), room  # nginx == the Python model
        counts[got] += 1
    assert counts[spec.shard_names()[3]] == 0  # above the level: no new rooms
    expected = {n: 4000 * units[n] / 10000 for n in units}
    chi2 = sum((counts[n] - expected[n]) ** 2 / expected[n] for n in units)
    assert chi2 < CHI2_999[len(units) - 1], (counts, expected, chi2)


def test_young_rooms_count_at_their_expected_final_size(fleet):
    """Census times (milliseconds) -> each young room's expected final size and the headroom -> the
    weights nginx serves: a room 6 people joined within a minute counts as one of the fleet's big
    rooms, a room still alone after 5 minutes as a small one."""
    spec, standin, _, door, client = fleet
    s1, s2, s3, s4 = spec.shard_names()
    settled = door.clock - 3600
    standin.set_rooms(s1, {f"small{j}": 2 for j in range(8)}, {f"small{j}": settled for j in range(8)})
    standin.set_rooms(s2, {"big0": 8, "big1": 8}, {"big0": settled, "big1": settled})
    standin.set_rooms(s3, {"fast": 6}, {"fast": door.clock - 47})  # the refresh's clock moves 15 s on
    standin.set_rooms(s4, {f"quiet{j}": 1 for j in range(3)}, {f"quiet{j}": door.clock - 287 for j in range(3)})
    result = door.refresh()
    used = {d.name: d.used for d in result.plan.shards}
    spread = 2.4  # the settled sizes 8 x 2 and 2 x 8: mean 3.2, standard deviation 2.4, kept free everywhere
    # ages 62 s and 302 s: estimated in 5-s steps (60 s, 300 s), away from a step's edge (census times are ms)
    quiet = final_size_estimate(1, 300.0, 600.0, ((2, 8), (8, 2)), 3.2)
    assert 2.0 < quiet < 2.3
    assert used == pytest.approx({s1: 0.184, s2: 0.184, s3: (6 + 2 + spread) / 100,
                                  s4: round((3 * quiet + spread) / 100, 4)}, abs=1e-4)
    units = dict(result.plan.split)
    assert units.get(s1, 0) == units.get(s2, 0) == 0 and units[s4] > units[s3] > 0  # the fast room is a big one
    bounds = split_bounds(result.plan.split)
    for room in room_names(300, seed=11):
        assert shard_of(client, room) == split_choice(room_key(room), bounds), room


@pytest.mark.parametrize("fleet", [2000], indirect=True)  # room for 1500 rooms routed within a minute
def test_affinity_across_refreshes_that_change_weights(fleet):
    spec, standin, _, door, client = fleet
    names = spec.shard_names()
    door.refresh()
    rooms = room_names(1500, seed=11)
    first = {room: shard_of(client, room) for room in rooms}
    # some rooms start (census), the others were only routed (nobody joined yet)
    live = rooms[:200]  # about 50 participants per shard
    for shard in names:
        standin.set_rooms(shard, {room.lower(): 1 for room in live if first[room] == shard})
    standin.set_rooms(names[0], {**{r.lower(): 1 for r in live if first[r] == names[0]},
                                 **{f"big{j}": 1 for j in range(300)}})  # shard 1 gets busier: weights move
    before = door.refresh()
    assert before.changed and dict(before.plan.split).get(names[0], 0) < 2500
    bounds = split_bounds(before.plan.split)
    moved_by_split = [r for r in rooms[200:] if split_choice(room_key(r), bounds) != first[r]]
    assert len(moved_by_split) > 100  # without pins, the new weights would move these rooms
    second = {room: shard_of(client, room) for room in rooms}
    assert second == first  # 100 %: live rooms by census pins, routed rooms by route-log pins
    # a room opened after the refresh lands on one shard, whatever its spelling, every time
    fresh = room_names(300, seed=12)
    placed = {room: shard_of(client, room) for room in fresh}
    assert all(shard_of(client, room.upper()) == placed[room] for room in fresh)
    # another refresh with other weights: everything above still lands where it did
    standin.set_stress(names[1], 0.5)
    again = door.refresh()
    assert again.changed
    assert {room: shard_of(client, room) for room in rooms} == first
    assert {room: shard_of(client, room) for room in fresh} == placed


def test_drained_and_unreadable_shards_get_no_new_rooms_but_keep_theirs(fleet):
    spec, standin, shards, door, client = fleet
    names = spec.shard_names()
    standin.set_rooms(names[2], {"drainroom": 4})
    standin.set_rooms(names[3], {"downroom": 2})
    door.refresh()
    host = Host(name=names[2], role="shard", shard=3, address="127.0.0.1")
    set_drain(host, True, writer=drain_writer(shards))
    standin.set_down(names[3])
    result = door.refresh()
    states = {d.name: d.state for d in result.plan.shards}
    assert states == {names[0]: "ready", names[1]: "ready", names[2]: "draining", names[3]: "unhealthy"}
    assert {n for n, _ in result.plan.split} == {names[0], names[1]}
    new_rooms = room_names(2000, seed=21)
    got = {shard_of(client, room) for room in new_rooms}
    assert got == {names[0], names[1]}
    assert shard_of(client, "DrainRoom") == names[2]  # live rooms stay on the draining shard
    assert shard_of(client, "downroom") == names[3]  # and on an unreadable one, within the grace period
    # status shows it
    table = format_status(status_rows(__import__("json").loads(open(door.layout.state_path).read())))
    assert re.search(rf"{re.escape(names[2])}\s+draining", table) and "unhealthy" in table
    # past the grace period the unreadable shard's pins go
    door.refresh(advance=61)
    assert shard_of(client, "downroom") != names[3]
    # back: it must answer ready_after (2) times before taking new rooms
    standin.set_down(names[3], False)
    assert {d.name: d.state for d in door.refresh().plan.shards}[names[3]] == "unhealthy"
    assert {d.name: d.state for d in door.refresh().plan.shards}[names[3]] == "ready"
    set_drain(host, False, writer=drain_writer(shards))
    standin.set_rooms(names[2], {})  # meetings over: every shard as empty as the others
    standin.set_rooms(names[3], {})
    final = door.refresh()
    assert {n for n, _ in final.plan.split} == set(names)
    assert names[2] in {shard_of(client, room) for room in room_names(400, seed=22)}


def test_refresh_reloads_only_on_change(fleet):
    spec, standin, _, door, _ = fleet
    standin.set_rooms(spec.shard_names()[0], {"a": 2})
    assert door.refresh().reloaded
    unchanged = door.refresh()
    assert not unchanged.changed and not unchanged.reloaded


def test_live_accented_rooms_are_pinned_whatever_their_spelling(fleet):
    """The census reports nodes as jitsi-meet joined them (r%c3%a9union...): every live room is pinned, and
    every spelling of its name reaches it; map keys that nginx would read as keywords or escapes stay literal."""
    spec, standin, _, door, client = fleet
    names = spec.shard_names()
    team = "r%c3%a9union%20d%c3%a9quipe"
    live = {team: 3, "%c3%a9quipe": 2, "%f0%9f%8e%89f%c3%aate": 2, "default": 1, "include": 1, "hostnames": 1,
            "volatile": 1, "test": 1, "nuit": 1, "room": 1, "~": 0}
    # put each room on a shard split_clients would NOT choose, so only a pin can send it there
    bounds = split_bounds(door.refresh().plan.split)
    placed: dict[str, str] = {}
    for key in live:
        placed[key] = next(n for n in names if n != split_choice(key, bounds))
    for shard in names:
        standin.set_rooms(shard, {k: n for k, n in live.items() if placed[k] == shard and n})
    result = door.refresh()
    assert {key for key in live if live[key]} <= set(result.plan.pins)
    spellings = ["R%C3%A9union%20d'%C3%A9quipe", "r%c3%a9union%20d'%c3%a9quipe", "RE%CC%81UNION%20D'E%CC%81QUIPE",
                 "R%C3%89union%20d'%C3%89quipe", "r%C3%A9union%20D%C3%A9quipe"]
    assert {shard_of(client, s) for s in spellings} == {placed[team]}
    assert {shard_of(client, s) for s in ("%C3%89quipe", "%c3%a9quipe", "E%CC%81QUIPE")} == {placed["%c3%a9quipe"]}
    assert shard_of(client, "%F0%9F%8E%89F%C3%8ATE") == placed["%f0%9f%8e%89f%c3%aate"]
    for key in ("default", "include", "hostnames", "volatile", "test", "nuit", "room"):
        assert shard_of(client, key.capitalize()) == placed[key], key
    # a room that is not live still follows the split (the keyword entries did not become the default)
    assert shard_of(client, "SomeOtherRoom") == split_choice("someotherroom", split_bounds(result.plan.split))


def test_config_js_redirects_to_its_rooms_shard(fleet):
    spec, standin, _, door, client = fleet
    names = spec.shard_names()
    standin.set_rooms(names[1], {"%c3%a9quipe": 2})
    door.refresh()
    status, location = client.get("/config.js?room=%c3%a9quipe")
    assert status == 302 and re.fullmatch(rf"http://{re.escape(names[1])}:\d+/config\.js\?room=%c3%a9quipe", location)
    assert client.get("/config.js")[0] == 400 and client.get("/config.js?room=%C3%89quipe")[0] == 400
    # a new room: after the limit, the page's named location passes the request on as sent
    status, location = client.get("/config.js?room=brandnew-1")
    shard = "|".join(map(re.escape, names))
    assert status == 302 and re.fullmatch(rf"http://(?:{shard}):\d+/config\.js\?room=brandnew-1", location), location
    assert " brandnew-1 " in (door.prefix / "logs" / "routes.log").read_text()


def test_simple_live_names_in_any_spelling_and_new_rooms_leave_no_error_log_line(fleet):
    """Joins of a live room with a simple name are found by the raw name in any case (the raw-name pin map);
    a spelling that needs decoding still reaches the room through its key; new rooms are redirected by the
    split, logged in the route log, and write nothing to the error log (no deny per new room)."""
    spec, standin, _, door, client = fleet
    names = spec.shard_names()
    bounds = split_bounds(door.refresh().plan.split)
    key = "teammeeting-42"
    home = next(n for n in names if n != split_choice(key, bounds))  # only the pin sends it there
    standin.set_rooms(home, {key: 3})
    result = door.refresh()
    assert result.plan.pins[key] == home
    for spelling in ("TeamMeeting-42", "teammeeting-42", "TEAMMEETING-42", "team%4Deeting-42"):
        assert shard_of(client, spelling) == home, spelling
    fresh = [f"FreshRoom{i}" for i in range(20)]
    for name in fresh:
        assert shard_of(client, name) == split_choice(name.lower(), split_bounds(result.plan.split)), name
    routes = (door.prefix / "logs" / "routes.log").read_text()
    assert all(f" {name.lower()} " in routes for name in fresh) and f" {key} " not in routes
    assert "forbidden" not in (door.prefix / "error.log").read_text()


def test_a_live_room_with_the_longest_key_is_pinned_and_the_maps_still_load(fleet):
    """Any client can make a key of 1023 characters (an XMPP node's limit); its pin must not stop nginx from
    loading the maps (a hash bucket too small for it failed `nginx -t` and froze routing at the old maps)."""
    spec, standin, _, door, client = fleet
    names = spec.shard_names()
    segment = "%C3%A9" + "a" * 1017
    key = room_key(segment)
    assert key is not None and len(key) == 1023
    bounds = split_bounds(door.refresh().plan.split)
    home = next(n for n in names if n != split_choice(key, bounds))
    standin.set_rooms(home, {key: 2})
    result = door.refresh()
    assert result.reloaded and result.plan.pins[key] == home
    assert shard_of(client, segment) == home


def test_new_room_clients_are_an_ipv4_address_or_an_ipv6_64(tmp_path):
    """The per-client key of the new-room limit, as the generated geo and maps compute it in a real nginx
    reached over IPv4 and IPv6: the address for IPv4, the /64 for IPv6."""
    site = next(f.content for f in frontdoor_files(make_spec(), {}, None, FrontdoorLayout(tls=False))
                if f.path == FrontdoorLayout().site_path)
    client_maps = site[site.index("geo $fd_ipv6"):site.index("map $fd_log_new")]
    port = free_port()
    nginx = NginxInstance(tmp_path)
    server = f'server {{ listen 127.0.0.1:{port}; listen [::1]:{port}; return 200 "$fd_ipv6 $fd_client_v6"; }}'
    nginx.conf.write_text(nginx_main_conf(tmp_path, client_maps + server))
    nginx.start()
    try:
        answers = {}
        for host in ("127.0.0.1", "::1"):
            connection = http.client.HTTPConnection(host, port, timeout=10)
            connection.request("GET", "/")
            answers[host] = connection.getresponse().read().decode()
            connection.close()
    finally:
        nginx.stop()
    assert answers == {"127.0.0.1": "0 127.0.0.1", "::1": "1 v6 "}  # ::1 is in ::/64
    assert "duplicate" not in (tmp_path / "error.log").read_text()


def test_a_refresh_that_reloads_returns_with_new_workers_serving(fleet):
    """The catch-up read of the route log (rooms the old maps routed during the reload) happens once the new
    maps are in service: the reload signal returns before nginx has read them (a room was split in a real
    browser run when the read came first)."""
    from ensemble.frontdoor.refresh import nginx_workers, refresh

    spec, standin, _, door, client = fleet
    door.refresh()
    listed = subprocess.run(["ps", "-o", "pid=", "--ppid", str(door.master_pid())], capture_output=True, text=True)
    assert nginx_workers(door.nginx.pid_file) == {int(p) for p in listed.stdout.split()} != set()  # as ps sees
    names = spec.shard_names()
    standin.set_rooms(names[0], {f"busy{j}": 1 for j in range(400)})  # the weights move: a reload
    before = door.worker_pids()
    door.clock += spec.frontdoor.refresh_interval
    result = refresh(spec, door.layout, door.source, door.nginx, now=door.clock)
    assert result.reloaded
    assert door.worker_pids() - before, "refresh returned before nginx's new workers were serving"
    door.wait_workers_replaced(before)


def test_names_that_almost_match_are_refused_without_backtracking(fleet):
    """Near misses of the key and page patterns (valid up to their last character) get 400 at once: with
    nested repetitions each held a worker ~0.2 s and wrote a PCRE match-limit alert, before any limit."""
    _, _, _, door, client = fleet
    near = "a" * 30
    for path in (f"/_ensemble/go?room={near}.", f"/config.js?room={near}+", f"/x%C3%A9?ensemble_room={near}A",
                 f"/{near}[", f"/x%C3%A9?ensemble_room={'%aa' * 20}%"):
        assert client.get(path)[0] == 400, path
    log = (door.prefix / "error.log").read_text()
    assert "pcre" not in log.lower(), log[-2000:]


def test_redirects_to_the_front_doors_own_paths_ignore_the_host_header(fleet):
    """/_ensemble/go answers a relative Location: an absolute one was built from the request's Host."""
    _, _, _, door, client = fleet
    for path in ("/_ensemble/go?room=Team", "/_ensemble/go?room="):
        status, location = client.get(path, {"Host": "evil.example"})
        assert status == 302 and location.startswith("/") and "evil" not in location, location
    status, _ = client.get("/_ensemble/no-such-file")
    assert status == 404 and "no-such-file" not in (door.prefix / "error.log").read_text()
