"""The Jitsi package stand-ins: a signed flat apt repository that apt accepts, package shapes, the
stand-in JVB/jicofo service on loopback, and our mod_muc_census inside a real prosody.

Run: .venv/bin/pytest tests/test_jitsi_standins.py
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import missing
from helpers.ports import free_port, free_ports

from ensemble.standins import build_standin_repo
from ensemble.standins.jitsi_repo import (
    CURRENT_ONLY_PLUGINS,
    JICOFO_VERSION,
    JVB_VERSION,
    KEY_FILE,
    LEGACY_ONLY_PLACEHOLDERS,
    MEET_VERSION,
    OWN_PLUGINS,
    PLACEHOLDER_PLUGINS,
    legacy_packages,
    standin_packages,
)

PACKAGES = ["jitsi-videobridge2", "jicofo", "jitsi-meet-web", "jitsi-meet-web-config", "jitsi-meet-prosody",
            "jitsi-meet"]
DOMAIN = "meet.standin.test"


# ------------------------------------------------------------------------------------------------ helpers

def deb_of(repo, name: str) -> Path:
    (deb,) = (repo.path / "stable").glob(f"{name}_*_all.deb")
    return deb


def deb_field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], check=True, capture_output=True,
                          text=True).stdout.strip()


def deb_paths(deb: Path) -> set[str]:
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True,
                             text=True).stdout
    return {line.split()[-1].lstrip(".") for line in listing.splitlines()}


def extract(deb: Path, dest: Path) -> Path:
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    subprocess.run(["dpkg-deb", "-e", str(deb), str(dest / "DEBIAN")], check=True)
    return dest


def serve_dir(directory: Path) -> tuple[ThreadingHTTPServer, str]:
    """A static HTTP server on loopback serving directory (stopped by the caller)."""
    class Quiet(SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(directory), **k)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def http(method: str, url: str, body: dict | None = None, timeout: float = 5) -> tuple[int, dict | None]:
    data = json.dumps(body).encode() if body is not None else (b"" if method == "POST" else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as e:
        return e.code, None


def wait_for(predicate, timeout: float = 10, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("standin-cache")


@pytest.fixture(scope="module")
def repo(cache_dir):
    return build_standin_repo(cache_dir)


@pytest.fixture(scope="module")
def served_repo(repo):
    server, url = serve_dir(repo.path)
    yield url
    server.shutdown()
    server.server_close()


class AptRoot:
    """apt-get/apt-cache confined to a temporary root (own lists, cache, sources, empty dpkg status)."""

    def __init__(self, root: Path):
        self.root = root
        for d in ("lists/partial", "cache/archives/partial", "sources.list.d", "preferences.d", "trusted.gpg.d"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        (root / "apt.conf").write_text("\n".join([
            f'Dir::State "{root}";', f'Dir::State::Lists "{root}/lists";', f'Dir::State::status "{root}/status";',
            f'Dir::Cache "{root}/cache";', 'Dir::Etc::sourcelist "/dev/null";',
            f'Dir::Etc::sourceparts "{root}/sources.list.d";', f'Dir::Etc::preferencesparts "{root}/preferences.d";',
            f'Dir::Etc::trustedparts "{root}/trusted.gpg.d";', 'Dir::Etc::trusted "/dev/null";',
            'Acquire::http::Proxy "false";', 'APT::Sandbox::User "root";', 'Acquire::Retries "0";', ""]))

    def add_jitsi_source(self, url: str, suite: str, keyring: Path) -> None:
        """The deb822 source exactly as the deploy writes it for download.jitsi.org."""
        (self.root / "sources.list.d" / "jitsi.sources").write_text(
            f"Types: deb\nURIs: {url}\nSuites: {suite}\nSigned-By: {keyring}\n")

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
        env = dict(os.environ, APT_CONFIG=str(self.root / "apt.conf"), LC_ALL="C")
        return subprocess.run(list(args), env=env, capture_output=True, text=True, cwd=cwd)


def fetch_keyring(key_url: str, expected_fingerprint: str, dest: Path) -> Path:
    """Download the armored key, check its fingerprint, dearmor it: the deploy's production steps."""
    armored = urllib.request.urlopen(key_url, timeout=5).read()
    shown = subprocess.run(["gpg", "--batch", "--show-keys", "--with-colons"], input=armored, check=True,
                           capture_output=True).stdout.decode()
    fingerprints = [line.split(":")[9] for line in shown.splitlines() if line.startswith("fpr:")]
    assert fingerprints[0] == expected_fingerprint
    subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "--output", str(dest)], input=armored, check=True)
    return dest


# ------------------------------------------------------------------------------------------------ the repository

