"""A Jitsi package upgrade on real hosts, then `ensemble deploy`: nothing restarts, nothing is rewritten.

Upstream's postinst scripts run on EVERY configure, so on every upgrade: jicofo's sets client-proxy
with `hocon set`, adds trusted-domains and chowns /etc/jitsi/jicofo; the bridge's appends a STUN
server and an XMPP account to sip-communicator.properties and chowns /etc/jitsi/videobridge;
jitsi-meet-prosody's greps and edits the virtual host. The stand-in packages do the same. Chain:
deploy -> the stand-in repository is bumped to a newer release -> the host upgrades with
`apt-get upgrade` (as an operator or unattended-upgrades would) -> every file ensemble owns is
byte-, owner- and mode-identical -> `ensemble deploy` restarts no Jitsi service (systemd's MainPID and
ActiveEnterTimestamp unchanged) and changes nothing -> the same again after `ensemble upgrade` to the
next release.

The fleet's repository is served from a folder whose two entries (key, suite) are links to a built
stand-in repository: the release is bumped by re-pointing the links, the URL stays.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from conftest import ensemble_json as ensemble
from conftest import local_spec_toml, ssh_run
from helpers.upgrade import APT_UPGRADE, deploy_changes, failure, jitsi_versions, point_at, service_states

from ensemble.standins.jitsi_repo import build_standin_repo

FLEET = "t-up"

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


def spec_toml(repo_settings: dict[str, str]) -> str:
    jitsi = "\n".join(f'{key} = "{value}"' for key, value in repo_settings.items())
    return local_spec_toml(FLEET, 1, header="# test fleet of tests/test_package_upgrade.py\n",
                           tail=f"[jitsi]\netherpad = false\n{jitsi}\n")


def bridge_logins(shard) -> int:
    """How many times the (stand-in) bridge has logged in to prosody."""
    _, out, _ = ssh_run(shard, "grep -c 'XMPP: logged in' /var/log/jitsi/jvb.log || true")
    return int(out.strip() or 0)


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(2)


def owned_files_state(shard, paths: list[str]) -> str:
    """Mode, owner, group and sha256 of the files ensemble owns (missing files show as missing)."""
    quoted = " ".join(paths)
    code, out, err = ssh_run(shard, f"stat -c '%a %U %G %n' {quoted}; sha256sum {quoted}")
    assert code == 0, out + err
    return out


@pytest.fixture(scope="module")
def fleet(local_provider, tmp_path_factory):
    """(config, spec, shard host, served folder, {revision: repo}) after the first deploy of release 1.

    The served folder's parent holds the repositories' cache (and signing key)."""
    from ensemble.spec import load_spec

    work = tmp_path_factory.mktemp("upgrade")
    # a cache of its own (and so a signing key of its own): builds by other test runs prune the shared one
    repos = {n: build_standin_repo(work / "cache", revision=n) for n in (1, 2, 3)}
    served = work / "served"
    served.mkdir()
    point_at(served, repos[1].path)
    draft = work / "draft.toml"
    draft.write_text(spec_toml({}))
    spec = load_spec(draft)
    local_provider.destroy_all(spec)  # what an earlier run left
    url = local_provider.serve_directory(spec, "t-up-jitsi", served).rstrip("/")
    config = work / "ensemble.toml"
    config.write_text(spec_toml(repos[1].apt_settings(url)))
    spec = load_spec(config)
    try:
        code, out, err = ensemble("deploy", "--config", str(config))
        assert code == 0, failure(err)
        (shard,) = [h for h in local_provider.list_hosts(spec) if h.role == "shard"]
        yield config, spec, shard, served, repos
    finally:
        local_provider.destroy_all(spec)


def shard_owned_paths(spec, shard) -> list[str]:
    """The files of ensemble's prosody, jicofo and jvb components on the shard (those the postinsts touch)."""
    return [f"/etc/prosody/conf.avail/{shard.name}.cfg.lua", "/etc/jitsi/jicofo/jicofo.conf",
            "/etc/jitsi/jicofo/sip-communicator.properties", "/etc/jitsi/videobridge/jvb.conf",
            "/etc/jitsi/videobridge/sip-communicator.properties"]


