"""`ensemble render` and ensemble.render: the whole fleet's files through the real CLI, deterministic,
with modes, stale files removed, secrets kept out of the output; the commented example; packaging."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from ensemble import paths
from ensemble.errors import EnsembleError, UsageError
from ensemble.outtree import MANIFEST
from ensemble.providers.base import Host
from ensemble.render import (
    COMPONENTS,
    RenderedFile,
    fleet_files,
    placeholder_host,
    render_fleet_to,
    shard_context,
    shard_files,
)
from ensemble.secrets import complete_secrets
from ensemble.spec import iter_keys, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "ensemble.toml"
ENSEMBLE = [sys.executable, "-m", "ensemble.cli"]


def _secrets(spec) -> dict:
    store: dict = {}
    complete_secrets(store, spec)
    return store


def _tree(folder: Path) -> dict[str, tuple[str, int]]:
    """relative path -> (sha256 of the bytes, or "dir"; mode) of everything under folder."""
    return {str(p.relative_to(folder)): ("dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest(),
                                         stat.S_IMODE(p.stat().st_mode))
            for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- the commented example

def test_example_lists_every_key_with_its_default():
    data = tomllib.loads(EXAMPLE.read_text())
    for key, default, _doc, _choices in iter_keys():
        if key == "fleet.name":
            continue  # the example names its own fleet: a copy never takes over the embedded default `demo`
        node = data
        for part in key.split("."):
            assert part in node, f"examples/ensemble.toml lacks {key}"
            node = node[part]
        assert node == default, f"examples/ensemble.toml: {key} = {node!r}, default is {default!r}"


def test_example_loads_and_documents_each_key():
    spec = load_spec(EXAMPLE)
    assert spec == spec_from_dict({"fleet": {"name": "example"}})  # every default but its own fleet name
    lines = EXAMPLE.read_text().splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith(("#", "[")):
            assert lines[i - 1].startswith("#") or "=" in lines[i - 1], f"no comment above: {line}"


# ---------------------------------------------------------------- the CLI

@pytest.fixture
def workdir(tmp_path):
    shutil.copy(EXAMPLE, tmp_path / "ensemble.toml")
    return tmp_path


def _render(workdir: Path, out: Path, *extra: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`ensemble render` in a process of its own (`env` added to this one's environment)."""
    return subprocess.run([*ENSEMBLE, "render", "--config", str(workdir / "ensemble.toml"), "--out", str(out),
                           "--secrets", str(workdir / "secrets.json"), *extra],
                          capture_output=True, text=True, cwd=workdir, timeout=120, env={**os.environ, **(env or {})})


def test_cli_render_writes_every_host_deterministically(workdir):
    out = workdir / "r"
    first = _render(workdir, out, env={"PYTHONHASHSEED": "1", "TZ": "UTC"})
    assert first.returncode == 0, first.stderr
    spec = load_spec(workdir / "ensemble.toml")
    assert sorted(p.name for p in out.iterdir()) == sorted([*spec.shard_names(), spec.fleet.domain, MANIFEST])
    shard = out / spec.shard_name(1)
    d = spec.shard_name(1)
    for path in (f"etc/prosody/conf.avail/{d}.cfg.lua", "etc/jitsi/jicofo/jicofo.conf",
                 "etc/jitsi/videobridge/jvb.conf", f"etc/jitsi/meet/{d}-config.js",
                 f"etc/nginx/sites-available/{d}.conf", "etc/etherpad/settings.json",
                 "etc/systemd/system/etherpad.service"):
        assert (shard / path).is_file(), path
    assert stat.S_IMODE((shard / f"etc/nginx/sites-available/{d}.conf").stat().st_mode) == 0o640
    assert stat.S_IMODE((shard / "etc/jitsi/videobridge/jvb.conf").stat().st_mode) == 0o640
    assert stat.S_IMODE((shard / f"etc/jitsi/meet/{d}-config.js").stat().st_mode) == 0o644
    assert stat.S_IMODE(shard.stat().st_mode) == 0o700
    assert list((out / spec.fleet.domain).rglob("*.conf")), "front door files"

    # the secrets store: created once, 0600, never printed
    secrets_file = workdir / "secrets.json"
    assert stat.S_IMODE(secrets_file.stat().st_mode) == 0o600
    store = json.loads(secrets_file.read_text())
    values = [v for entry in store.values() for v in entry.values()]
    assert values and all(v not in first.stdout + first.stderr for v in values)
    # ...but they did reach the files that need them
    assert store[d]["jvb_password"] in (shard / "etc/jitsi/videobridge/jvb.conf").read_text()

    # Determinism across processes and time: each render below is a separate process with another
    # hash seed (set and dict orders differ), another time zone, and at least a second later.
    before = _tree(out)
    secrets_before = secrets_file.read_bytes()
    time.sleep(1.1)
    second = _render(workdir, out, env={"PYTHONHASHSEED": "2", "TZ": "Pacific/Chatham"})
    assert second.returncode == 0, second.stderr
    assert _tree(out) == before  # byte-identical, same modes
    assert secrets_file.read_bytes() == secrets_before  # generated once

    time.sleep(1.1)
    other = workdir / "r2"
    third = _render(workdir, other, env={"PYTHONHASHSEED": "3", "TZ": "America/Los_Angeles"})
    assert third.returncode == 0, third.stderr
    assert _tree(other) == before  # a fresh tree: the same bytes and modes, folders included


