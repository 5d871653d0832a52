"""End to end: every shard's TURN relay (issue 11) on a real local fleet, with Debian's real coturn.

The chain a browser on a locked-down network goes through: join a room through the shard's nginx
(the web site behind the 443 multiplexer), ask prosody for its external services over XMPP
(XEP-0215), then allocate a relay with those ephemeral credentials with `turnutils_uclient` over
TURN/TLS on 443 and over UDP 3478 and send data through it to a peer (`turnutils_peer` on this
machine's end of the fleet bridge, allowed by `turn.allowed_peer_ips`: local hosts live on a private
bridge the relay otherwise refuses). Then what must be refused: a wrong, an expired or no credential,
and relaying towards loopback or private addresses. Finally a second deploy changes nothing.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import socket
import ssl
import subprocess
import time

import pytest
from conftest import ensemble_json as ensemble
from conftest import local_spec_toml, require_tool, ssh_run

FLEET = "t-tu"
PEER_PORT = 3480
pytestmark = [pytest.mark.realhost, pytest.mark.slow]


def spec_toml(gateway: str) -> str:
    return local_spec_toml(FLEET, 1, header="# test fleet of tests/test_turn_e2e.py\n",
                           tail=f'[jitsi]\netherpad = false\n\n[turn]\nallowed_peer_ips = ["{gateway}/32"]\n')


@pytest.fixture(scope="module")
def fleet(local_provider, tmp_path_factory):
    """(spec, shard Host, gateway address, first deploy's (code, json, stderr), turnutils_peer process)."""
    from ensemble.spec import load_spec

    uclient = require_tool("turnutils_uclient", "coturn")
    peer_tool = require_tool("turnutils_peer", "coturn")
    work = tmp_path_factory.mktemp("turn")
    config = work / "ensemble.toml"
    config.write_text(spec_toml("10.0.0.1"))
    draft = load_spec(config)
    local_provider.destroy_all(draft)
    net = local_provider.ensure_network(draft)
    config.write_text(spec_toml(net.gateway))
    spec = load_spec(config)
    peer = subprocess.Popen([peer_tool, "-L", net.gateway, "-p", str(PEER_PORT)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        code, first, err = ensemble("deploy", "--config", str(config))
        hosts = {h.name: h for h in local_provider.list_hosts(spec)}
        yield {"config": config, "spec": spec, "shard": hosts[spec.shard_name(1)], "gateway": net.gateway,
               "first": (code, first, err), "uclient": uclient}
    finally:
        peer.terminate()
        peer.wait(5)
        local_provider.destroy_all(spec)


def participant(shard, room: str, transport: str = "auto"):
    from standins.xmpp_participant import Participant

    return Participant(url=f"https://{shard.name}", room=room, address=shard.address, verify=False,
                       transport=transport)


def turn_secret(shard) -> str:
    code, out, err = ssh_run(shard, "cat /etc/ensemble/secrets.json")
    assert code == 0, err
    return json.loads(out)[shard.name]["turn_secret"]


def rest_credential(secret: str, expires: int) -> tuple[str, str]:
    """TURN REST credentials (what prosody's external_services hands out): expiry time, HMAC-SHA1."""
    user = str(expires)
    return user, base64.b64encode(hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest()).decode()


def uclient(fleet, *args: str) -> tuple[int, str]:
    """turnutils_uclient against the shard; (exit code, output)."""
    run = subprocess.run([fleet["uclient"], "-n", "10", *args, fleet["shard"].address], capture_output=True,
                         text=True, timeout=90)
    return run.returncode, run.stdout + run.stderr


def relayed(output: str) -> bool:
    """uclient's summary says every message (10, or 20 with TCP's second channel) went through the
    relay and came back from the peer."""
    totals = re.findall(r"start_mclient: tot_send_msgs=(\d+), tot_recv_msgs=(\d+)", output)
    return bool(totals) and int(totals[-1][0]) >= 10 and totals[-1][0] == totals[-1][1] \
        and "Total lost packets 0 " in output


def test_deploy_installs_the_relay(fleet):
    code, first, err = fleet["first"]
    assert code == 0, err[-3000:]
    shard = fleet["shard"]
    code, out, _ = ssh_run(shard, "systemctl is-active coturn nginx prosody; stat -c '%a %U %G' /etc/turnserver.conf")
    assert out.split() == ["active", "active", "active", "640", "root", "turnserver"], out
    code, out, _ = ssh_run(shard, "nft list ruleset")
    assert "tcp dport { 80, 443, 3478 }" in out and "udp dport { 3478, 10000, 49152-49999 }" in out, out


def tls_exchange(shard, server_name: str | None, alpn: list[str] | None, data: bytes) -> tuple[bytes, bytes]:
    """TLS to the shard's 443 with this SNI and ALPN: (the certificate presented (DER), the first answer to data)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection((shard.address, 443), timeout=10) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            cert = tls.getpeercert(binary_form=True)
            tls.sendall(data)
            tls.settimeout(5)
            try:
                answer = tls.recv(4096)
            except (TimeoutError, ssl.SSLError, ConnectionError):
                answer = b""
    return cert, answer


def test_web_site_and_signalling_behind_the_multiplexer(fleet):
    shard = fleet["shard"]
    page = f"GET / HTTP/1.1\r\nHost: {shard.name}\r\nConnection: close\r\n\r\n".encode()
    # the site's name reaches the site with or without ALPN (browsers send h2/http1.1, some clients none)
    for alpn in (["http/1.1"], None):
        _, answer = tls_exchange(shard, shard.name, alpn, page)
        assert answer.startswith(b"HTTP/1.1 200"), (alpn, answer[:200])
    # no name (a client given the address), with or without ALPN http/1.1: still the site
    for alpn in (["http/1.1"], None):
        _, answer = tls_exchange(shard, None, alpn, page)
        assert answer.startswith(b"HTTP/1.1 200"), (alpn, answer[:200])
    # signalling: a participant joins over WebSocket, another over BOSH
    for transport in ("websocket", "bosh"):
        with participant(shard, f"turn-{transport}", transport) as p:
            p.wait_for_participants(1)
            assert p.transport == transport


def test_turn_tls_name_reaches_coturn_with_the_shards_certificate(fleet):
    shard = fleet["shard"]
    page = f"GET / HTTP/1.1\r\nHost: {shard.name}\r\n\r\n".encode()
    relay_cert, answer = tls_exchange(shard, f"turn-{shard.name}", None, page)
    assert not answer.startswith(b"HTTP/"), answer[:200]  # coturn, not nginx, is behind that name
    site_cert, _ = tls_exchange(shard, shard.name, ["http/1.1"], page)
    chain = f"/etc/ensemble/tls/{shard.name}/fullchain.pem"
    code, out, _ = ssh_run(shard, f"openssl x509 -outform DER -in {chain} | base64 -w0; echo; "
                                  f"openssl x509 -noout -ext subjectAltName -in {chain}")
    der, sans = out.split("\n", 1)
    assert base64.b64decode(der) == relay_cert == site_cert  # the shard's own certificate, on both sides
    assert f"DNS:turn-{shard.name}" in sans and f"DNS:{shard.name}" in sans


def test_prosody_announces_the_shards_own_stun_and_turn(fleet):
    shard = fleet["shard"]
    with participant(shard, "turn-credentials") as p:
        services = p.external_services()
    kinds = sorted((s["type"], s.get("transport"), s["port"]) for s in services)
    assert kinds == [("stun", "udp", "3478"), ("turn", "tcp", "3478"), ("turn", "udp", "3478"),
                     ("turns", "tcp", "443")], services
    assert {s["host"] for s in services if s["type"] != "turns"} == {shard.name}
    assert [s["host"] for s in services if s["type"] == "turns"] == [f"turn-{shard.name}"]
    turn = [s for s in services if s["type"] != "stun"]
    assert all(s["username"] and s["password"] for s in turn), turn
    assert int(turn[0]["username"]) > time.time() + 3600  # time-limited: expiry in the username
    fleet["credential"] = (turn[0]["username"], turn[0]["password"])


def test_relay_over_udp_3478_and_tls_443_with_prosodys_credentials(fleet):
    if "credential" not in fleet:
        test_prosody_announces_the_shards_own_stun_and_turn(fleet)
    user, password = fleet["credential"]
    peer = ["-e", fleet["gateway"], "-r", str(PEER_PORT)]
    code, out = uclient(fleet, "-u", user, "-w", password, *peer, "-p", "3478")
    assert code == 0 and relayed(out), out[-1500:]
    code, out = uclient(fleet, "-t", "-S", "-u", user, "-w", password, *peer, "-p", "443")
    assert code == 0 and relayed(out), out[-1500:]


def test_wrong_expired_or_missing_credentials_are_refused(fleet):
    secret = turn_secret(fleet["shard"])
    peer = ["-e", fleet["gateway"], "-r", str(PEER_PORT), "-p", "3478"]
    good_user, _ = rest_credential(secret, int(time.time()) + 600)
    expired = rest_credential(secret, int(time.time()) - 60)
    for label, creds in (("wrong", ["-u", good_user, "-w", "not-the-password"]),
                         ("expired", ["-u", expired[0], "-w", expired[1]]), ("none", [])):
        code, out = uclient(fleet, *creds, *peer)
        assert code != 0 and not relayed(out), (label, out[-800:])
    # the same secret with a valid expiry works: the refusals above are about the credential
    code, out = uclient(fleet, "-u", good_user, "-w", rest_credential(secret, int(good_user))[1], *peer)
    assert code == 0 and relayed(out), out[-1500:]


@pytest.mark.parametrize("target", ["127.0.0.1", "shard", "169.254.169.254", "192.168.1.1"])
def test_relay_towards_loopback_private_or_metadata_addresses_is_refused(fleet, target):
    secret = turn_secret(fleet["shard"])
    user, password = rest_credential(secret, int(time.time()) + 600)
    address = fleet["shard"].address if target == "shard" else target
    code, out = uclient(fleet, "-u", user, "-w", password, "-e", address, "-r", str(PEER_PORT), "-p", "3478")
    assert code != 0 and "403" in out and not relayed(out), out[-800:]


def test_second_deploy_changes_nothing(fleet):
    code, again, err = ensemble("deploy", "--config", str(fleet["config"]))
    changes = {name: h["changes"] for name, h in again.get("hosts", {}).items() if h["changed"]}
    assert code == 0 and again["changed"] == 0, (changes, err[-2000:])
