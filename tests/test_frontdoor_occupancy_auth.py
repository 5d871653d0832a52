"""The occupancy tag between front door and shards, in real nginx (the shard's generated site, and
the test shards): the token never travels; a tag is good for one path of one shard until it expires;
the shard compares digests (secure_link), never the token; the address allow-list runs first."""

from __future__ import annotations

import http.client
import time

import pytest
from standins.shard_occupancy import NginxInstance, OccupancyStandin, ShardsNginx, free_port, nginx_main_conf
from test_frontdoor_routing import TOKEN
from test_templates_nginx import _get, backends, cert, served_shard  # noqa: F401  (fixtures: the shard's site)

from ensemble.frontdoor.occupancy import OccupancySource, occupancy_authorization, read_shard

pytestmark = pytest.mark.needs_tool("nginx", "openssl")


def test_only_a_fresh_tag_for_this_path_and_shard_opens(served_shard):  # noqa: F811
    s = served_shard
    path, domain, token = "/_ensemble/census", s["domain"], s["token"]

    def status(authorization: str, source: str = "127.0.0.1", url: str = path) -> int:
        return _get(s["https"], url, domain, {"Authorization": authorization}, source=source)[0].status

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
