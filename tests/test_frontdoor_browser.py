"""The landing page in headless Chromium: type a name, click "Lancer une réunion", land on the shard
the front door chose (shard names resolve to loopback through Chromium's --host-resolver-rules)."""

from __future__ import annotations

import json
import re

import pytest
from helpers.browser import CHROMEDRIVER, headless_chromium
from standins.shard_occupancy import (
    OCCUPANCY_GUARD,
    FrontdoorUnderTest,
    OccupancyStandin,
    ShardsNginx,
    occupancy_auth_location,
)
from test_frontdoor_routing import TOKEN, make_spec

from ensemble.frontdoor.rooms import room_key, split_bounds, split_choice

pytestmark = pytest.mark.needs_tool("chromium", CHROMEDRIVER, "nginx")


@pytest.fixture()
def browser_fleet(tmp_path):

    spec = make_spec()
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    driver = None
    try:
        driver = headless_chromium(tmp_path, f"MAP *.{spec.fleet.domain} 127.0.0.1, MAP {spec.fleet.domain} 127.0.0.1")
        yield spec, standin, door, driver
    finally:
        if driver:
            driver.quit()
        door.stop()
        shards.stop()
        standin.stop()


def start_meeting(driver, url: str, typed: str, button_text: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    field = driver.find_element(By.ID, "room")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=room]").text  # labelled for screen readers
    field.clear()
    field.send_keys(typed)
    button = driver.find_element(By.ID, "go")
    assert button.text == button_text
    # only our own origin was contacted by the landing page
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(url.split("/?")[0].rstrip("/")) for r in resources), resources
    button.click()
    WebDriverWait(driver, 20).until(ec.title_contains("shard="))
    return driver.current_url


def test_type_a_name_click_and_land_on_the_chosen_shard(browser_fleet):
    spec, standin, door, driver = browser_fleet
    names = spec.shard_names()
    standin.set_rooms(names[0], {f"r{i}": 1 for i in range(40)})
    result = door.refresh()
    home = f"http://{spec.fleet.domain}:{door.port}/"
    landed = start_meeting(driver, home, "Réunion d'équipe", "Lancer une réunion")
    # accents and capitals kept; Chromium itself computed the key on the canonicalising page (room.js)
    path = "R%C3%A9union-d-%C3%A9quipe"
    key = room_key(path)
    assert key == "r%c3%a9union-d-%c3%a9quipe"
    expected = split_choice(key, split_bounds(result.plan.split))
    assert landed == f"http://{expected}:{door.shard_hosts.port}/{path}?ensemble_room={key}"
    assert f"shard={expected}" in driver.title
    # the room is live on another shard (its census names the node): every spelling typed lands there
    other = next(n for n in names if n != expected)
    standin.set_rooms(other, {key: 2})
    door.refresh()
    for typed in ("RÉUNION D'ÉQUIPE", "re\u0301union d'e\u0301quipe", "Réunion-d-Équipe"):
        landed = start_meeting(driver, home, typed, "Lancer une réunion")
        assert landed.startswith(f"http://{other}:") and landed.endswith(f"?ensemble_room={key}"), (typed, landed)
    # empty: a random readable name, in English on the English page
    landed = start_meeting(driver, home + "?lang=en", "", "Start a meeting")
    match = re.fullmatch(rf"http://([a-z0-9.-]+):{door.shard_hosts.port}/([A-Za-z]+[0-9]+)", landed)
    assert match and match.group(1) in names, landed
    assert match.group(1) == split_choice(room_key(match.group(2)), split_bounds(result.plan.split))


# ---------------------------------------------------------------- proxy mode: the front door only

