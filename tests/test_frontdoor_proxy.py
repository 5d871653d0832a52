"""Proxy mode through real nginx: a room's page, BOSH, websocket and assets all reach one shard;
and a refresh whose maps `nginx -t` rejects leaves the old maps in service."""

from __future__ import annotations

import re
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
from standins.shard_occupancy import Client, FrontdoorUnderTest, OccupancyStandin, ShardsNginx
from test_frontdoor_routing import TOKEN, make_spec, room_names

from ensemble.errors import EnsembleError
from ensemble.frontdoor.rooms import room_key

pytestmark = pytest.mark.needs_tool("nginx")


@pytest.fixture()
def proxy_fleet(tmp_path):
    spec = make_spec("proxy")
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


def page_path(client: Client, room: str) -> str:
    """The URL path a browser ends on for /<room>: with ?ensemble_room=<key> when nginx cannot key the name
    and serves the canonicalising page (room.js computes what rooms.room_key computes)."""
    status, body = client.get(f"/{room}")
    if status == 200 and '<script src="/_ensemble/room.js">' in body:
        return f"/{room}?ensemble_room={room_key(room)}"
    return f"/{room}"


def served_by(client: Client, path: str, headers: dict | None = None) -> str:
    status, body = client.get(path, headers)
    assert status == 200, (path, status, body[:200])
    match = re.search(r"shard=([a-z0-9.-]+)", body)
    assert match, body
    return match.group(1)


def test_all_traffic_of_a_room_reaches_one_shard(proxy_fleet):
    spec, standin, door, client = proxy_fleet
    standin.set_rooms(spec.shard_names()[1], {"busy": 5})
    takers = {name for name, _ in door.refresh().plan.split}  # the others: fdt-2 is above the water level
    seen = {served_by(client, "/Busy")}
    assert served_by(client, "/http-bind?room=busy") == spec.shard_names()[1] in seen
    for room in room_names(400, seed=5):
        path = page_path(client, room)  # names with more than 12 capitals: keyed by the browser
        page = served_by(client, path)
        key = room.lower()
        assert served_by(client, f"/http-bind?room={key}") == page
        assert served_by(client, f"/xmpp-websocket?room={key}") == page
        assert served_by(client, "/libs/app.bundle.min.js", {"Referer": f"http://{spec.fleet.domain}{path}"}) == page
        seen.add(page)
    assert seen == set(spec.shard_names()) and len(takers) == 3
    assert client.get("/http-bind?room=A%20B")[0] == 400  # not a key: jitsi-meet sends them lower-case
    assert client.get("/xmpp-websocket")[0] == 400  # signalling without a room cannot be routed


