"""config.js checked by node (`node --check`) and evaluated by node: every mission feature key is asserted
on the object the browser would get, for every OS profile and for the spec switches."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ensemble.profiles import PROFILES
from ensemble.render import shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict

NODE = shutil.which("node") or "/usr/bin/node"
pytestmark = pytest.mark.needs_tool("node")

# Evaluate the file as the browser does (a script defining the global `config`) and print it as JSON.
EVALUATE = """
const fs = require('fs'), vm = require('vm');
const sandbox = {};
vm.runInNewContext(fs.readFileSync(process.argv[1], 'utf8') + '\\n;this.__config = config;', sandbox);
process.stdout.write(JSON.stringify(sandbox.__config));
"""


def _config_js(tmp_path: Path, profile="debian-bookworm", **sections) -> tuple[str, Path]:
    spec = spec_from_dict({"fleet": {"os": profile}, **sections})
    store: dict = {}
    complete_secrets(store, spec)
    d = spec.shard_name(1)
    item = {f.path: f for f in shard_files(spec, 1, store)}[f"/etc/jitsi/meet/{d}-config.js"]
    assert item.mode == 0o644
    path = tmp_path / "config.js"
    path.write_text(item.content)
    return d, path


def _evaluate(path: Path) -> dict:
    check = subprocess.run([NODE, "--check", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    run = subprocess.run([NODE, "-e", EVALUATE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(run.stdout)


def test_node_check_catches_a_broken_file(tmp_path):
    path = tmp_path / "bad.js"
    path.write_text("var config = { a: 1,, };\n")
    assert subprocess.run([NODE, "--check", str(path)], capture_output=True).returncode != 0


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_mission_feature_with_defaults(profile, tmp_path):
    d, path = _config_js(tmp_path, profile)
    c = _evaluate(path)
    assert c["hosts"] == {"domain": d, "muc": f"conference.{d}", "focus": f"focus.{d}"}
    assert c["bosh"] == f"https://{d}/http-bind"
    assert c["websocket"] == f"wss://{d}/xmpp-websocket"
    # shared documents
    assert c["etherpad_base"] == f"https://{d}/etherpad/p/"
    # display name + Gravatar
    assert c["gravatar"] == {"baseUrl": "https://www.gravatar.com/avatar/", "disabled": False}
    assert c["requireDisplayName"] is False and c["disableProfile"] is False
    # video quality
    assert c["resolution"] == 720
    assert c["constraints"]["video"]["height"] == {"ideal": 720, "max": 720, "min": 180}
    assert c["channelLastN"] == -1
    assert "videoquality" in c["toolbarButtons"]
    # lobby and room password
    assert c["lobby"]["autoKnock"] is False
    assert c["securityUi"] == {"hideLobbyButton": False, "disableLobbyPassword": False}
    assert "security" in c["toolbarButtons"]
    # chat, reactions, raise hand, screen sharing, connection quality
    assert c["disableChat"] is False and c["disableReactions"] is False
    for button in ("chat", "raisehand", "desktop", "etherpad"):
        assert button in c["toolbarButtons"]
    assert c["raisedHands"]["disableLowerHandByModerator"] is False
    assert c["connectionIndicators"]["disabled"] is False
    # welcome page, French, pre-join
    assert c["welcomePage"] == {"disabled": False}
    assert c["defaultLanguage"] == "fr"
    assert c["prejoinConfig"]["enabled"] is True
    # no recording of any kind
    assert c["recordingService"]["enabled"] is False
    assert c["localRecording"]["disable"] is True
    assert c["fileRecordingsEnabled"] is False
    assert c["liveStreaming"]["enabled"] is False
    # privacy, P2P with the shard's own STUN only (issue 11: no third-party host by default)
    assert c["disableThirdPartyRequests"] is False
    assert c["analytics"]["disabled"] is True
    assert c["p2p"]["enabled"] is True
    assert c["p2p"]["stunServers"] == [{"urls": "stun:demo-1.meet.example.org:3478"}]
    assert "jitsi.net" not in path.read_text()


def test_spec_switches_reach_config_js(tmp_path):
    _, path = _config_js(tmp_path, jitsi={
        "language": "en", "etherpad": False, "gravatar": True, "disable_third_party_requests": True,
        "max_resolution": 1080, "min_resolution": 360, "channel_last_n": 8, "lobby": False,
        "password_ui": False, "require_display_name": True, "prejoin": False, "p2p": False,
        "stun_servers": ["stun.example.org:3478"],
    })
    c = _evaluate(path)
    assert "etherpad_base" not in c and "etherpad" not in c["toolbarButtons"]
    assert c["gravatar"] == {"disabled": True}  # third-party requests off wins over gravatar = true
    assert c["disableThirdPartyRequests"] is True
    assert c["defaultLanguage"] == "en"
    assert c["resolution"] == 1080
    assert c["constraints"]["video"]["height"] == {"ideal": 1080, "max": 1080, "min": 360}
    assert c["channelLastN"] == 8
    assert c["securityUi"] == {"hideLobbyButton": True, "disableLobbyPassword": True}
    assert "security" not in c["toolbarButtons"]
    assert c["requireDisplayName"] is True
    assert c["prejoinConfig"]["enabled"] is False
    # the shard's own STUN first, then the public ones the spec adds
    assert c["p2p"] == {"enabled": False, "useStunTurn": True, "stunServers": [
        {"urls": "stun:demo-1.meet.example.org:3478"}, {"urls": "stun:stun.example.org:3478"}]}


def test_gravatar_base_url_and_off(tmp_path):
    _, path = _config_js(tmp_path, jitsi={"gravatar_base_url": "https://avatars.example.org/avatar/"})
    assert _evaluate(path)["gravatar"] == {"baseUrl": "https://avatars.example.org/avatar/", "disabled": False}
    _, path = _config_js(tmp_path, jitsi={"gravatar": False})
    assert _evaluate(path)["gravatar"] == {"disabled": True}


@pytest.mark.parametrize("mode", ["redirect", "proxy"])
def test_signalling_goes_to_the_address_users_opened(mode, tmp_path):
    """Redirect mode: the shard's own name. Proxy mode: the front door only (it routes by ?room=), so a page
    served by the front door never talks to a shard's address (same origin: no CORS needed)."""
    d, path = _config_js(tmp_path, frontdoor={"mode": mode})
    c = _evaluate(path)
    public = "meet.example.org" if mode == "proxy" else d
    assert (c["bosh"], c["websocket"], c["conferenceRequestUrl"]) == (
        f"https://{public}/http-bind", f"wss://{public}/xmpp-websocket", f"https://{public}/conference-request/v1")
    assert c["hosts"]["domain"] == d  # the XMPP domain stays the shard's


