"""A fleet knows who it is (ensemble.identity), one command at a time changes it (ensemble.fleetlock), and
the local provider deletes only folders it made: the pure parts and the lock across real processes.

The chains on real hosts are in test_identity_chains.py (local provider) and test_identity_scaleway.py
(the Scaleway stand-in).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

from ensemble.errors import SpecError, UsageError
from ensemble.fleetlock import FleetLocked, fleet_lock, lock_path
from ensemble.identity import (
    DOMAIN_LABEL,
    ID_LABEL,
    OS_LABEL,
    FleetIdentity,
    check_identity,
    disruptive_changes,
    found_identity,
    read_record,
    refuse_disruptive,
    write_record,
)
from ensemble.kept import ID_MARK, SIZE_MARK, parse_kept
from ensemble.providers.base import Host
from ensemble.spec import default_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]


def spec(name="t-id", domain="a.example.org", **fleet):
    return spec_from_dict({"fleet": {"name": name, "domain": domain, **fleet}})


def hosts_of(name, domain, fleet_id=None, os_profile="debian-bookworm", shards=2, naming="{name}-{n}.{domain}"):
    labels = {DOMAIN_LABEL: domain, OS_LABEL: os_profile, **({ID_LABEL: fleet_id} if fleet_id else {})}
    door = Host(name=domain, role="frontdoor", shard=None, address="10.0.0.1", labels=labels)
    return [door, *[Host(name=naming.format(name=name, n=n, domain=domain), role="shard", shard=n,
                         address=f"10.0.0.{n + 1}", labels=labels) for n in range(1, shards + 1)]]


# ---- identity: which fleet a spec may act on ----

def test_a_new_fleet_gets_an_id_only_when_the_command_may_create_it(tmp_path):
    record = tmp_path / "identity.json"
    made = check_identity(spec(), "local", None, record, "deploy", create=True)
    assert made.new and made.identity.fleet_id.startswith("f-") and made.identity.account == "local"
    assert check_identity(spec(), "local", None, record, "plan").identity.fleet_id == ""


@pytest.mark.parametrize("found_domain", ["b.example.org", "a.example.org.evil.test", "meet.ensemble.test"])
def test_another_domain_under_the_same_name_is_refused_naming_the_fleet_found(tmp_path, found_domain):
    found = found_identity("t-id", hosts_of("t-id", found_domain, "f-0123456789ab"))
    with pytest.raises(UsageError) as caught:
        check_identity(spec(), "local", found, tmp_path / "identity.json", "deploy", create=True)
    line = str(caught.value)
    assert "\n" not in line and line.startswith("fleet.domain: found fleet 't-id'")
    assert found_domain in line and "f-0123456789ab" in line and "a.example.org" in line and "nothing changed" in line
    assert not (tmp_path / "identity.json").exists()


def test_another_id_under_the_same_name_and_domain_is_refused(tmp_path):
    record = tmp_path / "identity.json"
    write_record(record, FleetIdentity("t-id", "a.example.org", "f-aaaaaaaaaaaa", "local"))
    found = found_identity("t-id", hosts_of("t-id", "a.example.org", "f-bbbbbbbbbbbb"))
    with pytest.raises(UsageError, match=r"found fleet 't-id' \(domain a.example.org, id f-bbbbbbbbbbbb.*"
                                         r"this spec's fleet is id f-aaaaaaaaaaaa"):
        check_identity(spec(), "local", found, record, "fleet scale")


def test_another_provider_account_is_refused_even_when_nothing_is_found_there(tmp_path):
    record = tmp_path / "identity.json"
    write_record(record, FleetIdentity("t-id", "a.example.org", "f-aaaaaaaaaaaa", "scaleway project 1111"))
    with pytest.raises(UsageError, match="lives in scaleway project 1111, but the spec now reaches .* 2222"):
        check_identity(spec(), "scaleway project 2222", None, record, "deploy", create=True)


def test_the_same_fleet_is_recognised_and_a_record_less_copy_adopts_it(tmp_path):
    record = tmp_path / "identity.json"
    found = found_identity("t-id", hosts_of("t-id", "a.example.org", "f-aaaaaaaaaaaa"))
    verdict = check_identity(spec(), "local", found, record, "deploy", create=True)
    assert verdict.identity.fleet_id == "f-aaaaaaaaaaaa" and verdict.disruptive == [] and not verdict.new
    write_record(record, verdict.identity)
    assert check_identity(spec(), "local", found, record, "deploy").identity == verdict.identity
    legacy = found_identity("t-id", hosts_of("t-id", "a.example.org"))  # hosts made before fleet ids
    assert legacy.fleet_id is None
    assert check_identity(spec(), "local", legacy, record, "deploy").identity.fleet_id == "f-aaaaaaaaaaaa"


def test_two_ids_under_one_name_are_refused():
    mixed = hosts_of("t-id", "a.example.org", "f-aaaaaaaaaaaa")[:2] + hosts_of("t-id", "a.example.org",
                                                                               "f-bbbbbbbbbbbb")[2:]
    with pytest.raises(UsageError, match="belong to 2 fleets"):
        found_identity("t-id", mixed)


@pytest.mark.parametrize("content", ["", "{", "[]", '{"name": "t-id"}', '{"name": 1, "domain": "", "fleet_id": 2}'])
def test_a_broken_record_is_one_line_not_a_guess(tmp_path, content):
    record = tmp_path / "identity.json"
    record.write_text(content)
    with pytest.raises(UsageError, match="identity.json: .*remove it"):
        read_record(record)


def test_the_record_is_private(tmp_path):
    record = tmp_path / "sub" / "identity.json"
    write_record(record, FleetIdentity("t-id", "a.example.org", "f-aaaaaaaaaaaa", "local"))
    assert record.stat().st_mode & 0o777 == 0o600
    assert json.loads(record.read_text())["fleet_id"] == "f-aaaaaaaaaaaa"


# ---- disruptive changes: shown by plan, a flag on deploy, refused elsewhere ----

def test_disruptive_changes_are_named_one_by_one(tmp_path):
    record = tmp_path / "identity.json"
    write_record(record, FleetIdentity("t-id", "a.example.org", "f-aaaaaaaaaaaa", "local"))
    found = found_identity("t-id", hosts_of("t-id", "a.example.org", "f-aaaaaaaaaaaa"))
    deployed = {"tls_mode": "letsencrypt", "shard_name": "{name}-{n}.{domain}", "os": "debian-bookworm"}
    assert disruptive_changes(spec(), found, deployed) == []
    moved = spec(domain="b.example.org")
    verdict = check_identity(moved, "local", found, record, "plan")
    assert verdict.disruptive[0].startswith("domain: a.example.org -> b.example.org")
    renamed = spec(shard_name="s{n}.{domain}")
    assert any(c.startswith("shard naming: t-id-1.a.example.org -> s1.a.example.org")
               for c in disruptive_changes(renamed, found, deployed))
    tls = spec_from_dict({"fleet": {"name": "t-id", "domain": "a.example.org"}, "tls": {"mode": "self-signed"}})
    assert disruptive_changes(tls, found, deployed) == [
        "TLS mode: letsencrypt -> self-signed (certificates are replaced)"]
    trixie = found_identity("t-id", hosts_of("t-id", "a.example.org", "f-aaaaaaaaaaaa", os_profile="debian-trixie"))
    assert disruptive_changes(spec(), trixie, deployed)[0].startswith("OS profile: debian-trixie -> debian-bookworm")
    with pytest.raises(UsageError, match="--allow-disruptive"):
        refuse_disruptive(verdict.disruptive, "deploy")
    refuse_disruptive(verdict.disruptive, "deploy", allow=True)
    with pytest.raises(UsageError, match="^fleet scale: .*deploy them first"):
        refuse_disruptive(verdict.disruptive, "fleet scale")


def test_hosts_keep_the_fleet_record_and_it_is_read_back():
    from ensemble.hostfiles import base_files
    from ensemble.paths import FLEET_ID_FILE
    from ensemble.providers.base import DeployEnv

    s = spec()
    door = hosts_of("t-id", "a.example.org")[0]
    files = {f.path: f for f in base_files(s, door, DeployEnv(s), {"fleet": {"fleet_id": "f-aaaaaaaaaaaa"}})}
    record = files[FLEET_ID_FILE].content
    assert json.loads(record) == {"name": "t-id", "domain": "a.example.org", "fleet_id": "f-aaaaaaaaaaaa",
                                  "tls_mode": s.tls.mode, "shard_name": "{name}-{n}.{domain}",
                                  "os": s.fleet.os}
    kept = parse_kept({door.name: f'{{"fleet": {{}}}}\n{SIZE_MARK}\n\n{ID_MARK}\n{record}'}, [door])
    assert kept.deployed["fleet_id"] == "f-aaaaaaaaaaaa" and kept.recorded is None
    assert parse_kept({door.name: f"{{}}\n{SIZE_MARK}\n{ID_MARK}\n[1]"}, [door]).deployed is None


def test_shipped_examples_cannot_collide_with_the_embedded_default():
    embedded = default_spec().fleet.name
    examples = sorted((ROOT / "examples").glob("*.toml"))
    assert examples
    for path in examples:
        name = tomllib.loads(path.read_text()).get("fleet", {}).get("name")
        assert name and name != embedded, f"{path.name}: fleet.name {name!r} is the embedded default's"


# ---- the fleet lock ----

HOLDER = textwrap.dedent("""
    import sys, time
    from ensemble.fleetlock import fleet_lock
    with fleet_lock("t-id-lock", "local"):
        print("held", flush=True)
        time.sleep(120)
