"""The TURN relay's files (issue 11): coturn's configuration, the 443 multiplexer checked by the real
nginx (stream module) and served on loopback in front of the real site, prosody's external_services,
config.js without third-party STUN, the firewall and the renewal hook; `[turn] enabled = false` too."""

from __future__ import annotations

import http.server
import json
import re
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
from ensemble.errors import SpecError
from ensemble.hostfiles import base_files
from ensemble.profiles import PROFILES
from ensemble.providers.base import DeployEnv, Host
from ensemble.render import render_fleet_to, shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"  # Debian's libnginx-mod-stream


@pytest.fixture(scope="module")
def cert(tmp_path_factory) -> tuple[Path, Path]:
    """A throwaway self-signed certificate, made by openssl."""
    folder = tmp_path_factory.mktemp("tls")
    crt, key = folder / "fullchain.pem", folder / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                    "-days", "2", "-subj", "/CN=ensemble-test", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True)
    return crt, key


class _Census(http.server.BaseHTTPRequestHandler):
    """prosody's HTTP where nginx proxies it (BOSH): answers the X-Forwarded-For nginx sent."""

    def do_GET(self):  # noqa: N802 (http.server's naming)
        body = json.dumps({"forwarded_for": self.headers.get("X-Forwarded-For")}).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def census():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Census)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _files(n: int = 1, host: Host | None = None, frontdoor: Host | None = None, **sections):
    spec = spec_from_dict(sections)
    store: dict = {}
    complete_secrets(store, spec)
    return spec, store, {f.path: f for f in shard_files(spec, n, store, host, frontdoor)}


def test_coturn_config_only_ephemeral_credentials_and_peer_restrictions():
    spec, store, files = _files()
    d = spec.shard_name(1)
    conf = files[paths.COTURN_CONF]
    assert (conf.mode, conf.owner, conf.group, conf.service) == (0o640, "root", "turnserver", "coturn")
    lines = conf.content.splitlines()
    secret = store[d]["turn_secret"]
    for wanted in ("use-auth-secret", f"static-auth-secret={secret}", f"realm={d}", "listening-port=3478",
                   "tls-listening-port=5349", "no-tcp-relay", "no-multicast-peers", "no-cli", "user-quota=12",
                   "total-quota=1200", "max-bps=1000000", "min-port=49152", "max-port=49999",
                   f"cert=/etc/coturn/certs/{d}.fullchain.pem", f"pkey=/etc/coturn/certs/{d}.privkey.pem",
                   "denied-peer-ip=127.0.0.0-127.255.255.255", "denied-peer-ip=10.0.0.0-10.255.255.255",
                   "denied-peer-ip=169.254.0.0-169.254.255.255", "denied-peer-ip=172.16.0.0-172.31.255.255",
                   "denied-peer-ip=192.168.0.0-192.168.255.255",
                   "denied-peer-ip=fc00::-fdff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"):
        assert wanted in lines, wanted
    assert not [line for line in lines
                if line.startswith(("allowed-peer-ip", "user=", "lt-cred-mech", "allow-loopback"))]
    # behind 1:1 NAT (placeholder hosts: public 203.0.113.1, private 192.0.2.1) the public address is announced
    assert "external-ip=203.0.113.1/192.0.2.1" in lines
    # relays from the host's own address, not the loopback address TLS arrives on through nginx
    assert "relay-ip=192.0.2.1" in lines and not [line for line in lines if line.startswith("no-tlsv1")]


def test_allowed_peers_are_explicit_ranges_and_whole_families_are_refused():
    _, _, files = _files(turn={"allowed_peer_ips": ["10.9.8.1/32", "10.9.7.0/24"]})
    lines = files[paths.COTURN_CONF].content.splitlines()
    assert "allowed-peer-ip=10.9.8.1" in lines and "allowed-peer-ip=10.9.7.0-10.9.7.255" in lines
    with pytest.raises(SpecError, match=r"^turn.allowed_peer_ips: .*whole address family"):
        spec_from_dict({"turn": {"allowed_peer_ips": ["0.0.0.0/0"]}})
    with pytest.raises(SpecError, match=r"^turn.allowed_peer_ips: not a CIDR"):
        spec_from_dict({"turn": {"allowed_peer_ips": ["169.254.169.254; rm -rf /"]}})


