"""The occupancy tag between front door and shards, in real nginx (the shard's generated site, and
the test shards): the token never travels; a tag is good for one path of one shard until it expires;
the shard compares digests (secure_link), never the token; the address allow-list runs first."""

from __future__ import annotations

import http.client
import subprocess
import time

import pytest
from helpers.ports import free_port
from standins.shard_occupancy import NginxInstance, OccupancyStandin, ShardsNginx, nginx_main_conf
from test_frontdoor_routing import TOKEN
from test_templates_nginx import _get, backends, cert, served_shard  # noqa: F401  (fixtures: the shard's site)

from ensemble.frontdoor.occupancy import OccupancySource, occupancy_authorization, read_shard

pytestmark = pytest.mark.needs_tool("nginx", "openssl")


def test_only_a_fresh_tag_for_this_path_and_shard_opens(served_shard):  # noqa: F811
    s = served_shard
    path, domain, token = "/_ensemble/census", s["domain"], s["token"]

    def status(authorization: str, source: str = "127.0.0.1", url: str = path) -> int:
        return _get(s["occupancy"], url, domain, {"Authorization": authorization}, source=source)[0].status

    assert status(occupancy_authorization(token, path, domain)) == 200
    assert status(occupancy_authorization(token, path, domain.upper())) == 200  # nginx's $host is lower-case
    refused = {
        "the token itself": f"Bearer {token}",
        "another token": occupancy_authorization(token + "x", path, domain),
        "another path": occupancy_authorization(token, "/_ensemble/stats", domain),
        "another shard": occupancy_authorization(token, path, "other-" + domain),
        "expired": occupancy_authorization(token, path, domain, now=time.time() - 400),
        "expiry changed": (occupancy_authorization(token, path, domain).rsplit(",", 1)[0]
                           + f",{int(time.time()) + 9999}"),
        "garbage": "Ensemble " + "A" * 22 + ",x",
        "empty": "",
    }
    for what, authorization in refused.items():
        assert status(authorization) == 403, what
    # a good tag from an address off the allow-list
    assert status(occupancy_authorization(token, path, domain), source="127.0.0.2") == 403


def test_allow_list_runs_before_the_token_check(tmp_path):
    """nginx's access phase runs allow/deny before auth_request: a denied address never reaches the
    tag compare (here the compare location would answer 500, so a 403 proves the order)."""
    port = free_port()
    (tmp_path / "www").mkdir()
    (tmp_path / "www" / "private").write_text("in\n")
    nginx = NginxInstance(tmp_path)
    nginx.conf.write_text(nginx_main_conf(tmp_path, f"""
    server {{
        listen 127.0.0.1:{port};
        location = /private {{ allow 127.0.0.1; deny all; auth_request /auth; root {tmp_path}/www; }}
        location = /auth {{ internal; return 500; }}
    }}"""))
    nginx.start()
    try:
        for source, expected in (("127.0.0.2", 403), ("127.0.0.1", 500)):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
            conn.request("GET", "/private")
            assert conn.getresponse().status == expected, source
            conn.close()
    finally:
        nginx.stop()


def test_a_shard_impostor_gets_no_token(tmp_path):
    """Whoever answers for a shard's name sees only a tag (what the front door sends), and the tag it
    saw is refused by the real shard for any other path."""
    port = free_port()
    impostor = NginxInstance(tmp_path / "impostor")
    (tmp_path / "impostor").mkdir(exist_ok=True)
    impostor.conf.write_text(nginx_main_conf(tmp_path / "impostor", f"""
    log_format auth '$http_authorization';
    server {{ listen 127.0.0.1:{port}; access_log {tmp_path}/impostor/auth.log auth;
             location / {{ return 200 "{{}}"; }} }}"""))
    impostor.start()
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", ["s1.fd.test"], standin.port, TOKEN).start()
    try:
        read_shard("s1.fd.test", OccupancySource(token=TOKEN, urls={"s1.fd.test": f"http://127.0.0.1:{port}"}))
        impostor.stop()
        seen = (tmp_path / "impostor" / "auth.log").read_text().split()
        assert seen and not any(TOKEN in line for line in seen)
        stolen = next(line for line in (tmp_path / "impostor" / "auth.log").read_text().splitlines()
                      if line.startswith("Ensemble"))  # the census read's tag
        conn = http.client.HTTPConnection("127.0.0.1", shards.port, timeout=5)
        conn.request("GET", "/_ensemble/stats", headers={"Host": "s1.fd.test", "Authorization": stolen})
        assert conn.getresponse().status == 403
        conn.close()
        real = read_shard("s1.fd.test", OccupancySource(token=TOKEN,
                                                        urls={"s1.fd.test": f"http://127.0.0.1:{shards.port}"}))
        assert real.ok, real.error
    finally:
        impostor.stop()
        shards.stop()
        standin.stop()


