"""Two specs with one fleet name in one Scaleway project, through the real SDK and the STAND-IN API
(tests/standins/scaleway_api.py, real sshd per server): the second spec is refused by every command
before anything is touched, and the first fleet is found whole afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from standins.scaleway_env import write_spec

pytest_plugins = ("standins.scaleway_env",)  # the scw fixture

FLEET = "t-id-twin"
MUTATING = {"POST", "PATCH", "PUT", "DELETE"}


def cli(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble.cli", *args, "-c", str(config)], capture_output=True,
                          text=True, env=env or dict(os.environ), timeout=300, cwd=config.parent)


def spec_in(scw, folder: str, domain: str = "meet.example.org") -> Path:
    path = scw.tmp / folder / "ensemble.toml"
    path.parent.mkdir()
    write_spec(path, scw.tmp, name=FLEET)
    path.write_text(path.read_text().replace('domain = "meet.example.org"', f'domain = "{domain}"'))
    return path


def servers(api) -> dict:
    return {sid: (s["name"], s["state"], tuple(sorted(s["tags"]))) for sid, s in api.state.servers.items()}


def test_a_second_spec_with_the_same_name_is_refused_and_the_first_fleet_is_untouched(scw):
    first = spec_in(scw, "a")
    made = cli(first, "fleet", "scale", "2", "--hosts-only", "--json")
    assert made.returncode == 0, made.stderr
    record = json.loads((first.parent / f".ensemble/{FLEET}/identity.json").read_text())
    assert record["fleet_id"].startswith("f-") and record["account"].startswith("scaleway project ")
    for server in scw.api.state.servers.values():
        tags = set(server["tags"])
        assert {f"ensemble-fleet-id={record['fleet_id']}", "ensemble-domain=meet.example.org"} <= tags, tags
        assert any(t.startswith("ensemble-os=") for t in tags)
    before, requests = servers(scw.api), len(scw.api.requests)
    var_lib = {p: p.read_bytes() for p in scw.tmp.glob("sshd/*/var-lib/**/*") if p.is_file()}

    # another domain under the same name: refused by every command, one line, exit 2, nothing touched
    other = spec_in(scw, "b", domain="meet.other.org")
    for args in (["deploy"], ["deploy", "--allow-disruptive"], ["plan"], ["fleet", "scale", "3", "--hosts-only"],
                 ["fleet", "destroy", "--yes"], ["fleet", "drain", "1"], ["fleet", "undrain", "1"], ["upgrade"],
                 ["fleet", "list"], ["inventory"], ["status"]):
        run = cli(other, *args)
        assert run.returncode == 2, (args, run.stdout, run.stderr)
        assert run.stderr.count("\n") == 1 and "Traceback" not in run.stderr, (args, run.stderr)
        assert f"found fleet '{FLEET}' (domain meet.example.org, id {record['fleet_id']}, 3 host(s))" in run.stderr
        assert "meet.other.org" in run.stderr and "nothing changed" in run.stderr
    assert not (other.parent / ".ensemble" / FLEET / "identity.json").exists()

    # the same domain but another fleet's id (a spec that made its own fleet under this name before)
    twin = spec_in(scw, "c")
    theirs = twin.parent / ".ensemble" / FLEET / "identity.json"
    theirs.parent.mkdir(parents=True)
    theirs.write_text(json.dumps({**record, "fleet_id": "f-000000000000"}))
    run = cli(twin, "fleet", "scale", "3", "--hosts-only")
    assert run.returncode == 2 and "another fleet has this name" in run.stderr, run.stderr
    assert "this spec's fleet is id f-000000000000" in run.stderr

    # the first spec pointed at another project: refused by its record, whatever that project holds
    env = {**os.environ, "SCW_DEFAULT_PROJECT_ID": "2b7c5d6e-0000-4000-8000-00000000beef"}
    run = cli(first, "fleet", "scale", "3", "--hosts-only", env=env)
    assert run.returncode == 2 and f"lives in {record['account']}, but the spec now reaches" in run.stderr, run.stderr

    assert [r for r in scw.api.requests[requests:] if r[0] in MUTATING] == []
    assert servers(scw.api) == before
    assert {p: p.read_bytes() for p in scw.tmp.glob("sshd/*/var-lib/**/*") if p.is_file()} == var_lib

    # the first fleet, found whole by its own spec: nothing to create, then destroyed, record forgotten
    again = cli(first, "fleet", "scale", "2", "--hosts-only", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["created"] == [], again.stderr
    assert servers(scw.api) == before
    gone = cli(first, "fleet", "destroy", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert scw.api.resource_count()["servers"] == 0
    assert not (first.parent / ".ensemble" / FLEET / "identity.json").exists()
