"""Real browsers through the front door of a real 2-shard fleet, in redirect and in proxy mode; then a
package upgrade that restarts nothing.

Each participant is its own headless Chromium (own profile, names resolved only to the fleet's
addresses), doing what a user does: "Réunion d'équipe" typed with its accents and capitals into the front
door's landing page, "Planning" typed in the address bar; then the name typed on the pre-join screen and
"join". The page is the stand-in web app (ensemble/standins/jitsi/web), which joins like jitsi-meet: the
config.js of the page's origin, the backend-safe room name, the conference request to
conferenceRequestUrl, XMPP over the configured WebSocket, anonymous login, MUC presence with the display
name, through the real nginx of the front door and shard into the real prosody.

Chain (per mode, one fleet at a time): 3 participants in "Réunion d'équipe" and 2 in "Planning" -> each
room's participants on one shard, which prosody's census counts (and every page sees every display
name) -> the room's shard announces a tiny capacity, so the weights favour the other shard (a new room
goes there) -> a 4th participant still lands on the room's shard -> the other shard is drained and
undrained (`ensemble fleet drain|undrain`) -> a 4th participant still lands there. One participant speaks
BOSH (jitsi-meet's `#config.preferBosh=true`), the others WebSocket, as config.js says. Proxy mode: every
request of every browser went to the front door's name and address (Chromium's performance log; no other
name even resolves).
Then (proxy fleet) the stand-in repository is bumped, the shards `apt-get upgrade`, and `ensemble deploy`
restarts none of prosody, jicofo, jitsi-videobridge2, nginx; a second deploy changes nothing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ensemble_json, local_spec_toml, ssh_run, wait_jicofo_healthy
from helpers.browser import CHROMEDRIVER, contacted, headless_chromium
from helpers.upgrade import (
    APT_UPGRADE,
    JITSI_SERVICES,
    deploy_changes,
    failure,
    jitsi_versions,
    point_at,
    service_states,
)
from test_rooms_e2e import census, routing_maps, wait_for

from ensemble.frontdoor.rooms import room_key
from ensemble.standins.jitsi_repo import build_standin_repo

FLEETS = {"redirect": "t-bx-redirect", "proxy": "t-bx-proxy"}
ACCENTED = "Réunion d'équipe"
ASCII = "Planning"
JOIN_TIMEOUT = 90  # s: page, conference request (jicofo), XMPP login and MUC join on a loaded machine

pytestmark = [pytest.mark.realhost, pytest.mark.slow, pytest.mark.needs_tool("chromium", CHROMEDRIVER)]


def cli(config: Path, *args: str) -> str:
    """The real `ensemble` CLI (no --json), as an operator runs it; its stdout."""
    proc = subprocess.run([sys.executable, "-m", "ensemble.cli", *args, "--config", str(config)],
                          cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"ensemble {' '.join(args)}: {failure(proc.stderr)}"
    return proc.stdout


@pytest.fixture(scope="module", params=["redirect", "proxy"])
def fleet(request, local_provider, tmp_path_factory):
    """(mode, config, spec, {shard name: host}, front door host, served repo folder, work folder)."""
    from ensemble.spec import load_spec

    mode = request.param
    name = FLEETS[mode]
    work = tmp_path_factory.mktemp(name)
    # the repository is served from a folder of links, so that a test can bump its release (helpers.upgrade)
    first = build_standin_repo(work / "cache", revision=1)
    served = work / "served"
    served.mkdir()
    point_at(served, first.path)

    def spec_toml(repo: dict[str, str]) -> str:
        jitsi = "".join(f'{key} = "{value}"\n' for key, value in repo.items())
        return local_spec_toml(name, 2, header="# test fleet of tests/test_browser_e2e.py\n",
                               tail=f"[jitsi]\netherpad = false\n{jitsi}\n"
                                    f'[frontdoor]\nmode = "{mode}"\nrefresh_interval = 5\n')

    config = work / "ensemble.toml"
    config.write_text(spec_toml({}))
    spec = load_spec(config)
    local_provider.destroy_all(spec)  # what an earlier run left
    url = local_provider.serve_directory(spec, f"{name}-jitsi", served).rstrip("/")
    config.write_text(spec_toml(first.apt_settings(url)))
    spec = load_spec(config)
    try:
        started = time.monotonic()
        code, _, err = ensemble_json("deploy", "--config", str(config))
        print(f"\n[browser e2e] {mode}: deploy of 3 hosts {time.monotonic() - started:.0f} s")
        assert code == 0, failure(err)
        hosts = local_provider.list_hosts(spec)
        shards = {h.name: h for h in hosts if h.role == "shard"}
        door = next(h for h in hosts if h.role == "frontdoor")
        wait_jicofo_healthy(shards.values())
        wait_for(lambda: "(seed" not in routing_maps(door) and all(shard_state(door, n)[0] == "ready" for n in shards),
                 180, "the front door to read every shard as ready")
        yield mode, config, spec, shards, door, served, work
    finally:
        local_provider.destroy_all(spec)  # one fleet at a time on the shared machine


def shard_state(door, shard: str) -> tuple[str, int]:
    """(state, weight in 0.01 % of new rooms) of a shard in the maps the front door has in service."""
    for line in routing_maps(door).splitlines():
        parts = line.split()
        if parts[:2] == ["#", shard] and len(parts) > 2:
            weights = [p for p in parts[3:] if p.startswith("weight=")]
            return parts[2], int(weights[0].split("=")[1]) if weights else 0
    return "absent", 0


class Browser:
    """One participant: its own headless Chromium, joined through the front door like a user."""

    def __init__(self, fleet, tmp: Path, display_name: str):
        mode, _config, spec, shards, door, _served, _work = fleet
        self.front = spec.fleet.domain
        self.proxy = mode == "proxy"
        self.door = door
        self.display_name = display_name
        rules = [f"MAP {self.front} {door.address}"]
        if not self.proxy:  # redirect mode: the browser goes on to the shard's own name
            rules += [f"MAP {name} {host.address}" for name, host in shards.items()]
        self.driver = headless_chromium(tmp, ", ".join([*rules, "MAP * ~NOTFOUND"]), insecure=True,
                                        network_log=True, profile=f"chromium-{display_name}")
        self.requests: dict[str, str] = {}

    def open_by_form(self, typed: str) -> Browser:
        """The landing page: type the room's name, "Lancer une réunion"."""
        from selenium.webdriver.common.by import By

        self.driver.get(f"https://{self.front}/")
        self.driver.find_element(By.ID, "room").send_keys(typed)
        self.driver.find_element(By.ID, "go").click()
        return self._join()

    def open_by_address(self, typed: str) -> Browser:
        """The address bar: https://<front door>/<room> as typed (Chromium encodes it as a user's would be)."""
        self.driver.get(f"https://{self.front}/{typed}")
        return self._join()

    def _join(self) -> Browser:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.support.ui import WebDriverWait

        def body(attribute: str) -> str | None:
            return self.driver.find_element(By.TAG_NAME, "body").get_attribute(f"data-standin-{attribute}")

        try:
            WebDriverWait(self.driver, 30).until(lambda d: body("prejoin") or body("error"))
            assert not body("error"), body("error")
            field = self.driver.find_element(By.ID, "standin-display-name")
            field.clear()
            field.send_keys(self.display_name)
            self.driver.find_element(By.ID, "standin-join").click()
            WebDriverWait(self.driver, JOIN_TIMEOUT).until(lambda d: body("joined") == "true" or body("error"))
            assert body("joined") == "true", body("error")
        except Exception as error:  # say where the browser was, what failed, what the front door had in service
            failed = {u: a for u, a in contacted(self.driver).items() if a.startswith("failed")}
            raise AssertionError(f"{self.display_name}: {error!r} at {self.driver.current_url}\n{failed}\n"
                                 f"{self.driver.find_element(By.TAG_NAME, 'body').text[:800]}\n"
                                 f"{routing_maps(self.door)}") from error
        self.node = body("room")
        self.transport = body("transport")
        self.shard = self.driver.execute_script("return config.hosts.domain")
        self.url = self.driver.current_url
        self.requests.update(contacted(self.driver))
        if body("retried"):  # tolerated, as by jitsi-meet; said, to find out what fails (seen once with BOSH)
            print(f"\n[browser e2e] {self.display_name} sent requests again: {body('retried')} "
                  f"{ {u: a for u, a in self.requests.items() if a.startswith('failed')} }")
        return self

    def names(self) -> list[str]:
        """Display names of the room's participants as this page sees them (the focus excluded)."""
        self.requests.update(contacted(self.driver))
        return json.loads(self.driver.find_element("tag name", "body").get_attribute("data-standin-names") or "[]")

    def check_origin(self) -> None:
        """Redirect mode: the page is the shard's own. Proxy mode: every request went to the front door
        (its name, its address), WebSocket included; no other name resolves in this browser anyway."""
        self.requests.update(contacted(self.driver))
        if self.proxy:
            assert urllib.parse.urlsplit(self.url).hostname == self.front, self.url
            network = {u: a for u, a in self.requests.items() if u.split(":", 1)[0] in ("http", "https", "ws", "wss")}
            foreign = {u: a for u, a in network.items()
                       if urllib.parse.urlsplit(u).hostname != self.front
                       or not (a in ("", self.door.address) or a.startswith("failed"))}
            assert not foreign, foreign
            assert any(a == self.door.address for a in network.values()), network  # the log has addresses
            signalling = {"websocket": f"wss://{self.front}/xmpp-websocket?room={self.node}",
                          "bosh": f"https://{self.front}/http-bind?room={self.node}"}[self.transport]
            for url in (signalling, f"https://{self.front}/conference-request/v1?room={self.node}"):
                assert url in network, (url, network)
        else:
            assert urllib.parse.urlsplit(self.url).hostname == self.shard, (self.url, self.shard)

    def quit(self) -> None:
        """Close the browser (its tab goes away, as a user closing it); idempotent."""
        if self.driver is not None:
            self.driver.quit()
            self.driver = None


