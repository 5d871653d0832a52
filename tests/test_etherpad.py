"""Etherpad for real: the pinned source, and the deploy onto a throwaway Debian host.

The fast tests check the source setting (both forms, a checksum mismatch refused before any
host is touched). The `realhost` tests deploy `ensemble.components.etherpad` through the
runner over real SSH onto a local-provider container: npm through the fleet's proxy, a real
sqlite database, the HTTP API, the client bundle that a wrong layout silently breaks, a pad
loaded in headless Chromium, a second deploy with 0 changes, and a lost tree restored from
the build cache on the deploying machine.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import replace

import pytest

from ensemble.errors import EnsembleError, SpecError
from ensemble.etherpad_source import built_tree_path, fetch_release, parse_source
from ensemble.spec import spec_from_dict

SOURCE = "npm:ep_etherpad-lite@1.8.14"  # 2.x releases live on GitHub, out of reach here


# ---------------------------------------------------------------- the source setting

def test_source_forms():
    npm = parse_source(SOURCE)
    assert (npm.kind, npm.package, npm.version, npm.label) == ("npm", "ep_etherpad-lite", "1.8.14",
                                                                "ep_etherpad-lite@1.8.14")
    release = parse_source("https://github.com/ether/etherpad-lite/archive/refs/tags/v2.2.7.tar.gz", "a" * 64)
    assert (release.kind, release.sha256) == ("tarball", "a" * 64)
    # the production default stays the upstream release
    assert parse_source(spec_from_dict({}).etherpad.source_url).kind == "tarball"


@pytest.mark.parametrize("bad", ["ftp://example.org/e.tgz", "npm:ep_etherpad-lite", "npm:@1.8.14", "etherpad"])
def test_bad_source_names_the_key(bad):
    with pytest.raises(SpecError) as err:
        spec_from_dict({"etherpad": {"source_url": bad}})
    assert str(err.value).startswith("etherpad.source_url: ")
    assert "npm:<package>@<version>" in str(err.value)


def test_cache_key_follows_source_and_node():
    src = parse_source(SOURCE)
    keys = {src.cache_key(18), src.cache_key(20), parse_source(SOURCE, "b" * 64).cache_key(18),
            parse_source("npm:ep_etherpad-lite@1.8.13").cache_key(18)}
    assert len(keys) == 4
    assert src.cache_key(18) == parse_source(SOURCE).cache_key(18)  # stable between runs


def test_stale_cached_trees_are_pruned(tmp_path):
    from ensemble.etherpad_source import prune_stale_trees

    key = parse_source(SOURCE).cache_key(18)
    keep = built_tree_path(tmp_path, key)
    keep.parent.mkdir(parents=True)
    older = keep.with_name(keep.name.replace(key[-16:], "0" * 16))
    other_node = built_tree_path(tmp_path, parse_source(SOURCE).cache_key(20))
    other_version = built_tree_path(tmp_path, parse_source("npm:ep_etherpad-lite@1.8.13").cache_key(18))
    for path in (keep, older, other_node, other_version):
        path.write_bytes(b"tree")
    assert prune_stale_trees(tmp_path, key) == [older]
    assert sorted(p.name for p in keep.parent.iterdir()) == sorted(p.name for p in (keep, other_node, other_version))


@pytest.mark.parametrize("source", [SOURCE, "https://example.org/etherpad-lite-2.2.7.tar.gz"])
def test_build_script_is_valid_shell(source):
    from ensemble.components.etherpad import build_script, restore_script

    for script in (build_script(parse_source(source, "c" * 64), "key label"), restore_script("key label")):
        run = subprocess.run(["sh", "-n"], input=script, capture_output=True, text=True)
        assert run.returncode == 0, run.stderr


@pytest.mark.needs_tool("node")
def test_2x_entry_point_and_node_check(tmp_path):
    """The glue for 2.x trees (not reachable here) run for real: the server.js shim and the Node check."""
    from ensemble.components.etherpad import _node_version_check, _ts_entry_shim

    (tmp_path / "src" / "node").mkdir(parents=True)
    (tmp_path / "src" / "node" / "server.ts").write_text("export const start = () => {};\n")
    subprocess.run(["sh", "-c", _ts_entry_shim()], cwd=tmp_path, check=True)
    shim = tmp_path / "src" / "node" / "server.js"
    assert "require('./server.ts')" in shim.read_text()
    assert subprocess.run(["node", "--check", str(shim)], capture_output=True).returncode == 0
    for need, ok in ((">=10.17.0", True), (">=99.0.0", False)):
        (tmp_path / "src" / "package.json").write_text(json.dumps({"engines": {"node": need}}))
        run = subprocess.run(["sh", "-c", _node_version_check()], cwd=tmp_path, capture_output=True, text=True)
        assert (run.returncode == 0) == ok, run.stderr
        assert ok or f"needs Node {need}" in run.stderr


@pytest.fixture
def release_server(tmp_path):
    """A loopback HTTP server holding one release tarball: (url, its sha256)."""
    root = tmp_path / "www"
    root.mkdir()
    body = b"\x1f\x8b stand-in release archive " * 100
    (root / "etherpad-2.2.7.tar.gz").write_bytes(body)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}/etherpad-2.2.7.tar.gz", hashlib.sha256(body).hexdigest()
    server.shutdown()
    server.server_close()


def test_release_checksum_verified(release_server, tmp_path):
    url, sha = release_server
    path = fetch_release(parse_source(url, sha), tmp_path / "cache")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha
    assert fetch_release(parse_source(url, sha), tmp_path / "cache") == path  # cached copy re-verified, reused


def test_release_checksum_mismatch_is_refused(release_server, tmp_path):
    url, sha = release_server
    wrong = "0" * 64
    with pytest.raises(EnsembleError) as err:
        fetch_release(parse_source(url, wrong), tmp_path / "cache")
    assert str(err.value).startswith("etherpad.sha256: checksum mismatch")
    assert wrong in str(err.value) and sha in str(err.value)
    assert list((tmp_path / "cache" / "etherpad").iterdir()) == []  # nothing half-done left behind


# ---------------------------------------------------------------- on a real host

FLEET = "t-etherpad"


@pytest.fixture(scope="module")
def etherpad_host(local_fleet_factory, local_provider):
    """A one-shard local fleet with Etherpad deployed once; yields a dict of what the tests need."""
    from ensemble.components.etherpad import etherpad
    from ensemble.inventory import targets_for
    from ensemble.render import shard_files
    from ensemble.runner import run_deploy
    from ensemble.secrets import complete_secrets

    spec, hosts = local_fleet_factory(FLEET, shards=1, tls={"mode": "self-signed"},
                                      etherpad={"source_url": SOURCE})
    shard = next(h for h in hosts if h.role == "shard")
    store: dict = {}
    complete_secrets(store, spec)
    proxy = local_provider.network(spec).http_proxy_url

    def deploy(with_spec=spec):
        kwargs = {"spec": with_spec, "rendered_files": shard_files(with_spec, 1, store, shard),
                  "secrets": store[shard.name], "http_proxy": proxy}
        started = time.monotonic()
        result = run_deploy(targets_for([shard]), etherpad, kwargs, progress=lambda line: None)[shard.name]
        return result, time.monotonic() - started

    first, seconds = deploy()
    print(f"\n[etherpad] first deploy: {seconds:.1f} s ({'cached tree' if _restored(first) else 'npm build'})")
    return {"spec": spec, "host": shard, "api_key": store[shard.name]["etherpad_api_key"], "deploy": deploy,
            "first": first}


def _restored(result) -> bool:
    return any("from the cached build" in name for name in result.changes)


def _guest_http(host, path: str, port: int = 9001) -> tuple[int, str]:
    """GET http://127.0.0.1:<port><path> from inside the guest: (status, body)."""
    from conftest import ssh_run

    script = ("import sys, urllib.request, urllib.error\n"
              "try:\n"
              f"    r = urllib.request.urlopen('http://127.0.0.1:{port}' + sys.argv[1], timeout=30)\n"
              "    sys.stdout.write(str(r.status) + '\\n' + r.read().decode())\n"
              "except urllib.error.HTTPError as e:\n"
              "    sys.stdout.write(str(e.code) + '\\n' + e.read().decode())\n")
    code, out, err = ssh_run(host, f"python3 -c {_quote(script)} {_quote(path)}")
    assert code == 0, err
    status, _, body = out.partition("\n")
    return int(status), body


