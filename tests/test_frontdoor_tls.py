"""The front door's TLS and headers in real nginx: HSTS on every response path of the https server
(pages, redirects, error pages, 404, proxied answers), no nginx version anywhere, port 80 redirects
to the configured name whatever the Host header says, TLS 1.2 only with ECDHE+AEAD suites (a CBC or
SHA-1 suite is refused, checked with `openssl s_client -cipher`), TLS 1.3 accepted."""

from __future__ import annotations

import http.client
import ssl
import subprocess
from pathlib import Path

import pytest
from helpers.ports import free_ports
from standins.shard_occupancy import NginxInstance, OccupancyStandin, ShardsNginx, nginx_main_conf
from test_frontdoor_routing import TOKEN, make_spec

from ensemble.frontdoor.render import FrontdoorLayout, frontdoor_files, routing_conf, seed_plan

pytestmark = pytest.mark.needs_tool("nginx", "openssl")

HSTS = "max-age=31536000"


class TlsFrontdoor(NginxInstance):
    """The generated front door with TLS on (a self-signed P-256 certificate like tls.mode = self-signed)."""

    def __init__(self, prefix: Path, spec, shards: ShardsNginx) -> None:
        super().__init__(prefix)
        self.port, self.http_port = free_ports(2)
        domain = spec.fleet.domain
        tls_dir = prefix / "tls"
        (tls_dir / domain).mkdir(parents=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "2", "-subj", f"/CN={domain}", "-addext", f"subjectAltName=DNS:{domain}",
                        "-keyout", str(tls_dir / domain / "privkey.pem"),
                        "-out", str(tls_dir / domain / "fullchain.pem")], check=True, capture_output=True)
        names = spec.shard_names()
        self.layout = FrontdoorLayout(
            site_path=str(prefix / "conf/site.conf"), proxy_params_path=str(prefix / "conf/proxy.conf"),
            routing_path=str(prefix / "var/routing.conf"), seed_path=str(prefix / "conf/routing.seed.conf"),
            state_path=str(prefix / "var/state.json"), webroot=str(prefix / "www"),
            routes_log=str(prefix / "logs/routes.log"), listen=(f"127.0.0.1:{self.port} ssl",),
            http_listen=(f"127.0.0.1:{self.http_port}",), tls=True, tls_dir=str(tls_dir),
            acme_webroot=str(prefix / "acme"), shard_scheme="http", shard_port=shards.port,
            shard_addresses={n: f"127.0.0.1:{shards.port}" for n in names})
        for item in frontdoor_files(spec, {}, None, self.layout):
            if item.path.startswith(str(prefix)):
                Path(item.path).parent.mkdir(parents=True, exist_ok=True)
                Path(item.path).write_text(item.content, encoding="utf-8")
        (prefix / "logs").mkdir(exist_ok=True)
        Path(self.layout.routing_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.layout.routing_path).write_text(routing_conf(seed_plan(spec), spec, self.layout))
        self.conf.write_text(nginx_main_conf(prefix, f"    include {self.layout.site_path};"))


@pytest.fixture(params=["redirect", "proxy"])
def door(tmp_path, request):
    spec = make_spec(mode=request.param)
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    front = TlsFrontdoor(tmp_path / "door", spec, shards).start()
    try:
        yield spec, front
    finally:
        front.stop()
        shards.stop()
        standin.stop()


def https_get(door: TlsFrontdoor, path: str, host: str) -> http.client.HTTPResponse:
    context = ssl.create_default_context()
    context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    conn = http.client.HTTPSConnection("127.0.0.1", door.port, context=context, timeout=10)
    conn.request("GET", path, headers={"Host": host, "Referer": f"https://{host}/SomeRoom"})
    response = conn.getresponse()
    response.read()
    conn.close()
    return response


def s_client(door: TlsFrontdoor, *args: str) -> bool:
    """Whether a TLS handshake with these openssl s_client options succeeds."""
    run = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{door.port}",
                          "-servername", "fd.ensemble.test", *args],
                         input="", capture_output=True, text=True, timeout=20)
    return run.returncode == 0 and "Cipher is (NONE)" not in run.stdout


def test_every_response_carries_hsts_and_no_version(door):
    spec, front = door
    domain = spec.fleet.domain
    paths = {"/": 200, "/?lang=en": 200, "/_ensemble/landing.css": 200, "/_ensemble/nothing.html": 404,
             "/_ensemble/400.html": 200, "/a%20b": 200, "/_ensemble/go?room=Team-1": 302,
             "/_ensemble/go?room=": 302, "/favicon.ico": 204, "/SomeRoom": 302}
    if spec.frontdoor.mode == "proxy":
        paths.update({"/SomeRoom": 200, "/http-bind?room=someroom": 200, "/libs/app.bundle.min.js": 200,
                      "/http-bind?room=a/b": 400})
    else:
        paths.update({"/no/such/page": 400, "/a.b": 400, "/a%2Fb": 400})
    for path, status in paths.items():
        response = https_get(front, path, domain)
        assert response.status == status, (path, response.status)
        assert response.getheader("Strict-Transport-Security") == HSTS, (path, response.getheaders())
        assert response.getheader("Server") == "nginx", (path, response.getheader("Server"))
    # an unknown Host still reaches this (only) https server: same headers
    response = https_get(front, "/", "evil.example")
    assert response.getheader("Strict-Transport-Security") == HSTS and response.getheader("Server") == "nginx"


def test_port_80_redirects_to_the_configured_name(door):
    spec, front = door
    for host in ("evil.example", spec.fleet.domain, "evil.example:8080"):
        conn = http.client.HTTPConnection("127.0.0.1", front.http_port, timeout=10)
        conn.request("GET", "/SomeRoom?x=1", headers={"Host": host})
        response = conn.getresponse()
        response.read()
        conn.close()
        assert response.status == 301
        assert response.getheader("Location") == f"https://{spec.fleet.domain}/SomeRoom?x=1", host
        assert response.getheader("Server") == "nginx"
        assert response.getheader("Strict-Transport-Security") is None  # RFC 6797 7.2: never over plain http


def test_only_modern_ciphers(door):
    _, front = door
    assert s_client(front, "-tls1_3")
    assert s_client(front, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256")
    assert s_client(front, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305")
    for cbc_or_sha1 in ("ECDHE-ECDSA-AES128-SHA", "ECDHE-ECDSA-AES256-SHA", "ECDHE-ECDSA-AES128-SHA256",
                        "ECDHE-ECDSA-AES256-SHA384"):
        assert not s_client(front, "-tls1_2", "-cipher", cbc_or_sha1), cbc_or_sha1
    assert not s_client(front, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0")