def test_rooms_stay_on_their_shard_through_weights_and_drains(fleet, tmp_path):
    from ensemble.frontdoor.drain import ssh_state_writer, state_document

    mode, config, spec, shards, door, _served, _work = fleet
    browsers: list[Browser] = []

    def participant(name: str, typed: str, by_form: bool) -> Browser:
        browser = Browser(fleet, tmp_path, name)
        browsers.append(browser)
        return browser.open_by_form(typed) if by_form else browser.open_by_address(typed)

    try:
        started = time.monotonic()
        meeting = [participant("Amélie", ACCENTED, True)]
        home = meeting[0].shard
        # the others in parallel, as people join a meeting at its start
        with ThreadPoolExecutor(4) as pool:
            later = [pool.submit(participant, n, ACCENTED, True) for n in ("Bérénice", "Chloé")]
            # Eve's browser speaks BOSH (jitsi-meet's URL override of config.preferBosh), Dan's WebSocket
            planning = [pool.submit(participant, n, typed, False)
                        for n, typed in (("Dan", ASCII), ("Eve", ASCII + "#config.preferBosh=true"))]
            meeting += [f.result() for f in later]
            planning = [f.result() for f in planning]
        print(f"\n[browser e2e] {mode}: 5 browsers joined in {time.monotonic() - started:.0f} s")

        # the node jitsi-meet joins is the front door's key of the path the landing page chose (accents kept)
        segment = urllib.parse.urlsplit(meeting[0].url).path.rsplit("/", 1)[1]
        node = room_key(segment)
        assert "%c3%a9" in node and node == node.lower(), node
        planning_node = "planning"
        assert [p.transport for p in meeting + planning] == ["websocket"] * 4 + ["bosh"]
        for room, people, expected in ((node, meeting, 3), (planning_node, planning, 2)):
            shard = people[0].shard
            assert {(p.node, p.shard) for p in people} == {(room, shard)}, [(p.url, p.shard) for p in people]
            for p in people:
                p.check_origin()
            wait_for(lambda s=shard, r=room, n=expected: census(shards[s]).get(r) == n, 30,  # noqa: B023
                     f"{shard}'s census to count {expected} in {room}")
            others = [name for name in shards if name != shard]
            assert all(room not in census(shards[o]) for o in others)
            wait_for(lambda ps=people: all(sorted(p.names()) == sorted(q.display_name for q in ps) for p in ps),
                     30, f"every page of {room} to see every display name")

        # the weights turn against the room's shard: it announces room for one participant
        other = next(name for name in shards if name != home)
        ssh_state_writer(shards[home], {**state_document(False), "capacity": 1})
        wait_for(lambda: shard_state(door, home) == ("ready", 0) and shard_state(door, other)[1] > 0, 60,
                 f"the weights to send every new room to {other}, none to {home}")
        newcomer = participant("Félix", "Nouvelle réunion", True)  # a new room goes where the weights say
        assert newcomer.shard == other, (newcomer.url, routing_maps(door))
        newcomer.quit()
        fourth = participant("Fanny", ACCENTED, True)
        assert (fourth.node, fourth.shard) == (node, home), (fourth.url, routing_maps(door))
        fourth.check_origin()
        wait_for(lambda: census(shards[home]).get(node) == 4, 30, "the census to count the 4th participant")
        fourth.quit()
        wait_for(lambda: census(shards[home]).get(node) == 3, 30, "the census to see the 4th participant leave")
        ssh_state_writer(shards[home], state_document(False))

        # the other shard is drained, then undrained, by the operator's CLI
        cli(config, "fleet", "drain", other)
        wait_for(lambda: shard_state(door, other)[0] == "draining", 60, f"the front door to drain {other}")
        cli(config, "fleet", "undrain", other)
        wait_for(lambda: shard_state(door, other)[0] == "ready", 60, f"the front door to take {other} back")
        fourth = participant("Gaston", ACCENTED.upper(), True)
        assert (fourth.node, fourth.shard) == (node, home), (fourth.url, routing_maps(door))
        third = participant("Hugo", ASCII.lower(), False)
        assert (third.node, third.shard) == (planning_node, planning[0].shard), (third.url, routing_maps(door))
        for p in (fourth, third):
            p.check_origin()
        wait_for(lambda: census(shards[home]).get(node) == 4, 30, "the census to count the new 4th participant")
    finally:
        for browser in browsers:
            browser.quit()