def test_repository_layout_is_download_jitsi_org_shaped(repo):
    suite = repo.path / "stable"
    for name in ("Packages", "Packages.gz", "Release", "InRelease", "Release.gpg"):
        assert (suite / name).is_file(), name
    assert (repo.path / KEY_FILE).read_text().startswith("-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert repo.suite == "stable/"
    assert re.fullmatch(r"[0-9A-F]{40}", repo.key_fingerprint)
    assert repo.key_url("http://10.0.0.1:8081/") == "http://10.0.0.1:8081/jitsi-key.gpg.key"
    settings = repo.apt_settings("http://10.0.0.1:8081")
    assert settings == {"apt_repo": "http://10.0.0.1:8081", "apt_suite": "stable/",
                        "apt_key_url": "http://10.0.0.1:8081/jitsi-key.gpg.key",
                        "apt_key_fingerprint": repo.key_fingerprint}
    packages = (suite / "Packages").read_text()
    assert gzip.decompress((suite / "Packages.gz").read_bytes()).decode() == packages
    assert sorted(re.findall(r"^Package: (.+)$", packages, re.M)) == sorted(PACKAGES)
    assert all(f.startswith("stable/") for f in re.findall(r"^Filename: (.+)$", packages, re.M))
    assert "TEST STAND-IN" in (suite / "Release").read_text()
    # the key file in the cache is private; the signature verifies with the exported public key
    assert oct((repo.path.parent / "gnupg").stat().st_mode & 0o777) == "0o700"


def test_second_build_is_cached_and_debs_are_reproducible(repo, cache_dir, request):
    inrelease = repo.path / "stable" / "InRelease"
    before = inrelease.stat().st_mtime_ns
    again = build_standin_repo(cache_dir)
    assert again == repo
    assert inrelease.stat().st_mtime_ns == before, "a cached repository must not be rebuilt"
    # a second cache (another throwaway key) builds byte-identical packages; a short path: gpg-agent's
    # socket lives in the key's home and a Unix socket path has at most 107 bytes
    other_cache = Path(tempfile.mkdtemp(prefix="ens-cache-"))
    request.addfinalizer(lambda: shutil.rmtree(other_cache, ignore_errors=True))
    other = build_standin_repo(other_cache)
    assert other.key_fingerprint != repo.key_fingerprint
    for name in PACKAGES:
        assert deb_of(other, name).read_bytes() == deb_of(repo, name).read_bytes(), name
    assert (other.path / "stable" / "Packages").read_bytes() == (repo.path / "stable" / "Packages").read_bytes()
    leftover = subprocess.run(["pgrep", "-f", f"gpg-agent --homedir {other_cache}"], capture_output=True, text=True)
    assert leftover.stdout == "", "gpg-agent must be stopped after signing"


# ------------------------------------------------------------------------------------------------ package shapes

def test_every_package_says_it_is_a_stand_in(repo):
    for name in PACKAGES:
        description = deb_field(deb_of(repo, name), "Description")
        assert description.startswith("TEST STAND-IN for "), name
        assert "(ensemble); not Jitsi's software" in description.splitlines()[0], name


def test_dependency_shape_matches_the_real_packages(repo):
    meet = deb_of(repo, "jitsi-meet")
    assert deb_field(meet, "Version") == MEET_VERSION
    assert deb_field(meet, "Pre-Depends") == f"jitsi-videobridge2 (= {JVB_VERSION})"
    depends = deb_field(meet, "Depends")
    for dep in (f"jicofo (= {JICOFO_VERSION})", f"jitsi-meet-web (= {MEET_VERSION})",
                f"jitsi-meet-web-config (= {MEET_VERSION})", f"jitsi-meet-prosody (= {MEET_VERSION})"):
        assert dep in depends
    assert "jitsi-meet-turnserver" in deb_field(meet, "Recommends")
    assert deb_field(deb_of(repo, "jitsi-meet-web-config"), "Pre-Depends").startswith("nginx |")
    prosody_deps = deb_field(deb_of(repo, "jitsi-meet-prosody"), "Depends")
    for dep in ("prosody (>= 0.12.0) | prosody-0.12 | prosody-13.0", "lua-sec", "lua-basexx", "lua-luaossl",
                "lua-cjson", "lua-inspect"):
        assert dep in prosody_deps
    for name in ("jitsi-videobridge2", "jicofo"):
        assert "python3" in deb_field(deb_of(repo, name), "Depends")
        assert "openjdk" not in deb_field(deb_of(repo, name), "Depends")  # the stand-in needs no Java


def test_files_units_and_debconf_templates(repo, tmp_path):
    jvb = extract(deb_of(repo, "jitsi-videobridge2"), tmp_path / "jvb")
    unit = (jvb / "usr/lib/systemd/system/jitsi-videobridge2.service").read_text()
    for line in ("Type=simple", "User=jvb", "Group=jitsi", "Restart=on-failure",
                 "ExecStart=/usr/bin/python3 /usr/share/jitsi-videobridge/standin-jvb.py jvb", "TEST STAND-IN"):
        assert line in unit
    assert os.access(jvb / "usr/share/jitsi-videobridge/standin-jvb.py", os.X_OK)
    postinst = (jvb / "DEBIAN/postinst").read_text()
    assert "adduser" in postinst and "--ingroup jitsi" in postinst and " jvb" in postinst
    assert "/var/log/jitsi/jvb.log" in postinst and "if [ ! -e /etc/jitsi/videobridge/jvb.conf ]" in postinst
    assert "jitsi-videobridge/jvb-hostname" in (jvb / "DEBIAN/templates").read_text()

    jicofo = extract(deb_of(repo, "jicofo"), tmp_path / "jicofo")
    unit = (jicofo / "usr/lib/systemd/system/jicofo.service").read_text()
    assert "User=jicofo" in unit and "/usr/share/jicofo/standin-jicofo.py jicofo" in unit
    postinst = (jicofo / "DEBIAN/postinst").read_text()
    assert 'hocon -f "$HOCON_CONFIG" set jicofo.xmpp.client.client-proxy' in postinst
    assert "chown -R jicofo:jitsi /etc/jitsi/jicofo" in postinst
    assert "jicofo/jicofo-authpassword" in (jicofo / "DEBIAN/templates").read_text()

    web = deb_paths(deb_of(repo, "jitsi-meet-web"))
    for path in ("/usr/share/jitsi-meet/index.html", "/usr/share/jitsi-meet/libs/app.bundle.min.js",
                 "/usr/share/jitsi-meet/css/all.css", "/usr/share/jitsi-meet/images/favicon.svg",
                 "/usr/share/jitsi-meet/lang/main-fr.json", "/usr/share/jitsi-meet/interface_config.js"):
        assert path in web
    web_dir = extract(deb_of(repo, "jitsi-meet-web"), tmp_path / "web")
    index = (web_dir / "usr/share/jitsi-meet/index.html").read_text()
    assert '<!--#include virtual="/config.js" -->' in index and '<!--#include virtual="/title.html" -->' in index
    assert "<title>" in (web_dir / "usr/share/jitsi-meet/title.html").read_text()
    assert json.loads((web_dir / "usr/share/jitsi-meet/lang/main-fr.json").read_text())["toolbar"]["raiseHand"]

    web_config = extract(deb_of(repo, "jitsi-meet-web-config"), tmp_path / "webcfg")
    templates = (web_config / "DEBIAN/templates").read_text()
    for question in ("jitsi-meet/cert-choice", "jitsi-meet/cert-path-crt", "jitsi-meet/cert-path-key",
                     "jitsi-meet/jaas-choice", "jitsi-meet/email", "jitsi-videobridge/jvb-hostname"):
        assert f"Template: {question}\n" in templates
    postinst = (web_config / "DEBIAN/postinst").read_text()
    assert 'if [ ! -e "/etc/jitsi/meet/$D-config.js" ]' in postinst and '[ ! -e "$SITE" ]' in postinst

    prosody = deb_paths(deb_of(repo, "jitsi-meet-prosody"))
    for name in ("muc_census", "conference_duration", "auth_jitsi-anonymous", "roster_command", "muc_filter_access",
                 "muc_hide_all", "features_identity", "room_metadata_component", "polls_component",
                 "speakerstats_component", "end_conference", "av_moderation_component", *PLACEHOLDER_PLUGINS):
        assert f"/usr/share/jitsi-meet/prosody-plugins/mod_{name}.lua" in prosody
    assert "/usr/share/jitsi-meet/prosody-plugins/mod_external_services.lua" not in prosody  # prosody ships it
    for gone in LEGACY_ONLY_PLACEHOLDERS:  # removed upstream in 2025: loading them must fail, as upstream
        assert f"/usr/share/jitsi-meet/prosody-plugins/mod_{gone}.lua" not in prosody


def test_the_legacy_prosody_package_has_the_2023_plugins():
    """jitsi-meet-prosody 1.0.7322 (legacy profiles) still has the modules removed in 2025, not the newer components."""
    def plugins(packages) -> set[str]:
        (pkg,) = [p for p in packages if p.name == "jitsi-meet-prosody"]
        return {path.rsplit("/", 1)[1] for path in pkg.files if "/prosody-plugins/" in path}

    legacy, current = plugins(legacy_packages()), plugins(standin_packages())
    assert {f"mod_{n}.lua" for n in LEGACY_ONLY_PLACEHOLDERS} <= legacy - current
    assert set(CURRENT_ONLY_PLUGINS) <= current - legacy
    # its postinst predates polls as a component: it neither appends one nor comments the module out
    from ensemble.standins.jitsi_repo import script_text

    def postinst(packages) -> str:
        (pkg,) = [p for p in packages if p.name == "jitsi-meet-prosody"]
        return script_text(pkg, "postinst")

    assert "polls_component" in postinst(standin_packages()) and "polls_component" not in postinst(legacy_packages())
    assert postinst(legacy_packages()).count("\n") > 100  # the rest of the script is there


def test_maintainer_scripts_are_valid_shell(repo, tmp_path):
    checked = 0
    for name in PACKAGES:
        control = extract(deb_of(repo, name), tmp_path / name) / "DEBIAN"
        for script in ("config", "preinst", "postinst", "prerm", "postrm"):
            if (control / script).exists():
                subprocess.run(["sh", "-n", str(control / script)], check=True)
                assert os.access(control / script, os.X_OK)
                checked += 1
    assert checked >= 12


@pytest.mark.needs_tool("luac5.4")
def test_prosody_plugins_compile(repo, tmp_path):
    luac = shutil.which("luac5.4") or shutil.which("luac")
    assert luac, "lua5.4 (luac) is in .ci/apt-packages.txt"
    root = extract(deb_of(repo, "jitsi-meet-prosody"), tmp_path / "p")
    plugins = sorted((root / "usr/share/jitsi-meet/prosody-plugins").glob("*.lua"))  # *.lib.lua included
    assert len(plugins) == len(PLACEHOLDER_PLUGINS) + len(OWN_PLUGINS) + len(CURRENT_ONLY_PLUGINS)
    for plugin in plugins:  # one file per run: Debian's luac5.4 aborts on many files at once
        subprocess.run([luac, "-p", str(plugin)], check=True)
    subprocess.run([luac, "-p", str(root / "usr/share/jitsi-meet-prosody/prosody.cfg.lua-jvb.example")], check=True)


# ------------------------------------------------------------------------------------------------ apt itself

def test_apt_updates_from_the_repository_and_downloads_every_package(repo, served_repo, tmp_path):
    apt = AptRoot(tmp_path / "apt")
    keyring = fetch_keyring(repo.key_url(served_repo), repo.key_fingerprint, tmp_path / "jitsi-keyring.gpg")
    apt.add_jitsi_source(served_repo, repo.suite, keyring)
    update = apt.run("apt-get", "update")
    assert update.returncode == 0, update.stderr
    assert not re.search(r"^(W|E):", update.stdout + update.stderr, re.M), update.stdout + update.stderr
    policy = apt.run("apt-cache", "policy", "jitsi-meet")
    assert f"Candidate: {MEET_VERSION}" in policy.stdout, policy.stdout
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    got = apt.run("apt-get", "download", *PACKAGES, cwd=downloads)
    assert got.returncode == 0, got.stderr
    assert sorted(p.name.split("_")[0] for p in downloads.glob("*.deb")) == sorted(PACKAGES)


def test_apt_resolves_jitsi_meet_against_debian(repo, served_repo, tmp_path):
    """With Debian's own package lists beside it, apt resolves the whole jitsi-meet tree (nginx, prosody, lua)."""
    system_lists = Path("/var/lib/apt/lists")
    debian_lists = [p for p in system_lists.glob("deb.debian.org_debian_dists_*") if "security" not in p.name]
    inreleases = [p for p in debian_lists if p.name.endswith("_InRelease")]
    if not inreleases:
        missing("this machine has no Debian package lists (run apt-get update)")
    codename = inreleases[0].name.split("_dists_")[1].split("_")[0]
    apt = AptRoot(tmp_path / "apt")
    keyring = fetch_keyring(repo.key_url(served_repo), repo.key_fingerprint, tmp_path / "jitsi-keyring.gpg")
    apt.add_jitsi_source(served_repo, repo.suite, keyring)
    assert apt.run("apt-get", "update").returncode == 0
    for p in debian_lists:
        if p.name.startswith(f"deb.debian.org_debian_dists_{codename}_"):
            shutil.copy(p, apt.root / "lists" / p.name)
    (apt.root / "sources.list.d" / "debian.sources").write_text(
        f"Types: deb\nURIs: http://deb.debian.org/debian\nSuites: {codename}\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    sim = apt.run("apt-get", "install", "--simulate", "--no-install-recommends", "nginx", "jitsi-meet")
    assert sim.returncode == 0, sim.stdout + sim.stderr
    installed = set(re.findall(r"^Inst (\S+)", sim.stdout, re.M))
    for name in (*PACKAGES, "prosody", "lua-cjson", "lua-sec", "python3"):
        assert name in installed, name


def test_apt_refuses_a_tampered_or_wrongly_keyed_repository(repo, tmp_path):
    tampered = tmp_path / "tampered"
    shutil.copytree(repo.path, tampered)
    packages = tampered / "stable" / "Packages"
    packages.write_text(packages.read_text().replace("Priority: optional", "Priority: required", 1))
    (tampered / "stable" / "Packages.gz").write_bytes(gzip.compress(packages.read_bytes()))
    server, url = serve_dir(tampered)
    try:
        apt = AptRoot(tmp_path / "apt1")
        apt.add_jitsi_source(url, "stable/", fetch_keyring(repo.key_url(url), repo.key_fingerprint,
                                                           tmp_path / "k1.gpg"))
        update = apt.run("apt-get", "update")
        assert update.returncode != 0 or re.search(r"^(W|E):", update.stderr, re.M), update.stderr
        assert "mismatch" in update.stderr.lower() or "unexpected size" in update.stderr.lower(), update.stderr
        assert "jitsi-meet" not in apt.run("apt-cache", "pkgnames").stdout
    finally:
        server.shutdown()
        server.server_close()
    # a keyring that does not hold the signing key: apt refuses the whole repository
    other = build_standin_repo(tmp_path / "other-key-cache")
    server, url = serve_dir(repo.path)
    try:
        apt = AptRoot(tmp_path / "apt2")
        wrong_keyring = tmp_path / "k2.gpg"
        subprocess.run(["gpg", "--batch", "--yes", "--dearmor", "--output", str(wrong_keyring),
                        str(other.path / KEY_FILE)], check=True)
        apt.add_jitsi_source(url, "stable/", wrong_keyring)
        update = apt.run("apt-get", "update")
        assert "NO_PUBKEY" in update.stderr or "not signed" in update.stderr, update.stderr
        assert "jitsi-meet" not in apt.run("apt-cache", "pkgnames").stdout
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------------ the service program

class FakeCensus:
    """A stand-in for prosody's /room-census on loopback: rooms are set by the test, Host headers recorded."""

    def __init__(self):
        self.rooms: list[dict] = []
        self.hosts: list[str] = []
        census = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                census.hosts.append(self.headers.get("Host", ""))
                body = json.dumps({"room_census": census.rooms}).encode() if self.path == "/room-census" else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/room-census"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


JVB_CONF = """
// written like the deploy's jvb.conf
videobridge {
    ice { udp { port = %(udp)d } }
    apis {
        xmpp-client {
            configs {
                shard {
                    HOSTNAME = "localhost"
                    DOMAIN = "auth.%(domain)s"
                    USERNAME = "jvb"
                    PASSWORD = "p#ss: {not a brace}"
                    MUC_JIDS = "JvbBrewery@internal.auth.%(domain)s"
                    MUC_NICKNAME = "jvb-1"
                }
            }
        }
        rest { enabled = %(rest)s }
    }
    rest.shutdown.enabled = true
}
ice4j.harvest.mapping.static-mappings = [ { local-address = "10.0.0.2", public-address = "192.0.2.7" } ]
"""


@pytest.fixture(scope="module")
def service_program(repo, tmp_path_factory) -> Path:
    """The program exactly as the jvb package installs it."""
    root = extract(deb_of(repo, "jitsi-videobridge2"), tmp_path_factory.mktemp("svc"))
    return root / "usr/share/jitsi-videobridge/standin-jvb.py"


@pytest.fixture
def census():
    fake = FakeCensus()
    yield fake
    fake.close()


@pytest.fixture
def start_service(service_program, tmp_path):
    """Start the stand-in as a real process on loopback; returns (process, base URL, log path)."""
    processes = []

    def start(role: str, config_text: str, census_url: str, flags: tuple[str, ...] = ("--no-xmpp",),
              env: dict | None = None, **extra):
        port = free_port()
        config = tmp_path / f"{role}.conf"
        config.write_text(config_text)
        log = tmp_path / f"{role}.log"
        cmd = ["/usr/bin/python3", str(service_program), role, "--config", str(config), "--log", str(log),
               "--port", str(port), "--census-url", census_url, "--env-file", str(tmp_path / "no-env")]
        for key, value in extra.items():
            cmd += [f"--{key.replace('_', '-')}", str(value)]
        cmd += flags
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, **(env or {})})
        processes.append(proc)
        base = f"http://127.0.0.1:{port}"

        def up():
            if proc.poll() is not None:
                return True
            try:
                return http("GET", f"{base}/about/health", timeout=1)[0] in (200, 500)
            except OSError:
                return False
        wait_for(up, what=f"{role} stand-in to listen")
        return proc, base, log

    yield start
    for proc in processes:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def test_jvb_standin_serves_stats_from_the_census(start_service, census):
    udp = free_port(socket.SOCK_DGRAM)
    census.rooms = [
        {"room_name": f"alpha@conference.{DOMAIN}", "participants": 3, "created_time": 1, "leaked": False},
        {"room_name": f"beta@conference.{DOMAIN}", "participants": 2, "created_time": 2, "leaked": False},
        {"room_name": f"empty@conference.{DOMAIN}", "participants": 0, "created_time": 3, "leaked": True},
    ]
    proc, base, log = start_service("jvb", JVB_CONF % {"udp": udp, "domain": DOMAIN, "rest": "true"}, census.url)
    assert proc.poll() is None
    status, stats = http("GET", f"{base}/colibri/stats")
    assert status == 200
    assert (stats["conferences"], stats["participants"], stats["endpoints"], stats["largest_conference"]) == \
        (2, 5, 5, 3)
    assert stats["stress_level"] == pytest.approx(5 / 200)
    assert (stats["drain"], stats["graceful_shutdown"], stats["healthy"]) == (False, False, True)
    assert census.hosts[-1] == DOMAIN, "the census is asked with the shard's domain (from jvb.conf) as Host"
    # the media port is really held
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind(("0.0.0.0", udp))
    # drain on and off
    assert http("POST", f"{base}/colibri/drain/enable")[0] == 200
    assert http("GET", f"{base}/colibri/stats")[1]["drain"] is True
    assert http("POST", f"{base}/colibri/drain/disable")[0] == 200
    assert http("GET", f"{base}/colibri/stats")[1]["drain"] is False
    census.rooms = []
    assert http("GET", f"{base}/colibri/stats")[1]["participants"] == 0
    text = log.read_text()
    assert f"would log in as jvb@auth.{DOMAIN}" in text and "TEST STAND-IN" in text
    assert "p#ss" not in text, "the XMPP password is never logged"