@pytest.mark.parametrize("turn, key", [
    ({"port": 443}, "turn.port"), ({"port": 10000}, "turn.port"), ({"port": 0}, "turn.port"),
    ({"relay_min_port": 50000, "relay_max_port": 49000}, "turn.relay_min_port"),
    ({"relay_min_port": 9000, "relay_max_port": 11000}, "turn.relay_min_port"),
    ({"credential_ttl": 10}, "turn.credential_ttl"), ({"max_bps": -1}, "turn.max_bps"),
    ({"enabled": "yes"}, "turn.enabled"), ({"dedicated_hosts": 2}, "turn.dedicated_hosts"),
])
def test_bad_turn_settings_name_their_key(turn, key):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"turn": turn})
    assert str(err.value).startswith(f"{key}:"), str(err.value)


def test_prosody_announces_stun_turn_and_turns_with_ephemeral_credentials():
    spec, store, files = _files(turn={"credential_ttl": 3600})
    d = spec.shard_name(1)
    vhost = files[f"/etc/prosody/conf.avail/{d}.cfg.lua"].content
    assert f'external_service_secret = "{store[d]["turn_secret"]}"' in vhost
    assert f'{{ type = "stun", host = "{d}", port = 3478, transport = "udp" }};' in vhost
    for kind, host, port, transport in (("turn", d, 3478, "udp"), ("turn", d, 3478, "tcp"),
                                        ("turns", f"turn-{d}", 443, "tcp")):
        assert (f'{{ type = "{kind}", host = "{host}", port = {port}, transport = "{transport}", secret = true, '
                f'ttl = 3600, algorithm = "turn" }};') in vhost


