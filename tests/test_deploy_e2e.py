"""End to end: `ensemble deploy` puts a 2-shard + front door fleet onto real throwaway Debian hosts.

Real everything except what cannot be reached from here: hosts are systemd-nspawn containers
(local provider), Jitsi's own packages come from the stand-in repository, Let's Encrypt is
pebble on the fleet's bridge. Checked from this machine over real HTTPS and SSH: the pebble-issued
chain, the web app, /http-bind to prosody, /etherpad/ to Etherpad, services active, secrets 0600,
the firewall; then idempotence (0 changes), repair of a deleted file, and a run killed mid-way.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TEST_STATE_DIR, ssh_run
from conftest import ensemble_json as ensemble

from ensemble.paths import OCCUPANCY_PORT

REPO = Path(__file__).resolve().parent.parent
FLEET = "t-e2e"
SHARDS = 2
SHARD_SERVICES = ("nginx", "prosody", "jicofo", "jitsi-videobridge2", "etherpad", "nftables", "coturn")

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


def spec_toml(directory: str, ca_bundle: Path) -> str:
    return f"""# test fleet of tests/test_deploy_e2e.py
[fleet]
name = "{FLEET}"
domain = "{FLEET}.test"
shards = {SHARDS}

[provider]
kind = "local"

[provider.local]
state_dir = "{TEST_STATE_DIR}"

[tls]
mode = "letsencrypt"
acme_directory = "{directory}"
acme_ca_bundle = "{ca_bundle}"

[etherpad]
source_url = "npm:ep_etherpad-lite@1.8.14"
"""


@pytest.fixture(scope="module")
def fleet(local_provider, tmp_path_factory):
    """The deployed fleet: (spec file, spec, {name: Host}, pebble, first deploy output)."""
    from standins.acme import start_pebble

    from ensemble.spec import load_spec

    work = tmp_path_factory.mktemp("e2e")
    draft = work / "draft.toml"
    draft.write_text(spec_toml("https://127.0.0.1/dir", work / "none.pem"))
    spec = load_spec(draft)
    local_provider.destroy_all(spec)  # what an earlier run of this test left
    net = local_provider.ensure_network(spec)
    pebble = start_pebble(net.gateway, work / "pebble")
    # Hosts trust pebble's listener CA (to talk ACME) and its issuing root (the front door reads
    # the shards' private occupancy endpoints over HTTPS, as it would with Let's Encrypt's chains).
    cas = work / "acme-cas.pem"
    cas.write_text(pebble.ca_pem.read_text() + pebble.issuing_root())
    config = work / "ensemble.toml"
    config.write_text(spec_toml(pebble.directory_url, cas))
    spec = load_spec(config)
    pebble.add_a(spec.fleet.domain, net.address(10))
    for n in range(1, SHARDS + 1):
        pebble.add_a(spec.shard_name(n), net.address(10 + n))
    try:
        code, first, err = ensemble("deploy", "--config", str(config))
        hosts = {h.name: h for h in local_provider.list_hosts(spec)}
        yield config, spec, hosts, pebble, (code, first, err)
    finally:
        local_provider.destroy_all(spec)
        pebble.stop()


def https_get(address: str, domain: str, path: str, root_pem: str) -> tuple[int, str, dict]:
    """GET https://domain/path at address, verifying the chain against root_pem and the name."""
    context = ssl.create_default_context(cadata=root_pem)
    conn = http.client.HTTPSConnection(address, 443, timeout=20, context=context)
    conn.sock = context.wrap_socket(socket.create_connection((address, 443), timeout=20), server_hostname=domain)
    conn.request("GET", path, headers={"Host": domain})
    answer = conn.getresponse()
    body = answer.read().decode(errors="replace")
    conn.close()
    return answer.status, body, dict(answer.getheaders())


def shard_hosts(spec, hosts):
    return [hosts[spec.shard_name(n)] for n in range(1, SHARDS + 1)]