def test_cli_render_removes_only_the_stale_files_it_wrote(workdir):
    out = workdir / "r"
    assert _render(workdir, out).returncode == 0
    d = load_spec(workdir / "ensemble.toml").shard_name(1)
    assert (out / d / "etc" / "etherpad").is_dir()
    mine = out / d / "etc" / "old" / "file.conf"  # a file render did not write: not render's to delete
    mine.parent.mkdir(parents=True)
    mine.write_text("left over")
    unrelated = out / "notes" / "keep.txt"
    unrelated.parent.mkdir()
    unrelated.write_text("mine")
    text = (workdir / "ensemble.toml").read_text().replace("etherpad = true", "etherpad = false")
    (workdir / "ensemble.toml").write_text(text)
    assert _render(workdir, out).returncode == 0
    assert not (out / d / "etc" / "etherpad").exists()  # written by the first render, not by the second
    assert mine.read_text() == "left over"
    assert unrelated.read_text() == "mine"


def test_cli_render_bad_input_is_one_line_exit_2_and_writes_nothing(workdir):
    (workdir / "ensemble.toml").write_text('[fleet]\nshards = 0\n')
    run = _render(workdir, workdir / "r")
    assert run.returncode == 2
    assert run.stderr.strip().count("\n") == 0 and "fleet.shards" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (workdir / "r").exists() and not (workdir / "secrets.json").exists()
    run = subprocess.run([*ENSEMBLE, "render", "--config", str(workdir / "ensemble.toml")], capture_output=True,
                         text=True, cwd=workdir)
    assert run.returncode == 2 and "--out" in run.stderr


# ---------------------------------------------------------------- the module

def test_context_holds_plain_values_only():
    spec = spec_from_dict({})

    def check(value, where="ctx"):
        if isinstance(value, dict):
            for k, v in value.items():
                assert isinstance(k, str)
                check(v, f"{where}.{k}")
        elif isinstance(value, list):
            for i, v in enumerate(value):
                check(v, f"{where}[{i}]")
        else:
            assert value is None or type(value) in (str, int, bool), f"{where} is a {type(value).__name__}"

    check(shard_context(spec, 1, _secrets(spec)))


def test_hosts_given_replace_the_placeholders():
    spec = spec_from_dict({"fleet": {"shards": 2}})
    hosts = [
        Host(name=spec.shard_name(1), role="shard", shard=1, address="10.213.0.11"),
        Host(name=spec.fleet.domain, role="frontdoor", shard=None, address="10.213.0.10",
             public_ipv4="198.51.100.50"),
    ]
    files = fleet_files(spec, _secrets(spec), hosts)
    site1 = {f.path: f for f in files[spec.shard_name(1)]}[f"/etc/nginx/sites-available/{spec.shard_name(1)}.conf"]
    assert "allow 10.213.0.10;" in site1.content and "allow 198.51.100.50;" in site1.content
    assert "198.51.100.1;" not in site1.content  # the placeholder front door is gone
    jvb2 = {f.path: f for f in files[spec.shard_name(2)]}["/etc/jitsi/videobridge/jvb.conf"]
    assert placeholder_host(spec, 2).public_ipv4 in jvb2.content  # shard 2 unknown: placeholder


def test_placeholders_are_documentation_addresses_and_distinct():
    spec = spec_from_dict({"fleet": {"shards": 600}})
    addresses = [placeholder_host(spec, n).public_ipv4 for n in range(1, 601)]
    assert len(set(addresses)) == 600
    assert addresses[0] == "203.0.113.1" and addresses[599].startswith("198.18.")