def test_jvb_standin_graceful_shutdown_waits_for_the_last_participant(start_service, census):
    census.rooms = [{"room_name": f"r@conference.{DOMAIN}", "participants": 1, "created_time": 1, "leaked": False}]
    conf = JVB_CONF % {"udp": free_port(socket.SOCK_DGRAM), "domain": DOMAIN, "rest": "true"}
    proc, base, _ = start_service("jvb", conf, census.url)
    assert http("POST", f"{base}/colibri/shutdown", {"graceful-shutdown": "true"})[0] == 200
    assert http("GET", f"{base}/colibri/stats")[1]["graceful_shutdown"] is True
    time.sleep(2.5)
    assert proc.poll() is None, "a bridge with a participant keeps running during a graceful shutdown"
    census.rooms = []
    assert wait_for(lambda: proc.poll() is not None, timeout=10, what="exit after the last participant left")
    assert proc.returncode == 0


def test_jvb_standin_honours_the_rest_switches_and_refuses_a_broken_config(start_service, census):
    conf = JVB_CONF % {"udp": free_port(socket.SOCK_DGRAM), "domain": DOMAIN, "rest": "false"}
    proc, base, _ = start_service("jvb", conf.replace("rest.shutdown.enabled = true", ""), census.url)
    assert http("GET", f"{base}/about/health")[0] == 200
    assert http("GET", f"{base}/colibri/stats")[0] == 404  # like the real bridge without apis.rest.enabled
    assert http("POST", f"{base}/colibri/shutdown", {"graceful-shutdown": "true"})[0] == 404
    assert proc.poll() is None
    broken, _, log = start_service("jvb", "videobridge { apis { rest.enabled = true }\n", census.url,
                                   udp_port=0)
    assert broken.wait(timeout=10) == 1
    assert "does not parse" in log.read_text()