def test_prosody_config_parses_with_lua():
    luac = shutil.which("luac5.4")
    if not luac:
        pytest.skip("luac5.4 is checked with the prosody template tests")
    _, _, files = _files()
    text = next(f.content for p, f in files.items() if p.startswith("/etc/prosody/conf.avail/"))
    # prosody's config DSL: VirtualHost/Component lines are calls; the external_services table must be valid Lua
    start = text.index("external_services = {")
    block = text[start:text.index("\n}\n", start) + 3]
    run = subprocess.run([luac, "-p", "-"], input=block, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


def test_config_js_has_only_the_fleets_own_stun_and_off_means_none():
    spec, _, files = _files()
    d = spec.shard_name(1)
    js = files[f"/etc/jitsi/meet/{d}-config.js"].content
    assert f'{{ urls: "stun:{d}:3478" }},' in js and "jitsi.net" not in js and "useStunTurn: true" in js
    spec, _, files = _files(turn={"enabled": False})
    js = files[f"/etc/jitsi/meet/{d}-config.js"].content
    assert "stun:" not in js and "useStunTurn: false" in js


def test_turn_off_leaves_no_relay_anywhere():
    spec, store, files = _files(turn={"enabled": False})
    d = spec.shard_name(1)
    assert paths.COTURN_CONF not in files and paths.NGINX_STREAM_CONF not in files
    assert "external_services = {" not in files[f"/etc/prosody/conf.avail/{d}.cfg.lua"].content
    assert "listen 443 ssl http2;" in files[f"/etc/nginx/sites-available/{d}.conf"].content
    host = Host(name=d, role="shard", shard=1, address="10.0.0.2")
    kept = {d: store[d], "fleet": store["fleet"]}
    firewall = {f.path: f for f in base_files(spec, host, DeployEnv(spec=spec), kept)}
    text = firewall[paths.NFTABLES_CONF].content
    assert "tcp dport { 80, 443 } accept" in text and "udp dport { 10000 } accept" in text


def test_firewall_opens_exactly_the_relay_ports_and_the_hook_renews_coturn():
    spec = spec_from_dict({"tls": {"mode": "letsencrypt"}})
    store: dict = {}
    complete_secrets(store, spec)
    d = spec.shard_name(1)
    host = Host(name=d, role="shard", shard=1, address="10.0.0.2")
    files = {f.path: f for f in base_files(spec, host, DeployEnv(spec=spec), {d: store[d], "fleet": store["fleet"]})}
    text = files[paths.NFTABLES_CONF].content
    assert "tcp dport { 80, 443, 3478 } accept" in text and "udp dport { 10000, 3478, 49152-49999 } accept" in text
    assert "5349" not in text and "4444" not in text  # coturn's TLS and the site are reached through 443 only
    run = subprocess.run(["nft", "-c", "-f", "-"], input=text, capture_output=True, text=True) \
        if shutil.which("nft") else None
    if run is not None:
        assert run.returncode == 0, run.stderr
    guard = files[paths.COTURN_START_GUARD]
    assert guard.component == "apt"  # put before the install: Debian's default configuration never runs
    assert "ExecStartPre=/bin/grep -qx use-auth-secret /etc/turnserver.conf" in guard.content
    hook = files[paths.CERTBOT_HOOK].content
    copy = f"install -m 0640 -g turnserver /etc/ensemble/tls/{d}/fullchain.pem /etc/coturn/certs/{d}.fullchain.pem"
    assert copy in hook
    assert hook.rstrip().endswith("systemctl restart coturn")


def test_render_shows_the_relay(tmp_path):
    spec = spec_from_dict({})
    store: dict = {}
    complete_secrets(store, spec)
    render_fleet_to(spec, store, tmp_path)
    shard = tmp_path / spec.shard_name(1)
    assert (shard / "etc/turnserver.conf").stat().st_mode & 0o777 == 0o640
    assert "ssl_preread on;" in (shard / paths.NGINX_STREAM_CONF.lstrip("/")).read_text()
    assert not (tmp_path / spec.fleet.domain / "etc/turnserver.conf").exists()  # the front door has no relay


# ---------------------------------------------------------------- the multiplexer under the real nginx

def _stream_tree(tmp: Path, files: dict, cert, ports: dict[str, int], extra_site: dict[str, str]) -> Path:
    """nginx.conf with the stream module, the rendered multiplexer and site, ports moved to loopback."""
    stream = files[paths.NGINX_STREAM_CONF].content
    for old, new in (("listen 443;", f"listen 127.0.0.1:{ports['mux']};"), ("listen [::]:443;", "")):
        assert old in stream, old
        stream = stream.replace(old, new)
    # the loopback ports in one pass: one after the other, a free port put in place of 4444 (e.g. 44453)
    # could itself be rewritten by the next (4445 -> ...)
    loopback = {"4444": ports["web"], "4445": ports["strip"], "5349": ports["coturn"]}
    assert all(f"127.0.0.1:{port}" in stream for port in loopback)
    stream = re.sub(r"127\.0\.0\.1:(4444|4445|5349)\b", lambda m: f"127.0.0.1:{loopback[m[1]]}", stream)
    site_file = next(f for p, f in files.items() if p.startswith("/etc/nginx/sites-available/"))
    domain = Path(site_file.path).name.removesuffix(".conf")
    site = site_file.content.replace(f"/etc/ensemble/tls/{domain}/fullchain.pem", str(cert[0]))
    site = site.replace(f"/etc/ensemble/tls/{domain}/privkey.pem", str(cert[1]))
    for pem in (paths.OCCUPANCY_TLS_CERT, paths.OCCUPANCY_TLS_KEY):  # the private occupancy listener's pair
        (tmp / Path(pem).name).write_text(files[pem].content)
        site = site.replace(pem, str(tmp / Path(pem).name))
    moves = {"127.0.0.1:4444 ssl": f"127.0.0.1:{ports['web']} ssl", "listen 80;": f"listen 127.0.0.1:{ports['http']};",
             "listen [::]:80;": "",
             f"listen {paths.OCCUPANCY_PORT} ssl;": f"listen 127.0.0.1:{ports['occupancy']} ssl;",
             f"listen [::]:{paths.OCCUPANCY_PORT} ssl;": "", **extra_site}
    for old, new in moves.items():
        assert old in site, old
        site = site.replace(old, new)
    (tmp / "stream.conf").write_text(stream)
    (tmp / "site.conf").write_text(site)
    (tmp / "http.conf").write_text(files["/etc/nginx/conf.d/ensemble-http.conf"].content)
    (tmp / "nginx.conf").write_text(f"""
load_module {STREAM_MODULE};
user root;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log;
events {{ worker_connections 64; }}
include {tmp}/stream.conf;
http {{
    include /etc/nginx/mime.types;
    access_log off;
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {tmp}/http.conf;
    include {tmp}/site.conf;
}}
""")
    return tmp / "nginx.conf"


def _ports() -> dict[str, int]:
    names = ("mux", "web", "strip", "coturn", "http", "occupancy")
    return dict(zip(names, free_ports(len(names)), strict=True))


@pytest.mark.needs_tool(NGINX)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_nginx_accepts_the_multiplexer_and_site_for_every_profile(profile, tmp_path, cert):
    if not Path(STREAM_MODULE).exists():
        from conftest import missing

        missing("nginx's stream module is missing (Debian package libnginx-mod-stream)")
    _, _, files = _files(fleet={"os": profile})
    conf = _stream_tree(tmp_path, files, cert, _ports(), {})
    run = subprocess.run([NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


class _FakeRelay:
    """A TLS listener where coturn's TLS side would be: answers every connection with b"relay"."""

    def __init__(self, port: int, pair: tuple[Path, Path]):
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(str(pair[0]), str(pair[1]))
        self.sock = socket.create_server(("127.0.0.1", port))
        self.first_bytes: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                raw, _ = self.sock.accept()
            except OSError:
                return
            peek = raw.recv(5, socket.MSG_PEEK)
            self.first_bytes.append(peek)
            try:
                with self.ctx.wrap_socket(raw, server_side=True) as tls:
                    tls.recv(1024)
                    tls.sendall(b"relay")
            except (OSError, ssl.SSLError):
                pass

    def close(self):
        self.sock.close()


@pytest.fixture
def multiplexer(tmp_path, cert, census):
    if not Path(STREAM_MODULE).exists():
        from conftest import missing

        missing("nginx's stream module is missing (Debian package libnginx-mod-stream)")
    frontdoor = Host(name="meet.example.org", role="frontdoor", shard=None, address="127.0.0.3")
    spec, store, files = _files(frontdoor=frontdoor)
    web = tmp_path / "web"
    web.mkdir()
    (web / "index.html").write_text("<html>jitsi app</html>")
    ports = _ports()
    conf = _stream_tree(tmp_path, files, cert, ports, {
        "root /usr/share/jitsi-meet;": f"root {web};",
        "127.0.0.1:5280/": f"127.0.0.1:{census}/",
    })
    relay = _FakeRelay(ports["coturn"], cert)
    proc = subprocess.Popen([NGINX, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", ports["mux"]), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"nginx did not start: {proc.stderr.read().decode()}")
            time.sleep(0.05)
    yield {"port": ports["mux"], "domain": spec.shard_name(1), "relay": relay,
           "token": store["fleet"]["occupancy_token"]}
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=10)
    relay.close()


def _exchange(port: int, server_name: str | None, alpn: list[str] | None, data: bytes,
              source: str = "127.0.0.1") -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    with socket.create_connection(("127.0.0.1", port), timeout=5, source_address=(source, 0)) as raw:
        with ctx.wrap_socket(raw, server_hostname=server_name) as tls:
            tls.sendall(data)
            chunks = b""
            try:
                while chunk := tls.recv(4096):
                    chunks += chunk
            except (TimeoutError, ssl.SSLError, ConnectionError):
                pass
    return chunks


@pytest.mark.needs_tool(NGINX, "openssl")
def test_the_site_name_reaches_the_site_and_the_relay_name_reaches_coturn(multiplexer):
    m = multiplexer
    page = f"GET / HTTP/1.1\r\nHost: {m['domain']}\r\nConnection: close\r\n\r\n".encode()
    for name, alpn in ((m["domain"], ["http/1.1"]), (m["domain"], None), (None, ["http/1.1"]), (None, None)):
        assert _exchange(m["port"], name, alpn, page).startswith(b"HTTP/1.1 200"), (name, alpn)
    # a browser's h2: the site answers with HTTP/2's SETTINGS frame (type 4)
    assert _exchange(m["port"], None, ["h2", "http/1.1"], b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")[3:4] == b"\x04"
    # the relay's name (what prosody announces); no name and RFC 7443's "stun.turn" among other
    # protocols (coturn's turnutils_uclient offers http/1.1 too)
    for name, alpn in ((f"turn-{m['domain']}", None), (f"turn-{m['domain']}", ["http/1.1"]),
                       (None, ["http/1.1", "stun.turn"])):
        assert _exchange(m["port"], name, alpn, b"binding") == b"relay", (name, alpn)
    # the loopback hop dropped the PROXY header: coturn's side sees a bare TLS ClientHello
    assert m["relay"].first_bytes and all(b[:1] == b"\x16" for b in m["relay"].first_bytes)


@pytest.mark.needs_tool(NGINX, "openssl")
def test_the_site_still_sees_the_clients_address_through_the_multiplexer(multiplexer):
    """Behind the 443 multiplexer the site sees each client's own address (PROXY protocol), not
    nginx's loopback hop: what it forwards to prosody names the client."""
    m = multiplexer
    ask = (f"GET /http-bind HTTP/1.1\r\nHost: {m['domain']}\r\nConnection: close\r\n\r\n").encode()
    for source in ("127.0.0.3", "127.0.0.2"):
        answer = _exchange(m["port"], m["domain"], ["http/1.1"], ask, source=source)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"forwarded_for": source}