# ---------------------------------------------------------------- who answers: the fleet CA

def _fleet_ca_file(tmp_path, secrets) -> str:
    path = tmp_path / "fleet-ca.pem"
    path.write_text(secrets["fleet-ca"]["cert"])
    return str(path)


def _impostor(tmp_path, name: str, pair: tuple[str, str]) -> tuple[NginxInstance, int]:
    """An nginx answering TLS for a shard's name with another certificate, logging what it is sent."""
    port = free_port()
    folder = tmp_path / "impostor"
    folder.mkdir(exist_ok=True)
    nginx = NginxInstance(folder)
    nginx.conf.write_text(nginx_main_conf(folder, f"""
    log_format auth '$http_authorization';
    server {{ listen 127.0.0.1:{port} ssl; server_name {name};
             ssl_certificate {pair[0]}; ssl_certificate_key {pair[1]};
             access_log {folder}/auth.log auth;
             location / {{ return 200 '{{"room_census": [], "participants": 0}}'; }} }}"""))
    (folder / "auth.log").touch()
    nginx.start()
    return nginx, port


def test_the_front_door_reads_a_shard_presenting_the_fleet_ca_certificate(served_shard, tmp_path):  # noqa: F811
    """The rendered shard's occupancy listener, verified against the fleet CA for the shard's name."""
    s = served_shard
    source = OccupancySource(token=s["token"], ca_file=_fleet_ca_file(tmp_path, s["secrets"]),
                             urls={s["domain"]: f"https://127.0.0.1:{s['occupancy']}"})
    reading = read_shard(s["domain"], source)
    assert reading.ok, reading.error
    # the same (real) shard answering for another shard's name is refused: the name is checked
    other = "demo-2.meet.example.org"
    wrong = read_shard(other, OccupancySource(token=s["token"], ca_file=source.ca_file,
                                              urls={other: f"https://127.0.0.1:{s['occupancy']}"}))
    assert not wrong.ok and wrong.error.startswith("certificate refused:") and "mismatch" in wrong.error.lower()


@pytest.mark.parametrize("issuer", ["self-signed", "another fleet's CA"])
def test_a_shard_impostor_with_another_certificate_is_refused_before_anything_is_sent(
        served_shard, tmp_path, issuer):  # noqa: F811
    """Whoever answers for a shard's name with a certificate the fleet CA did not issue (self-signed for
    that very name, or from another ensemble fleet's CA) gets no request at all: the shard is unreadable
    (its reason names the certificate), so no false occupancy reading enters the plan."""
    from ensemble.fleetca import SHARD_CERT, SHARD_KEY, issue, new_ca
    from ensemble.frontdoor.occupancy import read_all
    from ensemble.frontdoor.selection import is_good

    s = served_shard
    name = s["domain"]
    crt, key = tmp_path / "impostor.crt", tmp_path / "impostor.key"
    if issuer == "self-signed":
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", f"/CN={name}", "-addext", f"subjectAltName=DNS:{name}",
                        "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    else:
        forged = issue(new_ca("another-fleet"), name)
        crt.write_text(forged[SHARD_CERT])
        key.write_text(forged[SHARD_KEY])
    impostor, port = _impostor(tmp_path, name, (str(crt), str(key)))
    try:
        source = OccupancySource(token=s["token"], ca_file=_fleet_ca_file(tmp_path, s["secrets"]),
                                 urls={name: f"https://127.0.0.1:{port}"})
        [reading] = read_all([name], source)
        assert not reading.ok and not is_good(reading) and reading.participants == 0
        assert reading.error.startswith("certificate refused:"), reading.error
        # the impostor does answer TLS with its certificate when nothing is verified: the test is live
        assert _get(port, "/_ensemble/census", name)[0].status == 200
    finally:
        impostor.stop()
    seen = (tmp_path / "impostor" / "auth.log").read_text().splitlines()
    assert seen == ["-"]  # only the unverified probe above reached it, without any tag