def test_first_deploy_succeeds_on_every_host(fleet):
    _config, spec, hosts, _pebble, (code, first, err) = fleet
    assert code == 0, err[-3000:]
    assert first["ok"] and set(first["hosts"]) == {*spec.shard_names(), spec.fleet.domain}
    assert all(h["changed"] > 0 for h in first["hosts"].values())


def test_shards_serve_the_web_app_over_https_with_the_pebble_chain(fleet):
    _config, spec, hosts, pebble, _ = fleet
    root = pebble.issuing_root()
    for host in shard_hosts(spec, hosts):
        status, body, headers = https_get(host.address, host.name, "/", root)
        assert status == 200 and "Jitsi Meet" in body, body[:300]
        assert "max-age" in headers.get("Strict-Transport-Security", "")
        status, body, _ = https_get(host.address, host.name, "/http-bind", root)
        assert status == 200 and "BOSH" in body.upper(), body[:300]  # prosody's BOSH endpoint answers
        status, body, _ = https_get(host.address, host.name, "/etherpad/", root)
        assert status == 200 and "etherpad" in body.lower(), body[:300]
        status, _, _ = https_get(host.address, host.name, "/config.js", root)
        assert status == 200
    with pytest.raises(ssl.SSLCertVerificationError):  # and the chain really is checked
        https_get(shard_hosts(spec, hosts)[0].address, "wrong.name.test", "/", root)


def test_front_door_serves_the_landing_page_with_the_pebble_chain(fleet):
    _config, spec, hosts, pebble, _ = fleet
    door = hosts[spec.fleet.domain]
    status, body, _ = https_get(door.address, door.name, "/", pebble.issuing_root())
    assert status == 200 and "Lancer une réunion" in body, body[:300]


def test_front_door_refresh_reads_every_shard(fleet):
    _config, spec, hosts, _pebble, _ = fleet
    door = hosts[spec.fleet.domain]
    code, out, err = ssh_run(door, "ensemble frontdoor refresh --config /etc/ensemble/ensemble.json "
                                   "--secrets /etc/ensemble/secrets.json --json")
    assert code == 0, err[-2000:]
    result = json.loads(out)
    assert result["unreadable"] == [], [(s["name"], s["state"], s.get("reason")) for s in result["shards"]]
    assert {shard["name"] for shard in result["shards"]} == set(spec.shard_names())
    _, maps, _ = ssh_run(door, "nginx -t 2>&1 && test -s /var/lib/ensemble/frontdoor/routing.conf && echo maps")
    assert "maps" in maps, maps


def test_services_secrets_and_firewall_on_each_host(fleet):
    _config, spec, hosts, _pebble, _ = fleet
    for host in shard_hosts(spec, hosts):
        code, out, _ = ssh_run(host, f"systemctl is-active {' '.join(SHARD_SERVICES)}")
        assert code == 0 and out.split() == ["active"] * len(SHARD_SERVICES), out
        _, mode, _ = ssh_run(host, "stat -c '%a %U' /etc/ensemble/secrets.json")
        assert mode.strip() == "600 root"
        _, rules, _ = ssh_run(host, "nft list ruleset")
        assert "policy drop" in rules and "tcp dport { 80, 443, 3478 } accept" in rules  # 3478: the TURN relay
        assert "udp dport { 3478, 10000, 49152-49999 } accept" in rules
        # prosody's c2s port listens on every interface, yet the firewall keeps it private
        _, listening, _ = ssh_run(host, "ss -Hltn 'sport = :5222'")
        assert listening.strip()
        with pytest.raises(OSError):
            socket.create_connection((host.address, 5222), timeout=3).close()
        # the occupancy listener (fleet-CA TLS) answers the front door only: dropped for this machine
        assert f"tcp dport {OCCUPANCY_PORT} accept" in rules
        _, kept, _ = ssh_run(host, "cat /etc/ensemble/secrets.json")
        assert "fleet-ca" not in json.loads(kept)  # the fleet CA's key stays on the front door
        with pytest.raises(OSError):
            socket.create_connection((host.address, OCCUPANCY_PORT), timeout=3).close()
    door = hosts[spec.fleet.domain]
    code, out, _ = ssh_run(door, "systemctl is-active nginx nftables ensemble-frontdoor-refresh.timer")
    assert code == 0, out
    _, mode, _ = ssh_run(door, "stat -c '%a' /etc/ensemble/secrets.json")
    assert mode.strip() == "600"