# A shard's web app, reduced to the requests jitsi-meet makes: config.js and a script from the page's origin,
# then the conference request and BOSH at the URLs config.js gives, with ?room=<backend-safe name>.
APP_HTML = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>app</title>
<script src="/config.js"></script><script src="/libs/app.js"></script></head><body></body></html>"""
APP_JS = """
(async function () {
    var segment = location.pathname.slice(location.pathname.lastIndexOf('/') + 1);
    var name = segment.replace(/[:?#[\\]@!$&'()*+,;=></"]/g, '');
    try { name = decodeURIComponent(name); } catch (e) { /* as typed */ }
    var room = encodeURIComponent(name.normalize('NFKC').toLowerCase()).toLowerCase();
    var out = {};
    try {
        var request = JSON.stringify({room: room + '@' + config.hosts.muc});
        var answer = await fetch(config.conferenceRequestUrl + '?room=' + room, {method: 'POST',
            headers: {'Content-Type': 'application/json'}, body: request});
        out.conference = await answer.text();
        var bosh = await fetch(config.bosh + '?room=' + room, {method: 'POST', body: '<body/>'});
        out.bosh = await bosh.text();
    } catch (e) { out.error = String(e); }
    out.resources = performance.getEntriesByType('resource').map(function (e) { return e.name; });
    document.body.setAttribute('data-result', JSON.stringify(out));
})();
"""


def app_shards_conf(shards: list[str], port: int, standin_port: int, token: str, state_dir, www) -> str:
    blocks = []
    for shard in shards:
        guard = OCCUPANCY_GUARD
        blocks.append(f"""
server {{
    listen 127.0.0.1:{port};
    server_name {shard};
    root {www};
    {occupancy_auth_location(token)}
    location = /_ensemble/census {{ {guard} proxy_pass http://127.0.0.1:{standin_port}/{shard}/room-census; }}
    location = /_ensemble/stats {{ {guard} proxy_pass http://127.0.0.1:{standin_port}/{shard}/colibri/stats; }}
    location = /_ensemble/health {{ {guard} proxy_pass http://127.0.0.1:{standin_port}/{shard}/about/health; }}
    location = /_ensemble/state {{ {guard} default_type application/json; alias {state_dir}/{shard}.json; }}
    location = /config.js {{ default_type application/javascript; }}
    location = /libs/app.js {{ default_type application/javascript; }}
    location = /conference-request/v1 {{ default_type application/json;
        return 200 '{{"ready":true,"shard":"{shard}","room":"$arg_room"}}'; }}
    location = /http-bind {{ default_type text/xml; return 200 "<body shard='{shard}' room='$arg_room'/>"; }}
    location / {{ default_type text/html; try_files /app.html =404; }}
}}""")
    return "\n".join(blocks)


def test_proxy_mode_the_browser_contacts_only_the_front_door(tmp_path):
    """Proxy mode with the deployed config.js: a room page, its assets, the conference request and BOSH all go
    to the front door's address (shard names do not even resolve in this browser), and reach the room's shard."""
    from selenium.webdriver.support.ui import WebDriverWait
    from standins.shard_occupancy import nginx_main_conf

    from ensemble.render import shard_files
    from ensemble.secrets import complete_secrets

    spec = make_spec("proxy")
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN)
    www = tmp_path / "www"
    (www / "libs").mkdir(parents=True)
    (www / "app.html").write_text(APP_HTML)
    (www / "libs" / "app.js").write_text(APP_JS)
    shards.conf.write_text(nginx_main_conf(shards.prefix, app_shards_conf(
        spec.shard_names(), shards.port, standin.port, TOKEN, shards.state_dir, www)))
    shards.start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    origin = f"http://{spec.fleet.domain}:{door.port}"
    store: dict = {}
    complete_secrets(store, spec)
    config = next(f for f in shard_files(spec, 1, store) if f.path.endswith("-config.js")).content
    # the deployed file, with the test front door's scheme and port (TLS is not what this test is about)
    config = config.replace(f"https://{spec.fleet.domain}/", f"{origin}/").replace(
        f"wss://{spec.fleet.domain}/", f"ws://{spec.fleet.domain}:{door.port}/")
    (www / "config.js").write_text(config)
    driver = None
    try:
        driver = headless_chromium(tmp_path, f"MAP {spec.fleet.domain} 127.0.0.1, MAP * ~NOTFOUND")
        standin.set_rooms(spec.shard_names()[2], {"r%c3%a9union%20d%c3%a9quipe": 2})
        result = door.refresh()
        for typed, expected in (("R%C3%A9union%20d'%C3%A9quipe", spec.shard_names()[2]),
                                ("RE%CC%81UNION%20D'%C3%89QUIPE", spec.shard_names()[2]),
                                ("BravoRoom", split_choice("bravoroom", split_bounds(result.plan.split)))):
            driver.get(f"{origin}/{typed}")
            try:
                WebDriverWait(driver, 20).until(lambda d: d.find_element("tag name", "body")
                                                .get_attribute("data-result"))
            except Exception as waited:  # say which page the browser ended on
                raise AssertionError((typed, driver.current_url, driver.page_source[:1500])) from waited
            out = json.loads(driver.find_element("tag name", "body").get_attribute("data-result"))
            assert "error" not in out, out
            assert f'"shard":"{expected}"' in out["conference"] and f"shard='{expected}'" in out["bosh"], (typed, out)
            assert driver.current_url.startswith(origin + "/")
            assert out["resources"] and all(r.startswith(origin + "/") for r in out["resources"]), out["resources"]
    finally:
        if driver:
            driver.quit()
        door.stop()
        shards.stop()
        standin.stop()