def test_jicofo_standin_answers_health_stats_and_conference_requests(start_service, census):
    census.rooms = [{"room_name": f"r@conference.{DOMAIN}", "participants": 4, "created_time": 1, "leaked": False}]
    conf = (f'jicofo {{\n xmpp.client {{ client-proxy = "focus.{DOMAIN}", xmpp-domain = "{DOMAIN}",\n'
            f'  domain = "auth.{DOMAIN}", username = "focus", password = "x y" }}\n'
            f' bridge.brewery-jid = "JvbBrewery@internal.auth.{DOMAIN}"\n health.enabled = true\n}}\n')
    proc, base, log = start_service("jicofo", conf, census.url)
    status, stats = http("GET", f"{base}/stats")
    assert status == 200 and stats["conferences"] == 1 and stats["participants"] == 4
    assert "bridge_selector" in stats
    status, answer = http("POST", f"{base}/conference-request/v1", {"room": f"r@conference.{DOMAIN}"})
    assert status == 200 and answer["ready"] is True and answer["focusJid"] == f"focus.{DOMAIN}"
    assert census.hosts[-1] == DOMAIN
    assert f"would log in as focus@auth.{DOMAIN}" in log.read_text()


# ------------------------------------------------------------------------------------------------ real prosody

class XmppClient:
    """The smallest XMPP client that can join a MUC: plain c2s on loopback, SASL ANONYMOUS, bind, presence."""

    def __init__(self, port: int, domain: str):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.domain, self.buffer = domain, ""
        self.open_stream()
        assert "<mechanism>ANONYMOUS</mechanism>" in self.read_until("</stream:features>")
        self.send("<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='ANONYMOUS'/>")
        assert "<success" in self.read_until(r"<success|<failure")
        self.open_stream()
        self.read_until("</stream:features>")
        self.send("<iq type='set' id='bind1'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'/></iq>")
        self.jid = re.search(r"<jid>([^<]+)</jid>", self.read_until(r"</iq>")).group(1)

    def open_stream(self) -> None:
        self.buffer = ""
        self.send(f"<?xml version='1.0'?><stream:stream to='{self.domain}' xmlns='jabber:client' "
                  "xmlns:stream='http://etherx.jabber.org/streams' version='1.0'>")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode())

    def read_until(self, pattern: str) -> str:
        while not re.search(pattern, self.buffer):
            chunk = self.sock.recv(65536)
            assert chunk, f"stream closed waiting for {pattern}: {self.buffer[-500:]}"
            self.buffer += chunk.decode()
        match = re.search(pattern, self.buffer)
        text, self.buffer = self.buffer[:match.end()], self.buffer[match.end():]
        return text

    def join(self, room_jid: str, nick: str) -> str:
        """Join a MUC; the stanzas up to our own presence (the other occupants' presences among them)."""
        self.send(f"<presence to='{room_jid}/{nick}'><x xmlns='http://jabber.org/protocol/muc'/></presence>")
        # our own presence in the room (status 110): joined; an error presence: refused
        answer = self.read_until(r"<status code=['\"]110['\"]|<presence [^>]*type=['\"]error['\"].*?</presence>")
        assert "110" in answer, f"joining {room_jid} refused: {answer}"
        return answer

    def disco(self, to: str, what: str = "info") -> str:
        """The answer (the whole <iq>) to a disco#info or disco#items query sent to `to`."""
        self.queries = getattr(self, "queries", 0) + 1
        iq_id = f"disco{self.queries}"
        self.send(f"<iq type='get' id='{iq_id}' to='{to}'>"
                  f"<query xmlns='http://jabber.org/protocol/disco#{what}'/></iq>")
        return self.read_until(rf"(?s)<iq [^>]*id=['\"]{iq_id}['\"](?:[^>]*/>|.*?</iq>)")

    def close(self) -> None:
        try:
            self.send("</stream:stream>")
        finally:
            self.sock.close()


def make_certs(folder: Path, *hosts: str) -> Path:
    folder.mkdir(exist_ok=True)
    for host in hosts:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                        f"/CN={host}", "-addext", f"subjectAltName=DNS:{host}", "-keyout", str(folder / f"{host}.key"),
                        "-out", str(folder / f"{host}.crt")], check=True, capture_output=True)
    return folder


