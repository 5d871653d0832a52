"""A fleet knows who it is, on real hosts (local provider): two specs with one fleet name, two first
deploys at once, a disruptive change, as a user runs them with the real CLI.

1. Two `ensemble deploy` of a new fleet start together: one deploys, the other waits for the fleet
   lock (`--wait-lock`) and then changes nothing (one secret set); a third without `--wait-lock`
   stops at once saying who holds the lock.
2. A second spec with the same fleet name and another domain is refused by every command, one line
   naming the fleet found, exit 2, before any host is touched.
3. The first spec with another TLS mode: `plan` names the disruptive change, `deploy` refuses it
   without `--allow-disruptive`.
4. The first fleet's next deploy changes nothing; destroy removes it and its identity record.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import local_spec_toml, ssh_run

pytestmark = [pytest.mark.realhost, pytest.mark.slow]

FLEET = "t-id-twin"
ROOT = Path(__file__).resolve().parents[1]


def spec_text(domain: str, tls: str = "self-signed") -> str:
    return local_spec_toml(FLEET, 1, domain=domain, tls=tls,
                           tail='[etherpad]\nsource_url = "npm:ep_etherpad-lite@1.8.14"\n')


def start(config: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ensemble.cli", *args, "-c", str(config)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run(config: Path, *args: str, timeout: float = 1500) -> tuple[int, str, str]:
    proc = start(config, *args)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_two_specs_with_one_name_on_real_hosts(local_provider, tmp_path, monkeypatch):
    from ensemble.fleetlock import lock_path
    from ensemble.paths import FLEET_ID_FILE, SECRETS_FILE
    from ensemble.spec import load_spec

    first = tmp_path / "a" / "ensemble.toml"
    first.parent.mkdir()
    first.write_text(spec_text(f"{FLEET}.test"))
    spec = load_spec(first)
    local_provider.destroy_all(spec)  # what an earlier run left
    record = first.parent / ".ensemble" / FLEET / "identity.json"
    try:
        # 1. two first deploys at once (and a third that does not wait)
        one = start(first, "deploy", "--json", "--wait-lock", "1500")
        lock = lock_path(FLEET, "local")
        for _ in range(600):
            if lock.exists() and lock.read_text().strip():
                break
            time.sleep(0.1)
        note = json.loads(lock.read_text())
        two = start(first, "deploy", "--json", "--wait-lock", "1500")
        code, _, err = run(first, "deploy")
        assert code == 2 and err.count("\n") == 1, err
        assert f"fleet '{FLEET}' is locked by" in err and f"pid {note['pid']}" in err and "since " in err
        results = []
        for proc in (one, two):
            out, err = proc.communicate(timeout=1500)
            assert proc.returncode == 0, err[-3000:]
            data = json.loads(out)
            changes = {name: h["changes"] for name, h in data["hosts"].items() if h["changed"]}
            results.append((data["changed"], err, changes))
        waiter = min(results, key=lambda r: r[0])
        assert waiter[0] == 0, waiter[2]  # the waiter found it all done: one secret set
        assert "is locked by" in waiter[1] and "waiting up to" in waiter[1], waiter[1][-2000:]
        identity = json.loads(record.read_text())
        hosts = local_provider.list_hosts(spec)
        assert len(hosts) == 2
        for host in hosts:
            assert host.labels["ensemble-fleet-id"] == identity["fleet_id"]
            code, out, _ = ssh_run(host, f"cat {FLEET_ID_FILE}; echo; cat {SECRETS_FILE}")
            kept_id, _, secrets = out.partition("\n")
            assert json.loads(kept_id)["fleet_id"] == identity["fleet_id"]
            assert json.loads(secrets)["fleet"]["fleet_id"] == identity["fleet_id"]

        # 2. a second spec, same name, another domain: refused everywhere, nothing touched
        other = tmp_path / "b" / "ensemble.toml"
        other.parent.mkdir()
        other.write_text(spec_text("t-id-other.test"))
        for args in (["deploy"], ["plan"], ["status"], ["fleet", "list"], ["fleet", "scale", "2"],
                     ["fleet", "drain", "1"], ["upgrade"], ["fleet", "destroy", "--yes"]):
            code, _, err = run(other, *args, timeout=300)
            assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, (args, err)
            assert f"found fleet '{FLEET}' (domain {FLEET}.test, id {identity['fleet_id']}, 2 host(s))" in err, err
        assert not (other.parent / ".ensemble").exists()
        assert len(local_provider.list_hosts(spec)) == 2

        # 3. the first spec with another TLS mode: plan names it, deploy needs the flag
        moved = first.parent / "letsencrypt.toml"
        moved.write_text(spec_text(f"{FLEET}.test", tls="letsencrypt"))
        code, out, err = run(moved, "plan", "--json")
        assert code in (0, 1) and out, err[-2000:]
        notes = json.loads(out)["notes"]
        assert any(n.startswith("DISRUPTIVE: TLS mode: self-signed -> letsencrypt") for n in notes), notes
        code, _, err = run(moved, "deploy")
        assert code == 2 and "--allow-disruptive" in err and "TLS mode" in err, err

        # 4. the first fleet is untouched: its next deploy changes nothing; destroy forgets it
        code, out, err = run(first, "deploy", "--json")
        assert code == 0, err[-3000:]
        changed = {name: h["changes"] for name, h in json.loads(out)["hosts"].items() if h["changed"]}
        assert not changed, changed
        code, _, err = run(first, "fleet", "destroy", "--yes", timeout=600)
        assert code == 0, err
        assert not record.exists() and not local_provider.fleet_dir(spec).exists()
    finally:
        local_provider.destroy_all(spec)