def test_rejected_maps_leave_the_old_ones_in_service(proxy_fleet):
    spec, standin, door, client = proxy_fleet
    names = spec.shard_names()
    standin.set_rooms(names[2], {"keepme": 3})
    door.refresh()
    before = {room: served_by(client, page_path(client, room)) for room in room_names(200, seed=9)}
    assert served_by(client, "/KeepMe") == names[2]
    old_maps = Path(door.layout.routing_path).read_text()
    # a shard whose upstream nginx cannot use (a bad port): nginx -t fails
    door.layout = replace(door.layout, shard_addresses={**door.layout.shard_addresses, names[3]: "127.0.0.1:99999"})
    standin.set_rooms(names[0], {f"x{i}": 1 for i in range(50)})  # the maps would change
    with pytest.raises(EnsembleError, match="nginx -t rejected the new maps"):
        door.refresh()
    assert Path(door.layout.routing_path).read_text() == old_maps
    assert {room: served_by(client, page_path(client, room)) for room in before} == before
    assert served_by(client, "/KeepMe") == names[2]


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_production_layout_passes_nginx_t(tmp_path, mode):
    """The TLS variant (443 + port 80 redirect and ACME) as deployed, checked by `nginx -t`."""
    from standins.shard_occupancy import NginxInstance, nginx_main_conf

    from ensemble.frontdoor.render import FrontdoorLayout, frontdoor_files, routing_conf, seed_plan

    spec = make_spec(mode)
    tls_dir = tmp_path / "tls"
    (tls_dir / spec.fleet.domain).mkdir(parents=True)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    f"/CN={spec.fleet.domain}", "-keyout", str(tls_dir / spec.fleet.domain / "privkey.pem"),
                    "-out", str(tls_dir / spec.fleet.domain / "fullchain.pem")], check=True, capture_output=True)
    prefix = tmp_path / "door"
    layout = FrontdoorLayout(site_path=str(prefix / "site.conf"), proxy_params_path=str(prefix / "proxy.conf"),
                             routing_path=str(prefix / "routing.conf"), seed_path=str(prefix / "seed.conf"),
                             webroot=str(prefix / "www"), routes_log=str(prefix / "routes.log"),
                             pcre_jit_path=str(prefix / "modules-enabled/50-ensemble-pcre-jit.conf"),
                             tls_dir=str(tls_dir), acme_webroot=str(tmp_path / "acme"),
                             shard_addresses={n: "127.0.0.1:443" for n in spec.shard_names()})
    for item in frontdoor_files(spec, {}, None, layout):
        if item.path.startswith(str(prefix)):
            Path(item.path).parent.mkdir(parents=True, exist_ok=True)
            Path(item.path).write_text(item.content)
    Path(layout.routing_path).write_text(routing_conf(seed_plan(spec), spec, layout))
    nginx = NginxInstance(prefix)
    # main context like Debian's nginx.conf: modules-enabled/*.conf first (the PCRE JIT switch)
    nginx.conf.write_text(f"include {prefix}/modules-enabled/*.conf;\n"
                          + nginx_main_conf(prefix, f"    include {layout.site_path};"))
    assert "pcre_jit on;" in Path(layout.pcre_jit_path).read_text()
    check = subprocess.run(nginx.command("-t"), capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


def test_config_js_follows_its_room_argument(proxy_fleet):
    """Apps load /config.js?room=<key> without a Referer: it comes from the room's shard (proxy mode)."""
    spec, standin, door, client = proxy_fleet
    names = spec.shard_names()
    standin.set_rooms(names[3], {"r%c3%a9union": 2, "bravoroom": 1})
    door.refresh()
    assert served_by(client, "/config.js?room=r%c3%a9union") == names[3]
    assert served_by(client, "/config.js?room=bravoroom") == names[3]
    assert served_by(client, "/config.js", {"Referer": f"http://{spec.fleet.domain}/BravoRoom"}) == names[3]
    referer = f"http://{spec.fleet.domain}/R%C3%A9union?ensemble_room=r%c3%a9union"
    assert served_by(client, "/config.js", {"Referer": referer}) == names[3]
    assert served_by(client, "/libs/app.bundle.min.js", {"Referer": referer}) == names[3]
    assert served_by(client, "/conference-request/v1?room=r%c3%a9union") == names[3]
    assert client.get("/config.js?room=R%C3%A9union")[0] == 400


def test_etherpad_goes_to_the_shard_named_in_its_path(proxy_fleet):
    """A pad's own requests (relative URLs, socket.io) carry no room: config.js names the shard in the path."""
    spec, _, _, client = proxy_fleet
    names = spec.shard_names()
    for name in names:
        status, body = client.get(f"/_shard/{name}/etherpad/p/abc%20d?showChat=false")
        assert status == 200 and f"shard={name} page=/etherpad/p/abc d" in body, body
        assert served_by(client, f"/_shard/{name}/etherpad/socket.io/?EIO=4") == name
    for bad in ("/_shard/127.0.0.1/etherpad/p/x", "/_shard/evil.example/etherpad/p/x", "/_shard/fdt-1/etherpad/"):
        assert client.get(bad)[0] in (400, 404, 503), bad