def test_secrets_are_never_printed(fleet):
    _config, spec, hosts, _pebble, (_code, first, err) = fleet
    host = shard_hosts(spec, hosts)[0]
    _, text, _ = ssh_run(host, "cat /etc/ensemble/secrets.json")
    kept = json.loads(text)
    for value in [*kept[host.name].values(), *kept["fleet"].values()]:
        assert value not in err and value not in json.dumps(first)


def test_second_deploy_changes_nothing(fleet):
    config, *_ = fleet
    code, again, err = ensemble("deploy", "--config", str(config))
    assert code == 0, err[-2000:]
    changes = {name: h["changes"] for name, h in again["hosts"].items() if h["changed"]}
    assert not changes, changes
    code, plan, err = ensemble("plan", "--config", str(config))
    assert code == 0 and plan["changed"] == 0 and plan["created"] == [], err[-2000:]


def test_the_plain_pyinfra_cli_runs_the_same_deploys(fleet):
    config, *_ = fleet
    env = dict(os.environ, ENSEMBLE_CONFIG=str(config))
    pyinfra = str(Path(sys.executable).parent / "pyinfra")
    for deploy_file in ("deploys/shard.py", "deploys/frontdoor.py"):
        proc = subprocess.run([pyinfra, "-y", "inventories/local.py", deploy_file], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=600)
        output = proc.stdout + proc.stderr
        assert proc.returncode == 0, output[-3000:]
        assert "No changes" in output and "] Success" not in output, output[-3000:]  # same state as ensemble's


def test_a_deleted_config_file_is_repaired(fleet):
    config, spec, hosts, _pebble, _ = fleet
    host = shard_hosts(spec, hosts)[1]
    _, before, _ = ssh_run(host, "sha256sum /etc/jitsi/jicofo/jicofo.conf")
    ssh_run(host, "rm /etc/jitsi/jicofo/jicofo.conf")
    code, plan, _ = ensemble("plan", "--config", str(config))
    assert any("jicofo.conf" in change for change in plan["hosts"][host.name]["changes"])
    code, repaired, err = ensemble("deploy", "--config", str(config))
    assert code == 0, err[-2000:]
    assert repaired["hosts"][host.name]["changed"] >= 1
    others = {name: h["changes"] for name, h in repaired["hosts"].items() if name != host.name and h["changed"]}
    assert not others, others
    _, after, _ = ssh_run(host, "sha256sum /etc/jitsi/jicofo/jicofo.conf; systemctl is-active jicofo")
    assert after.split()[0] == before.split()[0] and after.split()[-1] == "active"


def test_a_deploy_killed_midway_converges_on_the_next_run(fleet):
    config, spec, hosts, _pebble, _ = fleet
    for host in shard_hosts(spec, hosts):  # give the run work to be interrupted in
        ssh_run(host, f"rm /etc/jitsi/meet/{host.name}-config.js /etc/jitsi/videobridge/jvb.conf")
    proc = subprocess.Popen([sys.executable, "-m", "ensemble.cli", "deploy", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = []
    deadline = time.monotonic() + 300
    for line in proc.stderr:
        seen.append(line)
        if "changed" in line or time.monotonic() > deadline:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL and any("changed" in line for line in seen)
    code, resumed, err = ensemble("deploy", "--config", str(config))
    assert code == 0, err[-2000:]
    code, again, err = ensemble("deploy", "--config", str(config))
    assert code == 0 and again["changed"] == 0, err[-2000:]
    for host in shard_hosts(spec, hosts):
        code, out, _ = ssh_run(host, f"test -s /etc/jitsi/meet/{host.name}-config.js && "
                                     "systemctl is-active jitsi-videobridge2 nginx")
        assert code == 0, out