def test_upgrade_then_deploy_restarts_nothing_and_changes_nothing(fleet):
    config, spec, shard, served, repos = fleet
    assert jitsi_versions(shard)["jitsi-meet"] == repos[1].versions["jitsi-meet"]
    paths = shard_owned_paths(spec, shard)
    deployed = owned_files_state(shard, paths)
    before = service_states(shard)
    logins = bridge_logins(shard)

    # an operator (or unattended-upgrades) upgrades the host to the next release
    point_at(served, repos[2].path)
    code, out, err = ssh_run(shard, APT_UPGRADE, timeout=600)
    assert code == 0, out[-2000:] + err[-2000:]
    assert jitsi_versions(shard) == repos[2].versions
    # every postinst ran its edits; on ensemble's files they were no-ops
    assert owned_files_state(shard, paths) == deployed
    upgraded = service_states(shard)
    # the packages' scripts really ran: they restarted their services (as upstream's do)
    assert upgraded["jicofo"] != before["jicofo"] and upgraded["jitsi-videobridge2"] != before["jitsi-videobridge2"]

    assert deploy_changes(config) == {}
    assert service_states(shard) == upgraded
    assert deploy_changes(config) == {}
    # the restarted bridge logs in again with ensemble's password (the postinst re-registered nothing)
    wait_for(lambda: bridge_logins(shard) > logins, 60, "the bridge to log in again after the upgrade")

    # the services still log in with ensemble's passwords after the package scripts ran
    code, out, err = ssh_run(shard, "for i in $(seq 60); do curl -fsS -o /dev/null http://127.0.0.1:8888/about/health "
                                    "&& break; sleep 1; done; curl -fsS http://127.0.0.1:8888/about/health")
    assert code == 0, out + err


def test_ensemble_upgrade_then_deploy_restarts_nothing(fleet):
    config, spec, shard, served, repos = fleet
    paths = shard_owned_paths(spec, shard)
    before = owned_files_state(shard, paths)
    point_at(served, repos[3].path)
    code, out, err = ensemble("upgrade", "--config", str(config), "--timeout", "120")
    assert code == 0, failure(err)
    assert jitsi_versions(shard) == repos[3].versions, failure(err)
    assert owned_files_state(shard, paths) == before
    upgraded = service_states(shard)
    assert deploy_changes(config) == {}
    assert service_states(shard) == upgraded


def test_upstream_edits_found_what_they_look_for(fleet):
    """The markers upstream's greps look for are in ensemble's files, and its edits left no trace."""
    _config, _spec, shard, _served, _repos = fleet
    code, out, err = ssh_run(shard, "cat /etc/jitsi/jicofo/sip-communicator.properties; echo ::; "
                                    "hocon -f /etc/jitsi/jicofo/jicofo.conf get jicofo.xmpp.trusted-domains")
    assert code == 0, err
    props, trusted = out.split("::\n")
    assert "BRIDGE_MUC=" not in props and json.loads(trusted) == []


def test_apt_picks_the_pinned_legacy_set_on_a_real_host(fleet, local_provider):
    """The preferences file a legacy profile renders, on a real host with a repository that carries the
    legacy set beside newer versions: apt chooses jitsi-meet 2.0.8719-1 and exactly the versions it
    depends on (simulated: the host keeps its packages)."""
    from ensemble.hostfiles import jitsi_preferences, shard_pins
    from ensemble.spec import spec_from_dict

    _config, spec, shard, served, _repos = fleet
    legacy = build_standin_repo(served.parent / "cache", legacy=True)  # the fleet's key
    url = local_provider.serve_directory(spec, "t-up-legacy", legacy.path).rstrip("/")
    pins = dict(shard_pins(spec_from_dict({"fleet": {"os": "debian-buster"}})))
    prefs = jitsi_preferences(pins.items())
    apt = ("-o Dir::Etc::SourceList=/tmp/legacy/sources.list -o Dir::Etc::SourceParts=/tmp/legacy/parts "
           "-o Dir::State::Lists=/tmp/legacy/lists -o Dir::Cache::pkgcache= -o Dir::Cache::srcpkgcache= "
           "-o Dir::Etc::PreferencesParts=/tmp/legacy/prefs")
    code, out, err = ssh_run(shard, f"""set -e
        rm -rf /tmp/legacy && mkdir -p /tmp/legacy/parts /tmp/legacy/lists/partial /tmp/legacy/prefs
        echo 'deb [signed-by=/usr/share/keyrings/jitsi-keyring.gpg] {url} stable/' > /tmp/legacy/sources.list
        cat > /tmp/legacy/prefs/ensemble-jitsi.pref <<'PREF'
{prefs}PREF
        apt-get {apt} update -qq
        apt-cache {apt} policy jicofo | sed -n 2,3p
        apt-get {apt} -s -q install jitsi-meet""", timeout=300)
    assert code == 0, out[-3000:] + err[-2000:]
    assert "Candidate: 1.0-1038-1" in out, out[:500]
    chosen = dict(re.findall(r"^Inst (\S+) (?:\[[^]]*\] )?\((\S+)", out, re.M))
    assert chosen == pins, out[-3000:]
