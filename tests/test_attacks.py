"""Attacks on a real local fleet (one shard with real Etherpad + the front door, fleet "t-sh-atk"), deployed
once and reused by every test here, as an outsider on the fleet's network would try them:

- pose as a bridge: an anonymous user (BOSH and WebSocket through the shard's public nginx) joins the
  bridges' brewery MUC; refused (dropped by muc_filter_access), while the real bridge stays in it;
- read Etherpad's statistics and admin pages through the shard's site; refused;
- the security headers on every shard response;
- ports: what answers from the bridge side is exactly what README's "Security" section lists;
- passwords in process arguments: /proc/*/cmdline of every process (the containers' included) is
  sampled during the whole first deploy; no secret ever appears in one;
- a firewall rule nft rejects never replaces the live ruleset (loaded and on disk, across a reload);
- a truncated secrets file stops `ensemble deploy` (one line, exit 2) instead of being regenerated; once
  restored, the next deploy changes nothing.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ssh_run
from standins.xmpp_participant import Participant, ParticipantError

from ensemble import paths
from ensemble.hostfiles import public_ports

FLEET = "t-sh-atk"
ETHERPAD_SOURCE = "npm:ep_etherpad-lite@1.8.14"
SECURITY_HEADERS = {"Strict-Transport-Security": "max-age=63072000", "X-Content-Type-Options": "nosniff"}
# ports Jitsi's components, Etherpad and prosody may listen on: none of them may answer from outside
INTERNAL_TCP_PORTS = (5222, 5269, 5280, 5281, 5347, 8080, 8888, 9001, 9090, 4443, 3478, 5349)

pytestmark = [pytest.mark.realhost, pytest.mark.slow]


class CommandLineSampler:
    """Every distinct /proc/<pid>/cmdline of this machine (nspawn guests included), read every few ms."""

    def __init__(self):
        self.seen: set[bytes] = set()
        self.rounds = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CommandLineSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in os.listdir("/proc"):
                if pid.isdigit():
                    try:
                        with open(f"/proc/{pid}/cmdline", "rb") as fh:
                            self.seen.add(fh.read())
                    except OSError:
                        pass  # gone meanwhile
            self.rounds += 1
            time.sleep(0.005)


@pytest.fixture(scope="module")
def fleet(local_fleet_factory, local_provider, tmp_path_factory):
    """The deployed fleet: spec, {role: Host}, the shard's kept secrets, the sampler, its config file."""
    from ensemble.fleet import deploy_fleet, summary_table
    from ensemble.spec import spec_toml

    spec, hosts = local_fleet_factory(FLEET, shards=1, tls={"mode": "self-signed"},
                                      etherpad={"source_url": ETHERPAD_SOURCE})
    shard = next(h for h in hosts if h.role == "shard")
    door = next(h for h in hosts if h.role == "frontdoor")
    marker = f"ensemble-sampler-control-{uuid.uuid4().hex}"
    started = time.monotonic()
    with CommandLineSampler() as sampler:
        # control: a process living 0.3 s (prosodyctl lives longer) is caught by the sampler
        subprocess.run(["sh", "-c", "sleep 0.3", marker], check=True)
        result = deploy_fleet(spec, provider=local_provider, hosts=hosts, progress=lambda _line: None)
    print(f"\n[attacks] first deploy: {time.monotonic() - started:.1f} s, {len(sampler.seen)} distinct command "
          f"lines in {sampler.rounds} samples")
    assert result.ok, summary_table(result)
    assert any(marker.encode() in line for line in sampler.seen), "the sampler misses short-lived processes"
    code, out, err = ssh_run(shard, "for i in $(seq 90); do curl -fs -o /dev/null http://127.0.0.1:8888/about/health "
                                    "&& exit 0; sleep 1; done; exit 1")
    assert code == 0, f"jicofo never became healthy: {out}{err}"
    code, out, err = ssh_run(shard, f"cat {paths.SECRETS_FILE}")
    assert code == 0, err
    config = tmp_path_factory.mktemp("attacks") / "ensemble.toml"
    config.write_text(spec_toml(spec))
    return {"spec": spec, "shard": shard, "door": door, "secrets": json.loads(out), "sampler": sampler,
            "config": config}