@contextlib.contextmanager
def running_prosody(repo, tmp_path: Path, vhost: str, plugins: Path | None = None):
    """Run a real prosody on loopback ports with the stand-in plugins and `vhost` (a Jitsi virtual host file
    whose plugin_paths is rewritten to the extracted stand-in plugins, or to `plugins`)."""
    prosody = shutil.which("prosody")
    assert prosody, "prosody is in .ci/apt-packages.txt"
    if plugins is None:
        root = extract(deb_of(repo, "jitsi-meet-prosody"), tmp_path / "pkg")
        plugins = root / "usr/share/jitsi-meet/prosody-plugins"
    vhost = vhost.replace('"/usr/share/jitsi-meet/prosody-plugins/"', f'"{plugins}/"')
    c2s, http_port = free_ports(2)
    (tmp_path / "data").mkdir()
    config = tmp_path / "prosody.cfg.lua"
    # loopback and free ports only; an option the virtual host file sets itself is replaced there, not
    # repeated (prosody refuses duplicate options)
    listeners = {"c2s_ports": f"{{ {c2s} }}", "http_ports": f"{{ {http_port} }}", "s2s_ports": "{ }",
                 "component_ports": "{ }", "https_ports": "{ }", "c2s_interfaces": '{ "127.0.0.1" }',
                 "http_interfaces": '{ "127.0.0.1" }'}
    extra = ""
    for option, value in listeners.items():
        vhost, found = re.subn(rf"^{option}\s*=.*$", f"{option} = {value}", vhost, flags=re.M)
        extra += "" if found else f"{option} = {value}\n"
    config.write_text(f"""
run_as_root = true
daemonize = false
pidfile = "{tmp_path}/prosody.pid"
data_path = "{tmp_path}/data"
log = {{ debug = "{tmp_path}/prosody.log" }}
modules_enabled = {{ "saslauth"; "disco"; "roster"; "tls"; "ping" }}
{extra}
{vhost}
""")
    proc = subprocess.Popen([prosody, "-F", "--config", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)

    def listening():
        assert proc.poll() is None, proc.stdout.read().decode()
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", http_port)) == 0
    try:
        wait_for(listening, timeout=20, what="prosody to listen")
        yield {"c2s": c2s, "census": f"http://127.0.0.1:{http_port}/room-census", "log": tmp_path / "prosody.log",
               "config": config}
    finally:
        proc.terminate()
        proc.wait(timeout=15)


@pytest.fixture
def real_prosody(repo, tmp_path):
    """A real prosody on loopback loading the stand-in plugins with the stand-in example virtual host."""
    certs = make_certs(tmp_path / "certs", DOMAIN, f"auth.{DOMAIN}")
    vhost = extract(deb_of(repo, "jitsi-meet-prosody"), tmp_path / "example").joinpath(
        "usr/share/jitsi-meet-prosody/prosody.cfg.lua-jvb.example").read_text()
    vhost = vhost.replace("jitmeet.example.com", DOMAIN).replace("/var/lib/prosody/", f"{certs}/")
    with running_prosody(repo, tmp_path, vhost) as prosody:
        yield prosody


def get_census(url: str, host: str) -> list[dict]:
    req = urllib.request.Request(url, headers={"Host": host})
    with urllib.request.urlopen(req, timeout=5) as response:
        assert "Content-Type" not in response.headers  # upstream's census sets none
        return json.load(response)["room_census"]


@pytest.mark.needs_tool("prosody")
def test_muc_census_in_real_prosody_reports_like_upstream(real_prosody):
    """Upstream's output: the focus subtracted (here there is none: a lone occupant counts 0), created_time a
    string of milliseconds once a second occupant joined (mod_conference_duration) and absent before,
    health-check rooms left out, the empty census a literal list, no Content-Type."""
    url = real_prosody["census"]
    assert get_census(url, DOMAIN) == []
    with urllib.request.urlopen(urllib.request.Request(url, headers={"Host": DOMAIN}), timeout=5) as response:
        assert response.read() == b'{"room_census":[]}'
    alice, bob, carol, health = (XmppClient(real_prosody["c2s"], DOMAIN) for _ in range(4))
    try:
        started = time.time()
        alice.join(f"standup@conference.{DOMAIN}", "alice")
        bob.join(f"standup@conference.{DOMAIN}", "bob")
        carol.join(f"retro@conference.{DOMAIN}", "carol")
        health.join(f"__jicofo-health-check-1234@conference.{DOMAIN}", "focus")
        rooms = {r["room_name"]: r for r in get_census(url, DOMAIN)}
        assert set(rooms) == {f"standup@conference.{DOMAIN}", f"retro@conference.{DOMAIN}"}
        standup, retro = rooms[f"standup@conference.{DOMAIN}"], rooms[f"retro@conference.{DOMAIN}"]
        assert (standup["participants"], retro["participants"]) == (1, 0)  # occupants minus one
        assert isinstance(standup["created_time"], str) and abs(int(standup["created_time"]) / 1000 - started) < 60
        assert "created_time" not in retro  # one occupant: the conference is not established
        assert standup["leaked"] is False and retro["leaked"] is False
        bob.close()
        wait_for(lambda: {r["room_name"]: r["participants"] for r in get_census(url, DOMAIN)}
                 .get(f"standup@conference.{DOMAIN}") == 0, what="bob's departure in the census")
        assert {r["room_name"]: r.get("created_time") for r in get_census(url, DOMAIN)}[
            f"standup@conference.{DOMAIN}"] == standup["created_time"]  # set once
    finally:
        for client in (alice, carol, health):
            client.close()
    log = real_prosody["log"].read_text()
    assert "TEST STAND-IN room census" in log and "TEST STAND-IN anonymous authentication" in log
    assert "TEST STAND-IN conference_duration" in log
    problems = [line for line in log.splitlines() if re.search(r"\terror\t|Unable to load|Failed to load", line)]
    assert not problems, "\n".join(problems)


def register(prosody: dict, user: str, host: str, password: str) -> None:
    subprocess.run(["prosodyctl", "--config", str(prosody["config"]), "register", user, host, password],
                   check=True, capture_output=True)


@pytest.mark.needs_tool("prosody")
def test_standins_log_in_to_real_prosody_and_the_focus_makes_rooms(real_prosody, start_service):
    """The services log in over STARTTLS + SCRAM-SHA-1 as the real ones do; jicofo's health depends on it;
    a conference request makes the focus create the room; the census leaves the focus out."""
    auth = f"auth.{DOMAIN}"
    register(real_prosody, "jvb", auth, "jvb pass,=1")
    register(real_prosody, "focus", auth, "focus-pass")
    census = real_prosody["census"]
    jvb_conf = (JVB_CONF % {"udp": free_port(socket.SOCK_DGRAM), "domain": DOMAIN, "rest": "true"}).replace(
        'HOSTNAME = "localhost"', f'HOSTNAME = "127.0.0.1"\n PORT = {real_prosody["c2s"]}\n'
        ' DISABLE_CERTIFICATE_VERIFICATION = true').replace('"p#ss: {not a brace}"', '"jvb pass,=1"')
    _, jvb, jvb_log = start_service("jvb", jvb_conf, census, flags=())
    jvb_port = jvb.rsplit(":", 1)[1]

    def jicofo_conf(password: str) -> str:
        return (f'jicofo {{\n xmpp.client {{ hostname = "127.0.0.1", port = {real_prosody["c2s"]},'
                f' client-proxy = "focus.{DOMAIN}", xmpp-domain = "{DOMAIN}", domain = "{auth}",'
                f' username = "focus", password = "{password}", disable-certificate-verification = true }}\n'
                f' bridge.brewery-jid = "JvbBrewery@internal.{auth}"\n}}\n')

    _, jicofo, _ = start_service("jicofo", jicofo_conf("focus-pass"), census, flags=(),
                                 jvb_health_url=f"{jvb}/about/health")
    wait_for(lambda: http("GET", f"{jicofo}/about/health")[0] == 200, what="jicofo's XMPP login")
    xmpp = wait_for(lambda: http("GET", f"{jvb}/colibri/stats")[1]["standin_xmpp"]["connected"] and
                    http("GET", f"{jvb}/colibri/stats")[1]["standin_xmpp"], what="the bridge's XMPP login")
    assert xmpp["jid"].startswith(f"jvb@{auth}/")
    stats = http("GET", f"{jicofo}/stats")[1]
    assert stats["standin_xmpp"]["jid"].startswith(f"focus@{auth}/")
    assert stats["bridge_selector"]["operational_bridge_count"] == 1 and jvb_port
    assert "joined JvbBrewery@internal." in jvb_log.read_text()

    # a conference request: the focus creates the room; the census does not count it
    room = f"planning@conference.{DOMAIN}"
    status, answer = http("POST", f"{jicofo}/conference-request/v1", {"room": room})
    assert (status, answer["ready"], answer["focusJid"]) == (200, True, f"focus.{DOMAIN}")
    assert [(r["room_name"], r["participants"]) for r in get_census(census, DOMAIN)] == [(room, 0)]
    client = XmppClient(real_prosody["c2s"], DOMAIN)
    client.join(room, "dana")
    assert [(r["room_name"], r["participants"]) for r in get_census(census, DOMAIN)] == [(room, 1)]
    assert http("GET", f"{jvb}/colibri/stats")[1]["participants"] == 1
    client.close()
    wait_for(lambda: get_census(census, DOMAIN) == [], what="the focus to leave the empty room")

    # a wrong password: jicofo stays unhealthy and says why, like the real one
    _, bad, _ = start_service("jicofo", jicofo_conf("wrong"), census, flags=())
    status_error = wait_for(lambda: http("GET", f"{bad}/stats")[1]["standin_xmpp"]["error"] != "not tried yet" and
                            http("GET", f"{bad}/stats")[1]["standin_xmpp"], what="the failed login")
    assert "authentication failed" in status_error["error"] and status_error["connected"] is False
    assert http("GET", f"{bad}/about/health")[0] == 500



@pytest.mark.needs_tool("prosody")
def test_standins_run_with_the_files_ensemble_renders(repo, tmp_path, start_service):
    """The project's own prosody virtual host, jvb.conf and jicofo.conf (ensemble.render) with the stand-ins:
    prosody loads every plugin it names cleanly, both services log in with the rendered passwords over TLS
    verified against the auth certificate, the focus creates a room that restrict_room_creation keeps from
    anonymous users, and census and bridge stats agree."""
    from ensemble.render import shard_files
    from ensemble.secrets import complete_secrets
    from ensemble.spec import spec_from_dict

    spec = spec_from_dict({"fleet": {"name": "sti", "domain": "sti.test", "shards": 1}}, source="<test>")
    domain = spec.shard_names()[0]
    secrets: dict = {}
    complete_secrets(secrets, spec)
    files = {f.path: f.content if isinstance(f.content, str) else f.content.decode()
             for f in shard_files(spec, 1, secrets)}
    certs = make_certs(tmp_path / "certs", domain, f"auth.{domain}")
    vhost = files[f"/etc/prosody/conf.avail/{domain}.cfg.lua"].replace("/etc/prosody/certs/", f"{certs}/")
    with running_prosody(repo, tmp_path, vhost) as prosody:
        register(prosody, "focus", f"auth.{domain}", secrets[domain]["focus_password"])
        register(prosody, "jvb", f"auth.{domain}", secrets[domain]["jvb_password"])
        trust = {"SSL_CERT_FILE": str(certs / f"auth.{domain}.crt")}  # what update-ca-certificates does on a shard
        jvb_conf = files["/etc/jitsi/videobridge/jvb.conf"] + (
            f"\nvideobridge.apis.xmpp-client.configs.shard.PORT = {prosody['c2s']}\n")
        _, jvb, _ = start_service("jvb", jvb_conf, prosody["census"], flags=(), env=trust,
                                  udp_port=free_port(socket.SOCK_DGRAM))
        jicofo_conf = files["/etc/jitsi/jicofo/jicofo.conf"] + f"\njicofo.xmpp.client.port = {prosody['c2s']}\n"
        _, jicofo, _ = start_service("jicofo", jicofo_conf, prosody["census"], flags=(), env=trust,
                                     jvb_health_url=f"{jvb}/about/health")
        wait_for(lambda: http("GET", f"{jicofo}/about/health")[0] == 200, what="jicofo's XMPP login")
        wait_for(lambda: http("GET", f"{jvb}/colibri/stats")[1]["standin_xmpp"]["connected"], what="JVB login")

        room = f"revue@conference.{domain}"
        visitor = XmppClient(prosody["c2s"], domain)
        try:
            with pytest.raises(AssertionError, match="not-allowed"):  # restrict_room_creation: the focus creates
                visitor.join(room, "early")
        finally:
            visitor.close()
        status, answer = http("POST", f"{jicofo}/conference-request/v1", {"room": room})
        assert status == 200 and answer["ready"] is True
        guest, outsider = XmppClient(prosody["c2s"], domain), XmppClient(prosody["c2s"], domain)
        try:
            presences = guest.join(room, "eve").replace('"', "'")
            # the focus made the room and owns it (admins of the MUC, as upstream)
            focus = re.search(rf"(?s)<presence [^>]*from='{re.escape(room)}/focus'.*?</presence>", presences)
            assert focus and "affiliation='owner'" in focus.group(), presences
            assert [(r["room_name"], r["participants"]) for r in get_census(prosody["census"], domain)] == [(room, 1)]
            stats = http("GET", f"{jvb}/colibri/stats")[1]
            assert (stats["conferences"], stats["participants"]) == (1, 1)
            # muc_hide_all: an anonymous user lists no room and learns nothing of a room it is not in
            items = outsider.disco(f"conference.{domain}", "items")
            assert "type='result'" in items.replace('"', "'") and "<item" not in items, items
            assert "forbidden" in outsider.disco(room), "disco#info of a room answered to a non-occupant"
            assert "<identity" in guest.disco(room)  # an occupant still reads the room's info
            # features_identity: the components are announced on the main host, as upstream's
            identities = {}
            for tag in re.findall(r"<identity [^>]*>", outsider.disco(domain)):  # attributes come in any order
                attrs = dict(re.findall(r"(\w+)=['\"]([^'\"]*)['\"]", tag))
                identities[attrs.get("type")] = attrs.get("name")
            assert {kind: identities.get(kind) for kind in
                    ("speakerstats", "end_conference", "av_moderation", "room_metadata", "polls")} == {
                "speakerstats": f"speakerstats.{domain}", "end_conference": f"endconference.{domain}",
                "av_moderation": f"avmoderation.{domain}", "room_metadata": f"metadata.{domain}",
                "polls": f"polls.{domain}"}, identities
        finally:
            guest.close()
            outsider.close()
        log = prosody["log"].read_text()
    problems = [line for line in log.splitlines() if re.search(r"\terror\t|Unable to load|Failed to load", line)]
    assert not problems, "\n".join(problems)



LOAD_PROBLEMS = r"\terror\t|Unable to load|Failed to load"


def rendered_vhost(profile: str, certs_dir: Path) -> tuple[str, str]:
    """(domain, prosody virtual host file) as ensemble renders it for `profile`, certificates made."""
    from ensemble.render import shard_files
    from ensemble.secrets import complete_secrets
    from ensemble.spec import spec_from_dict

    spec = spec_from_dict({"fleet": {"name": "stl", "domain": "stl.test", "shards": 1, "os": profile}},
                          source="<test>")
    domain = spec.shard_names()[0]
    secrets: dict = {}
    complete_secrets(secrets, spec)
    (vhost,) = [f.content for f in shard_files(spec, 1, secrets) if f.component == "prosody"]
    certs = make_certs(certs_dir, domain, f"auth.{domain}")
    return domain, vhost.replace("/etc/prosody/certs/", f"{certs}/")


@pytest.mark.needs_tool("prosody")
def test_a_module_upstream_removed_fails_to_load(repo, tmp_path):
    """The stand-in package no longer has the modules upstream removed in 2025: a virtual host that still
    loads one (here "speakerstats" on the main host) makes prosody log the failure the tests look for."""
    domain, vhost = rendered_vhost("debian-bookworm", tmp_path / "certs")
    old = vhost.replace('        "features_identity";\n', '        "features_identity";\n        "speakerstats";\n', 1)
    assert old != vhost
    with running_prosody(repo, tmp_path, old) as prosody:
        failure = wait_for(lambda: re.search(r".*Unable to load module.*speakerstats.*", prosody["log"].read_text()),
                           what="prosody's complaint about mod_speakerstats")
    assert re.search(LOAD_PROBLEMS, failure.group())


@pytest.mark.needs_tool("prosody")
def test_the_legacy_virtual_host_loads_with_the_legacy_plugins(tmp_path):
    """A legacy profile's file (2.0.8719's layout: speakerstats, av_moderation and polls modules, the
    conference_duration component) loads cleanly with the legacy jitsi-meet-prosody's plugins; the current
    package's plugins would refuse it."""
    from ensemble.standins.jitsi_repo import _write_tree

    domain, vhost = rendered_vhost("debian-buster", tmp_path / "certs")
    assert '"speakerstats";' in vhost and '"conference_duration_component"' in vhost
    (pkg,) = [p for p in legacy_packages() if p.name == "jitsi-meet-prosody"]
    _write_tree(pkg, tmp_path / "legacy")
    with running_prosody(None, tmp_path, vhost, plugins=tmp_path / "legacy/usr/share/jitsi-meet/prosody-plugins"
                         ) as prosody:
        client = XmppClient(prosody["c2s"], domain)  # the hosts are up: an anonymous login works
        client.close()
        log = prosody["log"].read_text()
    problems = [line for line in log.splitlines() if re.search(LOAD_PROBLEMS, line)]
    assert not problems, "\n".join(problems)
    assert "TEST STAND-IN placeholder mod_speakerstats loaded" in log


@contextlib.contextmanager
def chromium(tmp_path: Path, resolver_rules: str, languages: str = "en-US,en"):
    """Headless Debian Chromium driven by selenium; names resolved by `resolver_rules` only; the browser's
    preferred `languages` (navigator.languages)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-proxy-server", "--ignore-certificate-errors", f"--user-data-dir={tmp_path / 'chromium'}",
                 f"--host-resolver-rules={resolver_rules}"):
        options.add_argument(flag)
    options.add_experimental_option("prefs", {"intl.accept_languages": languages})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        driver.set_page_load_timeout(30)
        yield driver
    finally:
        driver.quit()


def body_state(driver) -> dict:
    attributes = ("ready", "joined", "participants", "error")
    return {a: driver.find_element("tag name", "body").get_attribute(f"data-standin-{a}") for a in attributes}


# ------------------------------------------------------------------------------------------------ web app language

def standin_page(tmp_path: Path, config_js: str) -> Path:
    """The stand-in web app's page as its index.html assembles it: config.js, then the package's
    interface_config.js (upstream's defaults), then the app; no room (nothing to join)."""
    from ensemble.standins.jitsi_repo import _data_bytes

    web = tmp_path / "web"
    web.mkdir(parents=True)
    (web / "config.js").write_text(config_js)
    (web / "interface_config.js").write_bytes(_data_bytes("web/interface_config.js"))
    (web / "app.js").write_bytes(_data_bytes("web/libs/app.bundle.min.js"))
    (web / "index.html").write_text(
        '<!DOCTYPE html><html><head><meta charset="utf-8"><script>window.standin = { room: "" };</script>'
        '<script src="config.js"></script><script src="interface_config.js"></script>'
        '<script src="app.js"></script></head><body><div id="react"></div></body></html>')
    return web / "index.html"


def page_language(browser, page: Path, query: str = "") -> tuple[str, dict]:
    browser.get(page.as_uri() + query)
    wait_for(lambda: body_state(browser)["ready"] == "true", timeout=15, what="the stand-in page")
    return (browser.execute_script("return document.documentElement.lang"),
            browser.execute_script("return window.interfaceConfig"))


@pytest.mark.needs_tool("chromium", "/usr/bin/chromedriver")
def test_interface_config_has_upstreams_defaults_and_ensembles_language_wins(tmp_path):
    """With upstream's interface_config.js (LANG_DETECTION on), an English browser sees English even where
    config.js says French; with the config.js ensemble renders, the fleet's French wins, every other upstream
    default is kept, and ?lang= still switches."""
    from ensemble.render import shard_files
    from ensemble.secrets import complete_secrets
    from ensemble.spec import spec_from_dict

    spec = spec_from_dict({"fleet": {"name": "lng", "domain": "lng.test"}, "jitsi": {"language": "fr"}},
                          source="<test>")
    secrets: dict = {}
    complete_secrets(secrets, spec)
    domain = spec.shard_names()[0]
    (rendered,) = [f.content for f in shard_files(spec, 1, secrets) if f.path == f"/etc/jitsi/meet/{domain}-config.js"]
    with chromium(tmp_path, "MAP * ~NOTFOUND", languages="en-US,en") as browser:
        upstream_lang, upstream_ic = page_language(
            browser, standin_page(tmp_path / "upstream", "var config = { defaultLanguage: 'fr' };"))
        assert upstream_lang == "en" and upstream_ic["LANG_DETECTION"] is True  # the browser wins upstream
        page = standin_page(tmp_path / "ensemble", rendered)
        lang, ic = page_language(browser, page)
        assert lang == "fr" and ic["LANG_DETECTION"] is False
        assert {k: v for k, v in ic.items() if k != "LANG_DETECTION"} == {
            k: v for k, v in upstream_ic.items() if k != "LANG_DETECTION"}  # upstream's other defaults kept
        assert (ic["APP_NAME"], ic["SHOW_JITSI_WATERMARK"], ic["PROVIDER_NAME"]) == ("Jitsi Meet", True, "Jitsi")
        assert page_language(browser, page, "?lang=de")[0] == "de"  # the user's choice still wins


# ------------------------------------------------------------------------------------------------ a real guest

GUEST_INSTALL = r"""
set -e
export DEBIAN_FRONTEND=noninteractive
echo 'Acquire::http::Proxy::{gateway} "DIRECT";' > /etc/apt/apt.conf.d/02jitsi-standin-direct
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends curl gnupg ca-certificates >/dev/null
curl -fsS {key_url} -o /tmp/jitsi-key.asc
gpg --batch --show-keys --with-colons /tmp/jitsi-key.asc | awk -F: '/^fpr/ {{print "FPR=" $10; exit}}'
gpg --batch --yes --dearmor -o /usr/share/keyrings/jitsi-keyring.gpg /tmp/jitsi-key.asc
printf 'Types: deb\nURIs: {url}\nSuites: stable/\nSigned-By: /usr/share/keyrings/jitsi-keyring.gpg\n' \
    > /etc/apt/sources.list.d/jitsi-stable.sources
printf '%s\n' \
    'jitsi-videobridge2 jitsi-videobridge/jvb-hostname string {domain}' \
    'jitsi-meet-web-config jitsi-meet/cert-choice select Generate a new self-signed certificate' \
    'jitsi-meet-web-config jitsi-meet/jaas-choice boolean false' \
    'jicofo jicofo/jicofo-authpassword password focus-secret' \
    'jitsi-videobridge2 jitsi-videobridge/jvbsecret password jvb-secret' | debconf-set-selections
apt-get update -q >/dev/null
apt-get install -y -q --no-install-recommends nginx >/dev/null
apt-get install -y -q --no-install-recommends jitsi-meet >/dev/null
echo INSTALLED
"""


@pytest.mark.realhost
@pytest.mark.slow
@pytest.mark.needs_tool("chromium", "/usr/bin/chromedriver")
def test_packages_install_and_run_in_a_real_debian_guest(repo, local_fleet_factory, local_provider, tmp_path):
    from conftest import ssh_run

    # CI installs on the default profile; ENSEMBLE_STANDIN_GUEST_OS=debian-trixie (or -bullseye) tries another
    spec, hosts = local_fleet_factory("t-standin", shards=1,
                                      os_profile=os.environ.get("ENSEMBLE_STANDIN_GUEST_OS", "debian-bookworm"))
    shard = next(h for h in hosts if h.role == "shard")
    domain = shard.name
    url = local_provider.serve_directory(spec, "jitsi-standin", repo.path).rstrip("/")
    gateway = local_provider.network(spec).gateway
    started = time.monotonic()
    code, out, err = ssh_run(shard, GUEST_INSTALL.format(gateway=gateway, key_url=repo.key_url(url), url=url,
                                                          domain=domain), timeout=900)
    print(f"\n[measure] stand-in jitsi-meet install in a fresh guest: {time.monotonic() - started:.1f} s")
    assert code == 0 and "INSTALLED" in out, out + err
    assert f"FPR={repo.key_fingerprint}" in out

    checks = {
        "versions": "dpkg-query -W -f='${Package} ${Version}\\n' jitsi-meet jitsi-videobridge2 jicofo",
        "users": "id -nG jvb; id -nG jicofo",
        "active": "systemctl is-active jitsi-videobridge2 jicofo prosody nginx",
        "jvb_health": "curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8080/about/health",
        "jicofo_stats": "curl -fsS http://127.0.0.1:8888/stats",
        "census": f"curl -fsS -H 'Host: {domain}' http://127.0.0.1:5280/room-census",
        "udp": "ss -Hulnp 'sport = :10000'",
        "processes": "ps -eo user=,args= | grep '[s]tandin-'",
        "web": f"curl -sk --resolve {domain}:443:127.0.0.1 https://{domain}/somemeeting",
        "config_js": f"grep -c {domain} /etc/jitsi/meet/{domain}-config.js",
        "debconf": "debconf-show jitsi-meet-web-config",
        "log": "cat /var/log/jitsi/jvb.log",
    }
    results = {}
    for name, command in checks.items():
        results[name] = ssh_run(shard, command)
        assert results[name][0] == 0, f"{name}: {results[name]}"
    assert f"jitsi-meet {MEET_VERSION}" in results["versions"][1]
    assert results["users"][1].split() == ["jitsi", "jitsi"]
    assert results["active"][1].split() == ["active"] * 4
    assert results["jvb_health"][1] == "200"
    assert json.loads(results["jicofo_stats"][1])["bridge_selector"]["operational_bridge_count"] == 1
    assert json.loads(results["census"][1]) == {"room_census": []}
    assert "python3" in results["udp"][1]
    assert "jvb " in results["processes"][1] and "jicofo " in results["processes"][1]
    web = results["web"][1]
    assert "Jitsi Meet (TEST STAND-IN, ensemble)" in web and "var config" in web, web[:500]
    assert "* jitsi-meet/cert-choice: Generate a new self-signed certificate" in results["debconf"][1]
    assert f"would log in as jvb@auth.{domain}" in results["log"][1]

    # the services really log in to prosody with the preseeded passwords, over TLS checked against the
    # system store (the postinst trusts auth.D's certificate, as the real one does)
    # both services log in on their own time (a busy machine: well over a minute): wait for both
    code, out, err = ssh_run(shard, """for i in $(seq 150); do
            [ "$(curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:8888/about/health)" = 200 ] &&
                grep -q 'joined JvbBrewery@internal.auth.' /var/log/jitsi/jvb.log && break
            sleep 1
        done
        curl -fsS http://127.0.0.1:8888/about/health -o /dev/null && grep 'XMPP: logged in' /var/log/jitsi/jvb.log""")
    assert code == 0 and f"jvb@auth.{domain}/" in out and "joined JvbBrewery@internal.auth." in out, out + err

    # a browser on the room's URL becomes a real participant: conference request, XMPP over the websocket
    census_of = f"curl -fsS -H 'Host: {domain}' http://127.0.0.1:5280/room-census"
    room_jid = f"standup-room@conference.{domain}"
    with chromium(tmp_path, f"MAP {domain} {shard.address}") as browser:
        browser.get(f"https://{domain}/Standup-Room")
        wait_for(lambda: body_state(browser)["joined"] == "true" or body_state(browser)["error"], timeout=30,
                 what="the stand-in page to join its room")
        assert body_state(browser)["error"] is None, body_state(browser)
        browser.switch_to.new_window("tab")
        browser.get(f"https://{domain}/standup-room")
        wait_for(lambda: body_state(browser)["participants"] == "2", timeout=30, what="a second participant")
        census = json.loads(ssh_run(shard, census_of)[1])["room_census"]
        assert [(r["room_name"], r["participants"]) for r in census] == [(room_jid, 2)]
    wait_for(lambda: json.loads(ssh_run(shard, census_of)[1])["room_census"] == [], timeout=60,
             what="the room to empty and the focus to leave once the browser is gone")

    # existing configuration survives a reconfigure and a reinstall (the deploy owns these files)
    marker = "// owned by the deploy"
    code, out, err = ssh_run(shard, f"""set -e
        echo '{marker}' >> /etc/jitsi/videobridge/jvb.conf
        echo '{marker}' >> /etc/jitsi/jicofo/jicofo.conf
        echo '{marker}' >> /etc/jitsi/meet/{domain}-config.js
        export DEBIAN_FRONTEND=noninteractive
        dpkg-reconfigure jitsi-videobridge2 jicofo jitsi-meet-web-config jitsi-meet-prosody >/dev/null
        apt-get install -y -q --reinstall jitsi-videobridge2 jicofo jitsi-meet-web-config >/dev/null
        grep -c '{marker}' /etc/jitsi/videobridge/jvb.conf /etc/jitsi/jicofo/jicofo.conf \\
            /etc/jitsi/meet/{domain}-config.js
        systemctl is-active jitsi-videobridge2 jicofo""")
    assert code == 0, out + err
    assert out.count(":1\n") == 3 and out.endswith("active\nactive\n"), out

    # purge stops the services and removes what the packages wrote (prerm/postrm)
    code, out, err = ssh_run(shard, """set -e
        DEBIAN_FRONTEND=noninteractive apt-get purge -y -q jitsi-meet jitsi-videobridge2 jicofo >/dev/null
        systemctl is-active jitsi-videobridge2 jicofo || true
        ls /etc/jitsi
        ss -Hulnp 'sport = :10000' | wc -l""")
    assert code == 0, out + err
    assert out.split() == ["inactive", "inactive", "meet", "0"], out


def test_an_unwritable_cache_or_a_missing_tool_is_one_clear_line(tmp_path, monkeypatch):
    from ensemble.errors import EnsembleError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(EnsembleError, match=r"^Jitsi stand-in cache .*/file/cache: not writable \(Not a directory\)"):
        build_standin_repo(blocker / "cache")
    monkeypatch.setenv("PATH", str(tmp_path / "empty-path"))
    with pytest.raises(EnsembleError, match=r"needs the package\(s\) dpkg, gnupg: apt-get install dpkg gnupg$"):
        build_standin_repo(tmp_path / "cache")


@pytest.mark.needs_tool("nginx", "openssl")
def test_default_nginx_site_passes_nginx_t(repo, tmp_path):
    """The site the web-config postinst writes when none exists, checked by the real nginx."""
    root = extract(deb_of(repo, "jitsi-meet-web-config"), tmp_path / "pkg")
    certs = make_certs(tmp_path / "certs", DOMAIN)
    site = (root / "usr/share/jitsi-meet-web-config/jitsi-meet.example").read_text()
    site = site.replace("/etc/jitsi/meet/jitsi-meet.example.com.crt", str(certs / f"{DOMAIN}.crt"))
    site = site.replace("/etc/jitsi/meet/jitsi-meet.example.com.key", str(certs / f"{DOMAIN}.key"))
    site = site.replace("jitsi-meet.example.com", DOMAIN)
    ports = iter(free_ports(len(re.findall(r"listen (80|443)", site))))
    site = re.sub(r"listen (80|443)", lambda m: f"listen 127.0.0.1:{next(ports)}", site)
    (tmp_path / "site.conf").write_text(site)
    (tmp_path / "nginx.conf").write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
        f"http {{ include /etc/nginx/mime.types; access_log off; include {tmp_path}/site.conf; }}\n")
    checked = subprocess.run(["nginx", "-t", "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log")],
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stderr
    assert "location = /config.js" in site and "/conference-request/v1" in site and "ssi on;" in site