def _quote(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"


def _api(ctx, method: str, **params) -> dict:
    from urllib.parse import urlencode

    status, body = _guest_http(ctx["host"], f"/api/1/{method}?" + urlencode({"apikey": ctx["api_key"], **params}))
    assert status == 200, body
    reply = json.loads(body)
    assert reply["code"] == 0, reply
    return reply


@pytest.mark.realhost
@pytest.mark.slow  # the module's host: Etherpad built and deployed (minutes)
def test_first_deploy_succeeds(etherpad_host):
    first = etherpad_host["first"]
    assert first.error is None and first.failed == 0, first
    assert any(name.endswith("Etherpad restarted") for name in first.changes)


@pytest.mark.realhost
@pytest.mark.slow
def test_service_active_and_answering(etherpad_host):
    from conftest import ssh_run

    code, out, _ = ssh_run(etherpad_host["host"], "systemctl is-active etherpad; systemctl is-enabled etherpad; "
                           "ps -o user= -C node")
    assert code == 0 and out.split() == ["active", "enabled", "etherpad"]
    status, body = _guest_http(etherpad_host["host"], "/")
    assert status == 200 and "Etherpad" in body


@pytest.mark.realhost
@pytest.mark.slow
def test_api_round_trip_in_sqlite(etherpad_host):
    from conftest import ssh_run

    _api(etherpad_host, "createPad", padID="roundtrip")
    _api(etherpad_host, "setText", padID="roundtrip", text="Bonjour depuis ensemble")
    assert _api(etherpad_host, "getText", padID="roundtrip")["data"]["text"] == "Bonjour depuis ensemble\n"
    # a real database file owned by etherpad (not the in-memory/dirty default), holding the pad
    code, out, _ = ssh_run(etherpad_host["host"], "stat -c %U /var/lib/etherpad/etherpad.sqlite && "
                           "grep -c 'pad:roundtrip' /var/lib/etherpad/etherpad.sqlite")
    assert code == 0 and out.split()[0] == "etherpad" and int(out.split()[1]) >= 1, out


@pytest.mark.realhost
@pytest.mark.slow
def test_pad_page_and_client_bundle(etherpad_host):
    status, page = _guest_http(etherpad_host["host"], "/p/test")
    assert status == 200 and 'id="editorcontainer"' in page
    # the wrong layout serves every URL with 200 but a bundle without its client libraries
    # (the browser then says "The module at security does not exist")
    status, bundle = _guest_http(etherpad_host["host"],
                                 "/javascripts/lib/ep_etherpad-lite/static/js/pad.js?callback=require.define")
    assert status == 200 and '"security/index.js": function' in bundle


@pytest.mark.realhost
@pytest.mark.slow
@pytest.mark.needs_tool("chromium", "/usr/bin/chromedriver")
def test_pad_edits_in_a_real_browser(etherpad_host):
    """Headless Chromium opens /p/<pad> through an SSH tunnel and the text typed there reaches the database."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with _tunnel(etherpad_host["host"], 9001) as port, _chromium() as browser:
        browser.get(f"http://127.0.0.1:{port}/p/browser")
        wait = WebDriverWait(browser, 60)
        outer = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, 'iframe[name="ace_outer"]'))
        browser.switch_to.frame(outer)
        inner = wait.until(lambda b: b.find_element(By.CSS_SELECTOR, 'iframe[name="ace_inner"]'))
        browser.switch_to.frame(inner)
        body = wait.until(lambda b: b.find_element(By.ID, "innerdocbody"))
        wait.until(lambda b: body.get_attribute("contenteditable") == "true")
        body.click()
        body.send_keys("typed in chromium")
        browser.switch_to.default_content()
        # the pad sends edits in the background: wait for them with the page still open
        deadline = time.monotonic() + 60
        while "typed in chromium" not in _api(etherpad_host, "getText", padID="browser")["data"]["text"]:
            assert time.monotonic() < deadline, "the text typed in the browser never reached the server"
            time.sleep(0.5)
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.realhost
@pytest.mark.slow
def test_second_deploy_changes_nothing(etherpad_host):
    result, seconds = etherpad_host["deploy"]()
    print(f"\n[etherpad] re-run: {seconds:.1f} s, {result.commands} remote commands")
    assert result.error is None and result.changed == 0, result.changes


@pytest.mark.realhost
@pytest.mark.slow
def test_lost_tree_is_restored_from_cache(etherpad_host):
    from conftest import ssh_run

    spec, host = etherpad_host["spec"], etherpad_host["host"]
    source = parse_source(spec.etherpad.source_url, spec.etherpad.sha256)
    from ensemble.etherpad_source import default_cache_dir, node_major

    assert built_tree_path(default_cache_dir(), source.cache_key(node_major("bookworm"))).is_file()
    code, _, err = ssh_run(host, "systemctl stop etherpad && rm -rf /opt/etherpad")
    assert code == 0, err
    result, seconds = etherpad_host["deploy"]()
    print(f"\n[etherpad] restore from the cached tree: {seconds:.1f} s")
    assert result.error is None and _restored(result), result.changes
    assert not any("npm install" in name for name in result.changes)
    # the database lives apart from the tree: the pad written before is still there
    assert _api(etherpad_host, "getText", padID="roundtrip")["data"]["text"] == "Bonjour depuis ensemble\n"


@pytest.mark.realhost
@pytest.mark.slow
def test_switch_to_postgres(etherpad_host):
    """database = postgres: PostgreSQL installed, role + database made, settings changed -> one restart."""
    from conftest import ssh_run

    spec = etherpad_host["spec"]
    with_postgres = replace(spec, etherpad=replace(spec.etherpad, database="postgres"))
    result, seconds = etherpad_host["deploy"](with_postgres)
    print(f"\n[etherpad] switch to postgres: {seconds:.1f} s")
    assert result.error is None, result
    changed = " | ".join(result.changes)
    assert "Etherpad database" in changed and "settings.json" in changed and "Etherpad restarted" in changed
    assert "Etherpad: install" not in changed  # the tree stays
    _api(etherpad_host, "createPad", padID="inpostgres", text="stocké dans PostgreSQL")
    query = "select count(*) from store where key = 'pad:inpostgres'"
    code, out, err = ssh_run(etherpad_host["host"], f'runuser -u postgres -- psql -tAc "{query}" etherpad')
    assert code == 0 and int(out.strip()) == 1, (out, err)
    again, _ = etherpad_host["deploy"](with_postgres)
    assert again.error is None and again.changed == 0, again.changes


@pytest.mark.realhost
@pytest.mark.slow
def test_release_checksum_mismatch_stops_the_deploy(etherpad_host, release_server):
    """A release whose sha256 differs is refused on the deploying machine: the host is left as it was."""
    from conftest import ssh_run

    url, _sha = release_server
    spec = etherpad_host["spec"]
    tampered = replace(spec, etherpad=replace(spec.etherpad, source_url=url, sha256="0" * 64))
    marker = "cat /opt/etherpad/.ensemble-installed; systemctl is-active etherpad"
    before = ssh_run(etherpad_host["host"], marker)
    result, _ = etherpad_host["deploy"](tampered)
    assert result.error and "etherpad.sha256: checksum mismatch" in result.error, result
    assert result.changed == 0
    assert ssh_run(etherpad_host["host"], marker) == before


# ---------------------------------------------------------------- helpers: tunnel, browser

class _tunnel:
    """Forward 127.0.0.1:<free port> on this machine to the guest's 127.0.0.1:<port> over its SSH."""

    def __init__(self, host, port: int):
        self.host, self.port = host, port

    def __enter__(self) -> int:
        from conftest import ssh_client

        self.client = ssh_client(self.host)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.5)
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()
        return self.listener.getsockname()[1]

    def _accept(self) -> None:
        while self.running:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                continue
            try:
                channel = self.client.get_transport().open_channel(
                    "direct-tcpip", ("127.0.0.1", self.port), conn.getpeername())
            except Exception:  # the tunnel is closing
                conn.close()
                continue
            for a, b in ((conn, channel), (channel, conn)):
                threading.Thread(target=_pump, args=(a, b), daemon=True).start()

    def __exit__(self, *exc) -> None:
        self.running = False
        self.listener.close()
        self.client.close()


def _pump(src, dst) -> None:
    try:
        while data := src.recv(65536):
            dst.sendall(data)
    except OSError:
        pass
    finally:
        for end in (src, dst):
            try:
                end.close()
            except OSError:
                pass


class _chromium:
    def __enter__(self):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="ensemble-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = "/usr/bin/chromium"
        for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                    "--no-proxy-server", f"--user-data-dir={self.profile}"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        return self.driver

    def __exit__(self, *exc) -> None:
        self.driver.quit()
        shutil.rmtree(self.profile, ignore_errors=True)