def test_missing_secret_is_named_without_values():
    spec = spec_from_dict({})
    store = _secrets(spec)
    del store[spec.shard_name(1)]["jvb_password"]
    with pytest.raises(EnsembleError, match="jvb_password") as info:
        shard_files(spec, 1, store)
    assert store[spec.shard_name(1)]["focus_password"] not in str(info.value)


@pytest.mark.parametrize("bad", ['abc"def0123456789', "abc$def0123456789", "short", "a b c d e f g h i j k"])
def test_unsafe_secret_is_refused_without_echoing_it(bad):
    spec = spec_from_dict({})
    store = _secrets(spec)
    store["fleet"]["occupancy_token"] = bad
    with pytest.raises(UsageError, match="fleet.occupancy_token") as info:
        shard_files(spec, 1, store)
    assert bad not in str(info.value)


def test_every_file_is_well_formed():
    spec = spec_from_dict({})
    for host, rendered in fleet_files(spec, _secrets(spec)).items():
        paths = [f.path for f in rendered]
        assert len(paths) == len(set(paths)), host
        for f in rendered:
            assert isinstance(f, RenderedFile)
            assert f.path.startswith("/") and ".." not in f.path
            assert f.component in COMPONENTS
            assert f.content.endswith("\n") or f.path.endswith(".txt"), f.path


def test_render_fleet_to_returns_what_it_wrote(tmp_path):
    spec = spec_from_dict({"fleet": {"shards": 1}})
    written = render_fleet_to(spec, _secrets(spec), tmp_path)
    assert sorted(written) == sorted(p for p in tmp_path.rglob("*") if p.is_file() and p.name != MANIFEST)


# ---------------------------------------------------------------- packaging

def test_templates_ship_in_a_regular_install(tmp_path):
    """`pip install .` (not editable), used from another folder, renders a shard."""
    # build from a copy: setuptools writes build/ and *.egg-info beside the sources
    source, target = tmp_path / "src", tmp_path / "site"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".venv", ".git", ".ensemble", "build", "*.egg-info",
                                                                "__pycache__", "tests", "bench"))
    run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(target),
                          str(source)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (target / "ensemble" / "_templates" / "nginx" / "site.conf.j2").is_file()
    probe = ("import ensemble.render as r, ensemble.spec as s, ensemble.secrets as k;"
             "spec = s.spec_from_dict({}); st = {}; k.complete_secrets(st, spec);"
             "print(r.__file__); print(len(r.shard_files(spec, 1, st)))")
    # the venv gives the dependencies; the install must come first (ahead of the editable checkout)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = subprocess.run([sys.executable, "-c", f"import sys; sys.path[:0] = [{str(target)!r}]; {probe}"],
                         capture_output=True, text=True, cwd=tmp_path, env=env)
    assert run.returncode == 0, run.stderr
    module_file, count = run.stdout.split()
    assert module_file.startswith(str(target)) and int(count) >= 8


@pytest.mark.needs_tool("nginx", "openssl")
def test_rendered_tree_passes_nginx_t_for_every_shard(workdir):
    """The tree `ensemble render` wrote, as is (only certificate paths moved), accepted by the real nginx."""
    out = workdir / "r"
    assert _render(workdir, out).returncode == 0
    crt, key = workdir / "fullchain.pem", workdir / "privkey.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=t",
                    "-keyout", str(key), "-out", str(crt)], check=True, capture_output=True)
    for name in load_spec(workdir / "ensemble.toml").shard_names():
        root = out / name
        site = (root / f"etc/nginx/sites-available/{name}.conf").read_text()
        site = site.replace(f"/etc/ensemble/tls/{name}/fullchain.pem", str(crt))
        site = site.replace(f"/etc/ensemble/tls/{name}/privkey.pem", str(key))
        for pem in (paths.OCCUPANCY_TLS_CERT, paths.OCCUPANCY_TLS_KEY):  # the fleet-CA pair, as rendered
            site = site.replace(pem, str(root / pem.lstrip("/")))
        (workdir / f"{name}.conf").write_text(site)
        conf = workdir / f"{name}-nginx.conf"
        conf.write_text(f"pid {workdir}/nginx.pid; error_log {workdir}/error.log;\nevents {{}}\n"
                        f"http {{ include /etc/nginx/mime.types; include {root}/etc/nginx/conf.d/ensemble-http.conf;"
                        f" include {workdir}/{name}.conf; }}\n")
        run = subprocess.run([shutil.which("nginx") or "/usr/sbin/nginx", "-t", "-p", str(workdir), "-c", str(conf)],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