""")


def hold_lock(env) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, "ensemble", "deploy"], stdout=subprocess.PIPE, env=env,
                            text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_command_stops_at_once_saying_who_holds_the_lock_then_takes_over_a_dead_one(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    holder = hold_lock(dict(os.environ))
    try:
        with pytest.raises(FleetLocked) as caught, fleet_lock("t-id-lock", "local"):
            pass
        line = str(caught.value)
        assert "\n" not in line and f"pid {holder.pid}" in line and "since 20" in line
        assert "@" in line and "`-c ensemble deploy`" in line and "--wait-lock" in line
        assert caught.value.exit_code == 2
        with fleet_lock("t-id-other", "local"):  # another fleet is not held up
            pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    said = []
    with fleet_lock("t-id-lock", "local", progress=said.append):  # the kernel released the dead holder's lock
        note = json.loads(lock_path("t-id-lock", "local").read_text())
        assert note["pid"] == os.getpid()
        with fleet_lock("t-id-lock", "local"):  # re-entrant: scale holds it and calls deploy
            pass
    assert said and "left by" in said[0] and f"pid {holder.pid}" in said[0]
    assert lock_path("t-id-lock", "local").read_text() == ""  # released cleanly: no note left
    assert lock_path("t-id-lock", "local").stat().st_mode & 0o777 == 0o600


def test_wait_lock_waits_for_the_holder(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    holder = hold_lock(dict(os.environ))
    try:
        said = []
        with pytest.raises(FleetLocked):
            with fleet_lock("t-id-lock", "local", wait=0.5, progress=said.append):
                pass
        assert said and "waiting up to" in said[0]
        subprocess.Popen(["sh", "-c", f"sleep 1; kill {holder.pid}"])
        with fleet_lock("t-id-lock", "local", wait=60):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_the_cli_refuses_while_another_command_holds_the_lock(tmp_path, monkeypatch):
    monkeypatch.setenv("ENSEMBLE_LOCK_DIR", str(tmp_path / "locks"))
    config = tmp_path / "ensemble.toml"
    config.write_text('[fleet]\nname = "t-id-lock"\ndomain = "t-id-lock.test"\n'
                      f'[provider]\nkind = "local"\n[provider.local]\nstate_dir = "{tmp_path / "state"}"\n')
    holder = hold_lock(dict(os.environ))
    try:
        for args in (["deploy"], ["fleet", "scale", "2"], ["fleet", "destroy", "--yes"], ["upgrade"],
                     ["fleet", "drain", "1"], ["fleet", "undrain", "1"]):
            run = subprocess.run([sys.executable, "-m", "ensemble.cli", *args, "-c", str(config)],
                                 capture_output=True, text=True, timeout=120)
            assert run.returncode == 2, (args, run.stderr)
            assert run.stderr.count("\n") == 1 and "is locked by" in run.stderr and f"pid {holder.pid}" in run.stderr
    finally:
        holder.kill()
        holder.wait()
    assert not (tmp_path / "state").exists()


# ---- the local provider's folders: absolute, and only what ensemble made is removed ----

@pytest.mark.parametrize("value", ["", "run/ensemble", "./x", "/", "/run/../etc", "/run/ens\nemble", "~/x"])
def test_state_dir_must_be_absolute(value):
    from ensemble.providers.local import check_state_dir

    with pytest.raises(SpecError, match="^provider.local.state_dir: must be an absolute path"):
        check_state_dir(value)


def test_a_relative_state_dir_is_one_line_and_exit_2(tmp_path):
    config = tmp_path / "ensemble.toml"
    config.write_text('[fleet]\nname = "t-id-rel"\n[provider]\nkind = "local"\n[provider.local]\nstate_dir = "rel"\n')
    for args in (["fleet", "destroy", "--yes"], ["deploy"]):
        run = subprocess.run([sys.executable, "-m", "ensemble.cli", *args, "-c", str(config)], capture_output=True,
                             text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 2, run.stderr
        assert "provider.local.state_dir: must be an absolute path" in run.stderr and "Traceback" not in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ensemble.toml"]


def test_only_a_fleet_folder_ensemble_made_is_ever_deleted(tmp_path):
    from ensemble.providers.local import FLEET_MARKER, LocalProvider, claim_fleet_dir, made_by_ensemble

    mine = tmp_path / "mine"
    claim_fleet_dir(mine)
    assert (mine / FLEET_MARKER).is_file() and made_by_ensemble(mine)
    (mine / "hosts").mkdir()
    claim_fleet_dir(mine)  # idempotent
    legacy = tmp_path / "legacy"
    (legacy / "hosts").mkdir(parents=True)
    (legacy / "run").mkdir()
    assert made_by_ensemble(legacy)  # made before markers: only ensemble's own folders in it
    home = tmp_path / "home"
    (home / "hosts").mkdir(parents=True)
    (home / "notes.txt").write_text("mine, not ensemble's")
    assert not made_by_ensemble(home)
    with pytest.raises(SpecError, match="was not made by ensemble"):
        claim_fleet_dir(home)
    link = tmp_path / "link"
    link.symlink_to(mine)
    with pytest.raises(SpecError, match="not a folder ensemble made"):
        claim_fleet_dir(link)
    with pytest.raises(Exception, match="not made by ensemble"):
        LocalProvider._teardown_fleet(home, "ens-000000", None)
    assert (home / "notes.txt").read_text() == "mine, not ensemble's"
    s = spec_from_dict({"fleet": {"name": "home"}, "provider": {"kind": "local",
                                                                   "local": {"state_dir": str(tmp_path)}}})
    if os.geteuid() == 0:
        with pytest.raises(SpecError, match="nothing removed"):
            LocalProvider().destroy_all(s)
        assert (home / "notes.txt").exists() and (home / "hosts").is_dir()