def https(address: str, name: str, path: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    """GET https://name/path at address (self-signed fleet: no certificate check); (status, headers, body)."""
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection(address, 443, timeout=20, context=context)
    conn.request("GET", path, headers={"Host": name, **(headers or {})})
    answer = conn.getresponse()
    body = answer.read()
    conn.close()
    return answer.status, dict(answer.getheaders()), body


# ---------------------------------------------------------------- secrets never in a command line

def test_no_secret_in_any_command_line_during_the_deploy(fleet):
    shard = fleet["shard"]
    values = {value for entry in fleet["secrets"].values() for value in entry.values()}
    assert {fleet["secrets"][shard.name]["focus_password"], fleet["secrets"][shard.name]["jvb_password"]} <= values
    leaked = sorted(line.replace(b"\0", b" ").decode(errors="replace")[:120]
                    for line in fleet["sampler"].seen for value in values if value.encode() in line)
    assert not leaked, leaked
    # the accounts were made during that deploy (so prosodyctl ran while sampled)
    code, _, _ = ssh_run(shard, "ls /var/lib/prosody/auth%2e*/accounts/focus.dat "
                                "/var/lib/prosody/auth%2e*/accounts/jvb.dat")
    assert code == 0


# ---------------------------------------------------------------- the bridges' brewery

class BreweryImpostor(Participant):
    """An anonymous web user who, once logged in like the web app, joins the brewery as a 'bridge'."""

    def __init__(self, *args, brewery: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.brewery = brewery

    def _conference_request(self, url: str, deadline: float) -> None:
        pass  # a bridge asks jicofo for nothing: it just joins the brewery

    def _enter_room(self, deadline: float) -> None:
        self.room_jid = self.brewery
        super()._enter_room(deadline)


def jvb_stats(shard) -> dict:
    code, out, err = ssh_run(shard, f"curl -fsS http://127.0.0.1:{paths.JVB_PRIVATE_PORT}/colibri/stats")
    assert code == 0, err
    return json.loads(out)


@pytest.mark.parametrize("transport", ["websocket", "bosh"])
def test_an_anonymous_user_cannot_join_the_brewery_but_the_bridge_is_in_it(fleet, transport):
    shard = fleet["shard"]
    brewery = f"jvbbrewery@internal.auth.{shard.name}"
    assert jvb_stats(shard)["standin_xmpp"]["connected"]  # the real bridge logged in and joined the brewery
    impostor = BreweryImpostor(f"https://{shard.name}", "x", address=shard.address, verify=False,
                               transport=transport, timeout=12, brewery=brewery)
    with pytest.raises(ParticipantError, match="no answer from the room"):
        impostor.join()
    assert impostor.jid.endswith(f"@{shard.name}/" + impostor.jid.rsplit("/", 1)[-1])  # it did log in anonymously
    code, log, _ = ssh_run(shard, "grep -h 'muc_filter_access: presence from' /var/log/prosody/prosody.log")
    assert code == 0 and impostor.jid in log  # dropped by the brewery's filter, not lost on the way
    stats = jvb_stats(shard)
    assert stats["standin_xmpp"]["connected"], stats["standin_xmpp"]


def test_control_without_the_filter_the_impostor_would_join(fleet):
    """The attack above is real: with the brewery's filter taken out of the same file, the same
    anonymous user joins. The file is then put back byte for byte (the last test's redeploy sees no change)."""
    shard = fleet["shard"]
    vhost = f"/etc/prosody/conf.avail/{shard.name}.cfg.lua"
    wait_ready = ("for i in $(seq 60); do curl -fs -o /dev/null http://127.0.0.1:8888/about/health && "
                  f"curl -fs http://127.0.0.1:{paths.JVB_PRIVATE_PORT}/colibri/stats | grep -q "
                  "'\"connected\": true' && exit 0; sleep 1; done; exit 1")
    code, _, err = ssh_run(shard, f"cp -p {vhost} /root/vhost.saved && sed -i '/\"muc_filter_access\";/d' {vhost} "
                                  f"&& systemctl restart prosody && {wait_ready}")
    assert code == 0, err
    try:
        impostor = BreweryImpostor(f"https://{shard.name}", "x", address=shard.address, verify=False,
                                   transport="websocket", timeout=20, brewery=f"jvbbrewery@internal.auth.{shard.name}")
        impostor.join()
        assert impostor.joined and len(impostor.occupants) >= 2  # in the brewery, beside the real bridge
        impostor.leave()
    finally:
        code, _, err = ssh_run(shard, f"cp -p /root/vhost.saved {vhost} && rm /root/vhost.saved && "
                                      f"systemctl restart prosody && {wait_ready}")
        assert code == 0, err


# ---------------------------------------------------------------- the shard's site

def test_etherpad_statistics_and_admin_are_not_public(fleet):
    shard = fleet["shard"]
    code, out, _ = ssh_run(shard, "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:9001/stats")
    assert out == "200"  # Etherpad serves them on loopback...
    for path in ("/etherpad/stats", "/etherpad/Stats", "/etherpad/%73tats", "/etherpad/admin", "/etherpad/admin/",
                 "/etherpad/api", "/etherpad/api/1/listAllPads"):
        status, _, body = https(shard.address, shard.name, path)
        assert status == 404, (path, status, body[:200])  # ...never through the public site
    status, _, body = https(shard.address, shard.name, "/etherpad/p/attack-test")
    assert status == 200 and b"etherpad" in body.lower()  # pads still work


@pytest.mark.parametrize("path", [
    "/", "/SomeRoom", "/config.js", "/external_api.js", "/libs/app.bundle.min.js", "/static/none.css",
    "/http-bind", "/xmpp-websocket", "/conference-request/v1", "/_api/room-info?room=x", "/etherpad/",
    "/etherpad/stats", "/_ensemble/census", "/_ensemble/state", "/no/such/file.txt",
])
def test_security_headers_on_every_shard_response(fleet, path):
    shard = fleet["shard"]
    status, headers, _ = https(shard.address, shard.name, path)
    for name, value in SECURITY_HEADERS.items():
        assert headers.get(name) == value, (path, status, headers)


# ---------------------------------------------------------------- ports, from the bridge side

def tcp_answers(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=2).close()
        return True
    except OSError:
        return False  # refused, or dropped by the firewall (timeout)


def listening_tcp_ports(host) -> set[int]:
    code, out, err = ssh_run(host, "ss -Htln | awk '{print $4}'")
    assert code == 0, err
    return {int(local.rsplit(":", 1)[1]) for local in out.split()}


@pytest.mark.parametrize("role", ["shard", "door"])
def test_ports_answer_exactly_as_documented(fleet, role):
    host = fleet[role]
    tcp, udp = public_ports(host.role, fleet["spec"])  # the shard's TURN relay ports too ([turn] is on)
    documented = {*tcp, 22}  # SSH: the admin network (the bridge, for a local fleet)
    probed = sorted(documented | listening_tcp_ports(host) | set(INTERNAL_TCP_PORTS))
    with ThreadPoolExecutor(len(probed)) as pool:
        answers = dict(zip(probed, pool.map(lambda port: tcp_answers(host.address, port), probed), strict=True))
    assert {port for port, ok in answers.items() if ok} == documented, answers
    code, ruleset, err = ssh_run(host, "nft list ruleset")
    assert code == 0, err
    media = [line.strip() for line in ruleset.splitlines() if "udp dport" in line]
    # nft lists one port bare, several as a sorted set; the front door opens no UDP at all
    listed = sorted(udp, key=lambda port: int(str(port).split("-")[0]))
    ports = str(listed[0]) if len(listed) == 1 else f"{{ {', '.join(map(str, listed))} }}"
    wanted = f"udp dport {ports} accept"
    assert media == ([wanted] if udp else []), media


# ---------------------------------------------------------------- a rejected firewall file

def test_a_ruleset_nft_rejects_never_replaces_the_live_one(fleet):
    from ensemble.components.base import REPLACED_ATOMICALLY, swap_command

    shard = fleet["shard"]
    new, check = REPLACED_ATOMICALLY[paths.NFTABLES_CONF]
    code, before, _ = ssh_run(shard, f"nft list ruleset; sha256sum {paths.NFTABLES_CONF}")
    assert code == 0 and "policy drop" in before
    bad = "flush ruleset\ntable inet ensemble {\n  chain input {\n    ip saddr { fe80::1%eth0/64 } accept\n  }\n}\n"
    code, out, err = ssh_run(shard, f"printf '%s' '{bad}' > {new} && {swap_command(new, paths.NFTABLES_CONF, check)}")
    assert code != 0 and "Error" in err, (out, err)  # nft's own message reaches the deploy's output
    code, after, _ = ssh_run(shard, f"nft list ruleset; sha256sum {paths.NFTABLES_CONF}; test ! -e {new}")
    assert code == 0 and after == before
    # and what boots: nftables.service loads the file on disk, still the good one
    code, reloaded, err = ssh_run(shard, f"systemctl restart nftables && nft list ruleset; sha256sum "
                                         f"{paths.NFTABLES_CONF}")
    assert code == 0 and reloaded == before, err


# ---------------------------------------------------------------- a damaged secrets file

def test_a_truncated_secrets_file_stops_the_deploy_and_a_restored_one_changes_nothing(fleet):
    shard, config = fleet["shard"], fleet["config"]
    code, _, err = ssh_run(shard, f"cp -p {paths.SECRETS_FILE} /root/secrets.saved && "
                                  f"head -c 40 /root/secrets.saved > {paths.SECRETS_FILE}")
    assert code == 0, err
    try:
        proc = subprocess.run([sys.executable, "-m", "ensemble.cli", "deploy", "--config", str(config)],
                              cwd=Path(__file__).parent.parent, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert f"{shard.name}: {paths.SECRETS_FILE} is corrupt or truncated" in lines[0]
        code, out, _ = ssh_run(shard, f"head -c 40 /root/secrets.saved | cmp - {paths.SECRETS_FILE}")
        assert code == 0  # nothing was rewritten
    finally:
        ssh_run(shard, f"mv -f /root/secrets.saved {paths.SECRETS_FILE}")
    from conftest import ensemble_json

    code, again, err = ensemble_json("deploy", "--config", str(config))
    assert code == 0, err[-3000:]
    assert all(h["changed"] == 0 for h in again["hosts"].values()), again
    code, out, _ = ssh_run(shard, f"stat -c '%a %U' {paths.SECRETS_FILE}; ls /etc/ensemble")
    assert out.splitlines()[0] == "600 root" and ".new" not in out, out