# The package's interface_config.js is included after config.js and declares the global as upstream does.
LANGUAGE = """
const fs = require('fs'), vm = require('vm');
const ctx = vm.createContext({});
vm.runInContext('var window = this;', ctx);
vm.runInContext(fs.readFileSync(process.argv[1], 'utf8'), ctx);
vm.runInContext("var interfaceConfig = { LANG_DETECTION: true, APP_NAME: 'Jitsi Meet', TOOLBAR_TIMEOUT: 4000 };", ctx);
process.stdout.write(JSON.stringify(vm.runInContext('[interfaceConfig, config.defaultLanguage]', ctx)));
"""


@pytest.mark.parametrize("language", ["fr", "en"])
def test_the_fleets_language_wins_over_the_browsers(language, tmp_path):
    _, path = _config_js(tmp_path, jitsi={"language": language})
    run = subprocess.run([NODE, "-e", LANGUAGE, str(path)], capture_output=True, text=True, check=True)
    interface, default_language = json.loads(run.stdout)
    assert interface == {"LANG_DETECTION": False, "APP_NAME": "Jitsi Meet", "TOOLBAR_TIMEOUT": 4000}
    assert default_language == language
    c = _evaluate(path)  # without a window (an app evaluating config.js): nothing breaks
    assert "settings" in c["toolbarButtons"]  # the language switch is in the settings dialog


def test_etherpad_through_the_front_door_in_proxy_mode(tmp_path):
    d, path = _config_js(tmp_path, frontdoor={"mode": "proxy"})
    assert _evaluate(path)["etherpad_base"] == f"https://meet.example.org/_shard/{d}/etherpad/p/"
    d, path = _config_js(tmp_path)
    assert _evaluate(path)["etherpad_base"] == f"https://{d}/etherpad/p/"
