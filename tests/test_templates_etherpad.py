"""Etherpad's settings.json read as JSON, and its systemd unit checked by `systemd-analyze verify`."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from ensemble.profiles import PROFILES
from ensemble.render import shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict

SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or "/usr/bin/systemd-analyze"


def _files(profile="debian-bookworm", **sections):
    spec = spec_from_dict({"fleet": {"os": profile}, **sections})
    store: dict = {}
    complete_secrets(store, spec)
    return store[spec.shard_name(1)], {f.path: f for f in shard_files(spec, 1, store)}


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_settings_json_sqlite(profile):
    _, files = _files(profile)
    item = files["/etc/etherpad/settings.json"]
    assert (item.mode, item.owner, item.group, item.service) == (0o640, "root", "etherpad", "etherpad")
    settings = json.loads(item.content)
    assert (settings["ip"], settings["port"]) == ("127.0.0.1", 9001)
    assert settings["trustProxy"] is True
    assert settings["dbType"] == "sqlite"
    assert settings["dbSettings"] == {"filename": "/var/lib/etherpad/etherpad.sqlite"}
    assert settings["padOptions"]["lang"] == "fr"


def test_settings_json_postgres_and_port():
    _, files = _files(etherpad={"database": "postgres", "port": 9123})
    settings = json.loads(files["/etc/etherpad/settings.json"].content)
    assert settings["dbType"] == "postgres"  # never "dirty"
    assert settings["dbSettings"]["host"] == "/var/run/postgresql"
    assert settings["port"] == 9123
    unit = files["/etc/systemd/system/etherpad.service"].content
    assert "Requires=postgresql.service" in unit


def test_keys_are_files_readable_by_etherpad_only():
    secrets, files = _files()
    api, session = files["/etc/etherpad/APIKEY.txt"], files["/etc/etherpad/SESSIONKEY.txt"]
    assert api.content == secrets["etherpad_api_key"]
    assert session.content == secrets["etherpad_session_key"]
    for item in (api, session):
        assert (item.mode, item.owner, item.group) == (0o640, "root", "etherpad")


def test_etherpad_off_renders_no_etherpad_files():
    _, files = _files(jitsi={"etherpad": False})
    assert not [p for p in files if "etherpad" in p]


def _verify(tmp_path: Path, unit_text: str) -> subprocess.CompletedProcess:
    unit = tmp_path / "etherpad.service"
    unit.write_text(unit_text)
    return subprocess.run([SYSTEMD_ANALYZE, "verify", str(unit)], capture_output=True, text=True, timeout=60)


@pytest.mark.needs_tool("systemd-analyze")
@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_systemd_analyze_verify_the_unit(tmp_path, database):
    _, files = _files(etherpad={"database": database})
    unit = files["/etc/systemd/system/etherpad.service"].content
    assert "User=etherpad" in unit
    assert "ExecStart=/usr/bin/node src/node/server.js --settings /etc/etherpad/settings.json" in unit
    assert "--sessionkey /etc/etherpad/SESSIONKEY.txt --apikey /etc/etherpad/APIKEY.txt" in unit
    run = _verify(tmp_path, unit)
    # verify exits 0 on unknown keys too: any diagnostic counts as a failure here
    assert run.returncode == 0 and run.stderr.strip() == "", run.stderr


@pytest.mark.needs_tool("systemd-analyze")
def test_systemd_analyze_verify_reports_problems(tmp_path):
    """The check can fail: a misspelt key is reported (exit code 0, but a diagnostic)."""
    _, files = _files()
    run = _verify(tmp_path, files["/etc/systemd/system/etherpad.service"].content.replace("UMask=", "UMsk="))
    assert "Unknown key" in run.stderr
