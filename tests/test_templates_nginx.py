"""The shard's nginx site, checked by the real nginx: `nginx -t` for every OS profile, then served on
loopback to prove the redirects, the app fallback, the proxies and the private occupancy locations."""

from __future__ import annotations

import http.client
import http.server
import json
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers.ports import free_ports

from ensemble import paths
from ensemble.frontdoor.occupancy import occupancy_authorization
from ensemble.profiles import PROFILES
from ensemble.providers.base import Host
from ensemble.render import shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
pytestmark = pytest.mark.needs_tool(NGINX, "openssl")


def _spec(**sections):
    return spec_from_dict(sections)


def _secrets(spec):
    store: dict = {}
    complete_secrets(store, spec)
    return store


def _by_path(files):
    return {f.path: f for f in files}


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate, made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=ensemble-test", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


def _nginx_tree(tmp: Path, files, cert, rewrites: dict[str, str] | None = None) -> Path:
    """Write nginx.conf including the rendered http conf and site, certificates moved into tmp."""
    by_path = _by_path(files)
    site = next(f for p, f in by_path.items() if p.startswith("/etc/nginx/sites-available/"))
    text = site.content
    domain = Path(site.path).name.removesuffix(".conf")
    text = text.replace(f"/etc/ensemble/tls/{domain}/fullchain.pem", str(cert[0]))
    text = text.replace(f"/etc/ensemble/tls/{domain}/privkey.pem", str(cert[1]))
    # the private occupancy listener keeps its own (fleet-CA) certificate, as rendered
    for name in ("fullchain.pem", "privkey.pem"):
        (tmp / f"occupancy-{name}").write_text(by_path[f"/etc/ensemble/tls/occupancy/{name}"].content)
        text = text.replace(f"/etc/ensemble/tls/occupancy/{name}", str(tmp / f"occupancy-{name}"))
    for old, new in (rewrites or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    (tmp / "site.conf").write_text(text)
    (tmp / "http.conf").write_text(by_path["/etc/nginx/conf.d/ensemble-http.conf"].content)
    # workers read the test's private tmp folders: run them as root (ignored when not root)
    (tmp / "nginx.conf").write_text(f"""
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {tmp}/http.conf;
    include {tmp}/site.conf;
}}
""")
    return tmp / "nginx.conf"


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_nginx_accepts_the_site_for_every_profile(profile, tmp_path, cert):
    spec = _spec(fleet={"os": profile})
    conf = _nginx_tree(tmp_path, shard_files(spec, 1, _secrets(spec)), cert)
    run = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "test is successful" in run.stderr


@pytest.mark.parametrize("variant", [
    {"jitsi": {"etherpad": False}},
    {"tls": {"mode": "self-signed"}, "etherpad": {"port": 9101}},
    {"fleet": {"shards": 300, "domain": "a-rather-long-subdomain-name.of-some-organisation.example.org"}},
])
def test_nginx_accepts_spec_variants(variant, tmp_path, cert):
    spec = _spec(**variant)
    n = spec.fleet.shards
    conf = _nginx_tree(tmp_path, shard_files(spec, n, _secrets(spec)), cert)
    run = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_nginx_rejects_a_broken_site(tmp_path, cert):
    """The check can fail: a site with an unbalanced brace is refused."""
    spec = _spec()
    conf = _nginx_tree(tmp_path, shard_files(spec, 1, _secrets(spec)), cert)
    (tmp_path / "site.conf").write_text((tmp_path / "site.conf").read_text().replace("server {", "server {{", 1))
    run = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert run.returncode != 0


def test_site_has_no_http_level_names_and_one_file_serves_two_sites(tmp_path, cert):
    """Two shards' sites in one nginx (as a migration might do) do not clash."""
    spec = _spec()
    secrets = _secrets(spec)
    first = _nginx_tree(tmp_path, shard_files(spec, 1, secrets), cert)
    second = shard_files(spec, 2, secrets)
    site2 = next(f for f in second if f.path.startswith("/etc/nginx/sites-available/")).content
    site2 = site2.replace("/etc/ensemble/tls/demo-2.meet.example.org/fullchain.pem", str(cert[0]))
    site2 = site2.replace("/etc/ensemble/tls/demo-2.meet.example.org/privkey.pem", str(cert[1]))
    for name in ("fullchain.pem", "privkey.pem"):
        (tmp_path / f"occupancy2-{name}").write_text(_by_path(second)[f"/etc/ensemble/tls/occupancy/{name}"].content)
        site2 = site2.replace(f"/etc/ensemble/tls/occupancy/{name}", str(tmp_path / f"occupancy2-{name}"))
    (tmp_path / "site2.conf").write_text(site2)
    text = first.read_text().replace(f"include {tmp_path}/site.conf;",
                                     f"include {tmp_path}/site.conf;\n    include {tmp_path}/site2.conf;")
    first.write_text(text)
    run = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(first)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    directives = [line.split()[0] for line in site2.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert not {"upstream", "map", "limit_req_zone", "split_clients", "geo"} & set(directives)


# ---------------------------------------------------------------- served for real on loopback

class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in backend (prosody / jvb / jicofo / etherpad): answers JSON naming what it saw."""

    seen: list = []
    forwarded_for: list = []  # (backend, X-Forwarded-For)

    def do_GET(self):  # noqa: N802 (http.server's naming)
        if "ssi-probe" in self.path:  # a backend echoing user content as HTML, an SSI directive in it
            body = b'<p><!--#echo var="remote_addr" --></p>'
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        body = json.dumps({"backend": self.server.backend_name, "path": self.path,
                           "host": self.headers.get("Host")}).encode()
        type(self).seen.append((self.server.backend_name, self.path, self.headers.get("Host")))
        type(self).forwarded_for.append((self.server.backend_name, self.headers.get("X-Forwarded-For")))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def backends():
    servers = {}
    for name in ("prosody", "jvb", "jicofo", "etherpad"):
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
        server.backend_name = name
        # shutdown() waits for serve_forever's next poll: 0.05 s, not the default 0.5 s, per backend
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers[name] = server
    yield {name: s.server_address[1] for name, s in servers.items()}
    for server in servers.values():
        server.shutdown()
        server.server_close()


@pytest.fixture
def served_shard(tmp_path, cert, backends):
    """The rendered shard site under real nginx on loopback; the front door is 127.0.0.3."""
    # the site listening on 443 itself (turn off); behind the TURN multiplexer: tests/test_templates_coturn.py
    spec = _spec(etherpad={"port": backends["etherpad"]}, turn={"enabled": False})
    secrets = _secrets(spec)
    frontdoor = Host(name=spec.fleet.domain, role="frontdoor", shard=None, address="127.0.0.3")
    files = shard_files(spec, 1, secrets, frontdoor=frontdoor)
    domain = spec.shard_name(1)
    web, acme = tmp_path / "web", tmp_path / "acme"
    (web / "static").mkdir(parents=True)
    (web / "index.html").write_text("<html>jitsi app</html>")
    (web / "static" / "a.css").write_text("body{}")
    (web / "libs").mkdir()
    (web / "libs" / "rnnoise.wasm").write_bytes(b"\0asm\1\0\0\0")
    (web / "libs" / "app.bundle.min.js").write_text("var app;")
    (acme / ".well-known/acme-challenge").mkdir(parents=True)
    (acme / ".well-known/acme-challenge/tok").write_text("challenge-answer")
    (tmp_path / "config.js").write_text(_by_path(files)[f"/etc/jitsi/meet/{domain}-config.js"].content)
    (tmp_path / "state.json").write_text('{"drain": false}\n')
    https_port, http_port, occupancy_port = free_ports(3)
    conf = _nginx_tree(tmp_path, files, cert, {
        f"listen {paths.OCCUPANCY_PORT} ssl;": f"listen 127.0.0.1:{occupancy_port} ssl;",
        f"listen [::]:{paths.OCCUPANCY_PORT} ssl;": "",
        "listen 443 ssl http2;": f"listen 127.0.0.1:{https_port} ssl http2;",
        "listen [::]:443 ssl http2;": "",
        "listen 80;": f"listen 127.0.0.1:{http_port};",
        "listen [::]:80;": "",
        "root /usr/share/jitsi-meet;": f"root {web};",
        "alias /usr/share/jitsi-meet/$1/$2;": f"alias {web}/$1/$2;",
        "root /var/www/acme;": f"root {acme};",
        f"alias /etc/jitsi/meet/{domain}-config.js;": f"alias {tmp_path}/config.js;",
        "alias /var/lib/ensemble/state.json;": f"alias {tmp_path}/state.json;",
        "127.0.0.1:5280/": f"127.0.0.1:{backends['prosody']}/",
        "127.0.0.1:8080/": f"127.0.0.1:{backends['jvb']}/",
        "127.0.0.1:8888/": f"127.0.0.1:{backends['jicofo']}/",
    })
    # the mime.types of nginx < 1.21 (bullseye, buster): no type for .wasm
    old_types = tmp_path / "mime.types"
    old_types.write_text("".join(line for line in Path("/etc/nginx/mime.types").read_text().splitlines(True)
                                 if "wasm" not in line))
    conf.write_text(conf.read_text().replace("include /etc/nginx/mime.types;", f"include {old_types};"))
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", https_port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nginx did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
    _Recorder.seen = []
    yield {"https": https_port, "http": http_port, "occupancy": occupancy_port, "domain": domain,
           "token": secrets["fleet"]["occupancy_token"], "secrets": secrets, "folder": tmp_path}
    proc.send_signal(signal.SIGTERM)  # fast shutdown: nothing is left to serve
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _get(port, path, host, headers=None, tls=True, source="127.0.0.1"):
    if tls:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5, source_address=(source, 0))
    else:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    conn.request("GET", path, headers={"Host": host, **(headers or {})})
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp, body


def test_port_80_redirects_to_https_but_serves_acme_challenges(served_shard):
    s = served_shard
    resp, _ = _get(s["http"], "/myroom?x=1", s["domain"], tls=False)
    assert resp.status == 301
    assert resp.getheader("Location") == f"https://{s['domain']}/myroom?x=1"
    resp, body = _get(s["http"], "/.well-known/acme-challenge/tok", s["domain"], tls=False)
    assert (resp.status, body) == (200, b"challenge-answer")


def test_app_room_fallback_config_and_static(served_shard):
    s = served_shard
    resp, body = _get(s["https"], "/SomeRoom", s["domain"])
    assert resp.status == 200 and b"jitsi app" in body
    assert resp.getheader("Strict-Transport-Security", "").startswith("max-age=")
    resp, body = _get(s["https"], "/config.js", s["domain"])
    assert resp.status == 200 and b"var config" in body
    resp, body = _get(s["https"], "/static/a.css", s["domain"])
    assert (resp.status, body) == (200, b"body{}")


def test_webassembly_has_its_type_even_where_nginx_lacks_it(served_shard):
    s = served_shard
    resp, body = _get(s["https"], "/libs/rnnoise.wasm", s["domain"])
    assert (resp.status, resp.getheader("Content-Type"), body[:4]) == (200, "application/wasm", b"\0asm")
    resp, _ = _get(s["https"], "/libs/app.bundle.min.js", s["domain"])
    assert resp.status == 200 and resp.getheader("Content-Type") == "application/javascript"


def test_signalling_and_etherpad_reach_their_backends(served_shard):
    s = served_shard
    resp, body = _get(s["https"], "/http-bind?room=abc", s["domain"])
    assert json.loads(body) == {"backend": "prosody", "path": "/http-bind?room=abc", "host": s["domain"]}
    resp, body = _get(s["https"], "/xmpp-websocket?room=abc", s["domain"])
    assert json.loads(body)["path"] == "/xmpp-websocket?room=abc"
    resp, body = _get(s["https"], "/conference-request/v1", s["domain"])
    assert json.loads(body)["backend"] == "jicofo"
    resp, body = _get(s["https"], "/etherpad/p/pad1", s["domain"])
    assert json.loads(body) == {"backend": "etherpad", "path": "/p/pad1", "host": s["domain"]}


@pytest.mark.parametrize("path, backend, backend_path", [
    ("/_ensemble/census", "prosody", "/room-census"),
    ("/_ensemble/stats", "jvb", "/colibri/stats"),
    ("/_ensemble/health", "jicofo", "/about/health"),
])
def test_occupancy_endpoints_need_token_and_allowed_address(served_shard, path, backend, backend_path):
    s = served_shard
    auth = {"Authorization": occupancy_authorization(s["token"], path, s["domain"])}
    assert _get(s["occupancy"], path, s["domain"])[0].status == 403
    assert _get(s["occupancy"], path, s["domain"], {"Authorization": "Bearer wrong"})[0].status == 403
    assert _get(s["occupancy"], path, s["domain"], {"Authorization": f"Bearer {s['token']}"})[0].status == 403
    # right token from an address that is neither the front door nor this host
    assert _get(s["occupancy"], path, s["domain"], auth, source="127.0.0.2")[0].status == 403
    # the public port no longer serves them, whoever asks and with a good tag
    _Recorder.seen = []
    assert b'"backend"' not in _get(s["https"], path, s["domain"], auth, source="127.0.0.3")[1]
    assert not _Recorder.seen
    for source in ("127.0.0.1", "127.0.0.3"):  # this host, the front door
        resp, body = _get(s["occupancy"], path, s["domain"], auth, source=source)
        assert resp.status == 200
        seen = json.loads(body)
        assert (seen["backend"], seen["path"]) == (backend, backend_path)
    if backend == "prosody":
        assert seen["host"] == s["domain"]  # mod_muc_census answers on the shard's virtual host


def test_state_endpoint_serves_the_drain_flag(served_shard):
    s = served_shard
    assert _get(s["occupancy"], "/_ensemble/state", s["domain"])[0].status == 403
    auth = {"Authorization": occupancy_authorization(s["token"], "/_ensemble/state", s["domain"])}
    resp, body = _get(s["occupancy"], "/_ensemble/state", s["domain"], auth)
    assert resp.status == 200
    assert resp.getheader("Content-Type") == "application/json"
    assert json.loads(body) == {"drain": False}


SECURITY_HEADERS = {"Strict-Transport-Security": "max-age=63072000", "X-Content-Type-Options": "nosniff"}


@pytest.mark.parametrize("path, auth", [
    ("/SomeRoom", False), ("/", False), ("/config.js", False), ("/static/a.css", False), ("/static/missing", False),
    ("/http-bind", False), ("/conference-request/v1", False), ("/etherpad/p/pad1", False),
    ("/etherpad/stats", False), ("/_ensemble/census", False), ("/_ensemble/census", True),
    ("/_ensemble/state", True), ("/no/such/thing.txt", False), ("/libs/rnnoise.wasm", False),
])
def test_security_headers_on_every_https_response(served_shard, path, auth):
    """HSTS and nosniff on every answer, 200 or 4xx, whichever location (add_header is not inherited)."""
    s = served_shard
    for port in (s["https"], s["occupancy"]) if path.startswith("/_ensemble/") else (s["https"],):
        resp, _ = _get(port, path, s["domain"], {"Authorization": f"Bearer {s['token']}"} if auth else None)
        for name, value in SECURITY_HEADERS.items():
            assert resp.getheader(name) == value, (path, port, resp.status, resp.getheaders())


@pytest.mark.parametrize("path", [
    "/etherpad/stats", "/etherpad/stats/", "/etherpad/STATS", "/etherpad/%73tats", "/etherpad//stats",
    "/etherpad/p/../stats", "/etherpad/admin", "/etherpad/admin/plugins", "/etherpad/Admin/settings",
    "/etherpad/api", "/etherpad/api/1.2.15/listAllPads?apikey=x", "/etherpad/stats?x=1",
    # the same API under /rest (Etherpad registers every function twice), its descriptions, the test runner
    "/etherpad/rest/1.2.15/listAllPads?apikey=x", "/etherpad/REST/1/listAllPads", "/etherpad/openapi.json",
    "/etherpad/rest/openapi.json", "/etherpad/tests/frontend/",
])
def test_etherpad_admin_endpoints_are_not_public(served_shard, path):
    s = served_shard
    _Recorder.seen = []
    resp, _ = _get(s["https"], path, s["domain"])
    assert resp.status == 404
    assert not [seen for seen in _Recorder.seen if seen[0] == "etherpad"]  # never reached Etherpad


def test_etherpad_pads_and_assets_still_reach_etherpad(served_shard):
    s = served_shard
    for path in ("/etherpad/p/stats", "/etherpad/static/js/pad.js", "/etherpad/socket.io/?EIO=3", "/etherpad/"):
        resp, body = _get(s["https"], path, s["domain"])
        assert resp.status == 200 and json.loads(body)["backend"] == "etherpad", path


@pytest.mark.parametrize("path", [
    "/conference-request/v1/x%3Fdebug=1%23frag?y=2", "/conference-request/v1/%252e%252e/%252e%252e/about/health",
    "/conference-request/v1/x%0d", "/conference-request/v1/x%20y",
])
def test_conference_request_tails_that_change_meaning_once_decoded_never_reach_jicofo(served_shard, path):
    """The tail goes on to jicofo's private port as nginx decoded it: a "?", "#", CR or "%2e" made there
    from an encoded one would be a query, a fragment or a path jicofo reads but the client never sent."""
    s = served_shard
    _Recorder.seen = []
    resp, _ = _get(s["https"], path, s["domain"])
    assert resp.status == 404 and not [seen for seen in _Recorder.seen if seen[0] == "jicofo"], _Recorder.seen
    resp, body = _get(s["https"], "/conference-request/v1/a-b_c.d~e/f", s["domain"])
    assert json.loads(body)["path"] == "/conference-request/v1/a-b_c.d~e/f"


def test_etherpad_sees_the_clients_address_not_its_claim(served_shard):
    """Etherpad trusts its proxy and takes the leftmost X-Forwarded-For (its rate limits key on it): a client's
    claim never gets there; the front door's (127.0.0.3 here; proxy mode) names the client it served."""
    s = served_shard
    claim = {"X-Forwarded-For": "203.0.113.77"}
    _Recorder.forwarded_for = []
    resp, _ = _get(s["https"], "/etherpad/p/pad1/export/txt", s["domain"], claim)
    assert resp.status == 200 and _Recorder.forwarded_for == [("etherpad", "127.0.0.1")]
    _Recorder.forwarded_for = []
    resp, _ = _get(s["https"], "/etherpad/p/pad1/export/txt", s["domain"], claim, source="127.0.0.3")
    assert resp.status == 200 and _Recorder.forwarded_for == [("etherpad", "203.0.113.77, 127.0.0.3")]


def test_missing_files_write_no_error_log_line(served_shard):
    """Anyone can ask for files that do not exist: 404s, not error-log lines carrying the asker's text."""
    s = served_shard
    for path in ("/x/attacker-chosen-text", "/static/attacker-chosen-text.css", "/libs/attacker-chosen-text.js"):
        assert _get(s["https"], path, s["domain"])[0].status == 404, path
    log = s["folder"] / "error.log"
    assert "attacker-chosen-text" not in (log.read_text() if log.exists() else "")


@pytest.mark.parametrize("path", ["/etherpad/p/ssi-probe", "/http-bind?ssi-probe", "/xmpp-websocket?ssi-probe",
                                  "/conference-request/v1/ssi-probe", "/_api/room-info?ssi-probe"])
def test_backend_answers_are_not_run_as_server_side_includes(served_shard, path):
    """SSI is on for the app's index.html; a backend's HTML answer (user content) is passed on as it is."""
    s = served_shard
    resp, body = _get(s["https"], path, s["domain"])
    assert resp.status == 200 and body == b'<p><!--#echo var="remote_addr" --></p>', body