@pytest.mark.parametrize("fleet", ["proxy"], indirect=True)
def test_upgrade_then_deploy_restarts_nothing(fleet):
    """The stand-in repository is bumped; the shards upgrade; `ensemble deploy` restarts none of prosody,
    jicofo, jitsi-videobridge2, nginx (MainPID and ActiveEnterTimestamp kept) and a second deploy changes
    nothing."""
    _mode, config, _spec, shards, door, served, work = fleet
    services = (*JITSI_SERVICES, "nginx")
    bumped = build_standin_repo(work / "cache", revision=2)  # the fleet's cache, so the fleet's signing key
    point_at(served, bumped.path)

    def upgrade(shard) -> dict[str, tuple[str, str]]:
        code, out, err = ssh_run(shard, APT_UPGRADE, timeout=600)
        assert code == 0, f"{shard.name}: {out[-2000:]}{err[-2000:]}"
        assert jitsi_versions(shard) == bumped.versions, shard.name
        return service_states(shard, services)

    started = time.monotonic()
    with ThreadPoolExecutor(len(shards)) as pool:
        upgraded = dict(zip(shards, pool.map(upgrade, shards.values()), strict=True))
    print(f"\n[browser e2e] apt-get upgrade of {len(shards)} shards: {time.monotonic() - started:.0f} s")
    # the restarted jicofo and bridges make the front door read the shards unhealthy, then ready again, and its
    # refresher reload nginx meanwhile (a reload is about 1 s of systemd's "reloading"): the deploy runs while
    # that goes on, and must count a reloading nginx as running (it once reported "nginx running" changed)
    wait_for(lambda: all(shard_state(door, n)[0] == "ready" for n in shards), 120,
             "the front door to read every shard as ready after the upgrade")
    door_nginx = service_states(door, ("nginx",))

    started = time.monotonic()
    changes = deploy_changes(config)
    print(f"[browser e2e] deploy after the upgrade: {time.monotonic() - started:.0f} s, changes {changes}")
    assert changes == {}, changes
    assert {name: service_states(host, services) for name, host in shards.items()} == upgraded
    assert service_states(door, ("nginx",)) == door_nginx
    assert deploy_changes(config) == {}
