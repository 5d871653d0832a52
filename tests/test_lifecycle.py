"""Fleet life cycle (list / scale / destroy / inventory / janitor / smoke) against the Scaleway STAND-IN.

The CLI runs as a real subprocess; the real SDK reaches the stand-in through SCW_API_URL; every
server answers SSH from a real sshd on 127.1.<pid>.x whose /var/lib is a folder of the test's own
(tests/standins/scaleway_env.py): nothing is written on this machine outside temporary folders.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ensemble import lifecycle
from ensemble.frontdoor.selection import ShardReading

pytest_plugins = ("standins.scaleway_env",)  # the scw fixture

ZERO = {"servers": 0, "ips": 0, "volumes": 0, "security_groups": 0}


def cli(scw, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ensemble.cli", *args, "-c", str(scw.config)],
                          input=stdin, capture_output=True, text=True, env=dict(os.environ), timeout=300)


def shards(api) -> list[int]:
    numbers = []
    for server in api.state.servers.values():
        numbers += [int(t.split("=")[1]) for t in server["tags"] if t.startswith("ensemble-shard=")]
    return sorted(numbers)


@pytest.mark.parametrize("faults", ["none", "429s and a failed create"])
def test_cli_scale_up_down_destroy_leaves_nothing(scw, faults):
    if faults != "none":
        scw.api.inject("POST", r"/servers$", status=429, retry_after=1, times=3)
        scw.api.inject("GET", r"/servers$", status=429, retry_after=1, times=2)
        scw.api.inject("POST", r"/servers$", status=400, nth=6, times=None,
                       body={"type": "invalid_arguments", "message": "injected failure"})
        failed = cli(scw, "fleet", "scale", "5", "--hosts-only")
        assert failed.returncode == 1, failed.stderr
        assert "1 of 6 host(s) failed" in failed.stderr and "run the same command again" in failed.stderr
        assert "Traceback" not in failed.stderr
        assert len(scw.api.state.servers) == 5 and len(scw.api.state.ips) == 5
    up = cli(scw, "fleet", "scale", "5", "--hosts-only", "--json")
    assert up.returncode == 0, up.stderr
    assert shards(scw.api) == [1, 2, 3, 4, 5] and len(scw.api.state.servers) == 6
    again = cli(scw, "fleet", "scale", "5", "--hosts-only", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["created"] == []
    assert len(scw.api.state.servers) == 6

    # The stand-in front door never refreshed (no view of the shards): nothing is assumed, shards 3-5
    # are drained first; these stand-in servers run no shard, so emptiness can never be confirmed:
    # nothing is removed and the error says so. The drain flags and the size record land in each
    # server's own /var/lib (a temporary folder), never this machine's.
    machine_state = Path("/var/lib/ensemble/state.json")
    before = machine_state.stat() if machine_state.exists() else None
    refused = cli(scw, "fleet", "scale", "2", "--hosts-only", "--timeout", "1")
    assert refused.returncode == 1, refused.stderr
    assert "drain: timeout after 1s" in refused.stderr and "unreadable" in refused.stderr
    assert "--force" in refused.stderr and "Traceback" not in refused.stderr
    assert len(scw.api.state.servers) == 6
    flags = sorted(scw.tmp.glob("sshd/*/var-lib/ensemble/state.json"))
    assert len(flags) == 3 and all(json.loads(f.read_text())["drain"] is True for f in flags), flags
    records = sorted(scw.tmp.glob("sshd/*/var-lib/ensemble/fleet-size.json"))
    assert [json.loads(r.read_text()) for r in records] == [{"shards": 2, "spec_shards": 2}], records
    after = machine_state.stat() if machine_state.exists() else None
    assert (before and (before.st_ino, before.st_mtime_ns)) == (after and (after.st_ino, after.st_mtime_ns))
    down = cli(scw, "fleet", "scale", "2", "--hosts-only", "--force", "--json")
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["removed"] == [f"demo-{n}.meet.example.org" for n in (5, 4, 3)]
    assert shards(scw.api) == [1, 2]
    assert scw.api.resource_count() == {"servers": 3, "ips": 3, "volumes": 3, "security_groups": 2}

    listed = json.loads(cli(scw, "fleet", "list", "--json").stdout)
    assert [(r["role"], r["shard"]) for r in listed] == [("frontdoor", None), ("shard", 1), ("shard", 2)]
    inventory = json.loads(cli(scw, "inventory", "--json").stdout)
    data = inventory["hosts"]["demo-1.meet.example.org"]
    from standins.scaleway_env import ADDRESS_PREFIX

    assert data["ssh_hostname"].startswith(ADDRESS_PREFIX) and data["ssh_strict_host_key_checking"] == "yes"
    assert inventory["groups"]["frontdoor"] == ["meet.example.org"]

    no = cli(scw, "fleet", "destroy", stdin="n\n")
    assert no.returncode == 1 and len(scw.api.state.servers) == 3
    gone = cli(scw, "fleet", "destroy", "--yes")
    assert gone.returncode == 0, gone.stderr
    assert scw.api.resource_count() == ZERO


def test_pyinfra_inventory_function_reaches_the_hosts(scw, monkeypatch):
    scw.provider().ensure_hosts(scw.spec.with_shards(1))
    monkeypatch.setenv("ENSEMBLE_CONFIG", str(scw.config))
    from ensemble.inventory import scaleway

    groups = scaleway()
    assert [name for name, _ in groups["shards"]] == ["demo-1.meet.example.org"]
    run = subprocess.run([os.path.join(os.path.dirname(sys.executable), "pyinfra"), "-y",
                          "ensemble.inventory:scaleway", "exec", "--", "echo", "reached-$(hostname)"],
                         capture_output=True, text=True, env=dict(os.environ), timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    assert (run.stdout + run.stderr).count("reached-") >= 2
    scw.provider().destroy_all(scw.spec)
    assert scw.api.resource_count() == ZERO


def _iso(delta: timedelta) -> str:
    return (datetime.now(UTC) - delta).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_janitor_deletes_only_old_smoke_resources_exactly_those_it_listed(scw):
    old, young = _iso(timedelta(hours=3)), _iso(timedelta(minutes=5))
    api = scw.api
    smoke = ["ensemble", "ensemble-fleet=demo-smoke-aaa", "ensemble-smoke", f"ensemble-created={old}"]
    with api.lock:
        group = {"id": "5e5e5e5e-0000-4000-8000-000000000001", "name": "ensemble-demo-smoke-aaa", "tags": smoke,
                 "rules": [], "stateful": True, "zone": "fr-par-1", "project": api.project_id, "servers": [],
                 "inbound_default_policy": "drop", "outbound_default_policy": "accept",
                 "creation_date": (datetime.now(UTC) - timedelta(hours=3)).isoformat()}
        api.state.security_groups[group["id"]] = group  # an old single group (fleets made before groups per role)
        role_group = {**group, "id": "5e5e5e5e-0000-4000-8000-000000000002", "name": "ensemble-demo-smoke-aaa-shard",
                      "tags": [*smoke, "ensemble-role=shard"], "rules": []}  # and a role's group, unused
        api.state.security_groups[role_group["id"]] = role_group
        its_ip = api._new_ip({"tags": smoke}, "fr-par-1")
        leaked = api._new_server({"name": "demo-smoke-aaa-1", "commercial_type": "PRO2-XXS", "tags": smoke,
                                  "image": api._images()[0]["id"], "volumes": {"0": {"size": 20_000_000_000}},
                                  "public_ips": [its_ip["id"]], "security_group": group["id"]}, "fr-par-1")
        orphan = api._new_ip({"tags": ["ensemble", "ensemble-smoke", f"ensemble-created={old}"]}, "fr-par-1")
        api._new_ip({"tags": ["ensemble", "ensemble-fleet=prod", f"ensemble-created={old}"]}, "fr-par-1")
    its_volume = next(iter(leaked["volumes"].values()))["id"]
    api.add_foreign_server("demo-smoke-bbb-1", ["ensemble", "ensemble-smoke", f"ensemble-created={young}"])
    api.add_foreign_server("prod-1", ["ensemble", "ensemble-fleet=prod", f"ensemble-created={old}"])
    api.add_foreign_server("someone-elses", [], created=old)
    listed = lifecycle.janitor(scw.spec, "2h", dry_run=True, provider=scw.provider())
    assert listed == ["server demo-smoke-aaa-1", f"ip {its_ip['address']} (of demo-smoke-aaa-1)",
                      f"volume {its_volume} (of demo-smoke-aaa-1)", f"ip {orphan['address']}",
                      "security group ensemble-demo-smoke-aaa", "security group ensemble-demo-smoke-aaa-shard"]
    assert len(api.state.servers) == 4
    run = cli(scw, "janitor", "--older-than", "2h", stdin="y\n")  # asked, answered yes
    assert run.returncode == 0, run.stderr
    assert ", ".join(listed) + "?" in run.stderr  # the question named every one of them
    assert run.stdout.strip() == f"janitor: deleted {len(listed)} resource(s): {', '.join(listed)}"
    names = sorted(s["name"] for s in api.state.servers.values())
    assert names == ["demo-smoke-bbb-1", "prod-1", "someone-elses"]
    assert leaked["id"] not in api.state.servers and orphan["id"] not in api.state.ips
    assert its_ip["id"] not in api.state.ips and its_volume not in api.state.volumes
    assert group["id"] not in api.state.security_groups and role_group["id"] not in api.state.security_groups
    assert len(api.state.ips) == 1
    assert cli(scw, "janitor", "--older-than", "2h", "--yes").stdout.strip() == "janitor: deleted 0 resource(s)"
    assert cli(scw, "janitor", "--older-than", "soon", "--yes").returncode == 2


def test_janitor_deletes_nothing_when_more_would_go_than_was_confirmed(scw):
    old = _iso(timedelta(hours=3))
    with scw.api.lock:
        first = scw.api._new_ip({"tags": ["ensemble", "ensemble-smoke", f"ensemble-created={old}"]}, "fr-par-1")
    shown = lifecycle.janitor(scw.spec, "2h", dry_run=True, provider=scw.provider())
    assert shown == [f"ip {first['address']}"]
    with scw.api.lock:  # leaked meanwhile (an answer that took a while)
        scw.api._new_ip({"tags": ["ensemble", "ensemble-smoke", f"ensemble-created={old}"]}, "fr-par-1")
    with pytest.raises(lifecycle.EnsembleError, match="1 resource.*not in the list you confirmed.*nothing deleted"):
        lifecycle.janitor(scw.spec, "2h", provider=scw.provider(), confirmed=shown)
    assert len(scw.api.state.ips) == 2


def test_smoke_destroys_in_all_cases(scw):
    calls = []

    def deploy(spec, provider, hosts, progress):
        calls.append((spec.fleet.name, [h.role for h in hosts]))
        assert spec.tls.staging or spec.tls.mode != "letsencrypt"
        assert all("ensemble-smoke" in s["tags"] for s in scw.api.state.servers.values())
        return []

    passed = lifecycle.smoke(scw.spec, provider=None, deploy=deploy, checks=lambda spec, hosts: [], suffix="t1")
    assert passed.ok and passed.destroyed and calls == [("demo-smoke-t1", ["shard"])]
    assert scw.api.resource_count() == ZERO

    failed = lifecycle.smoke(scw.spec, deploy=deploy, checks=lambda spec, hosts: ["/: 502"], suffix="t2")
    assert not failed.ok and failed.failures == ["/: 502"] and failed.destroyed
    assert scw.api.resource_count() == ZERO

    def interrupted(spec, provider, hosts, progress):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        lifecycle.smoke(scw.spec, deploy=interrupted, suffix="t3")
    assert scw.api.resource_count() == ZERO

    kept = lifecycle.smoke(scw.spec, keep=True, deploy=deploy, checks=lambda spec, hosts: [], suffix="t4")
    assert kept.ok and kept.kept and len(scw.api.state.servers) == 1
    assert lifecycle.janitor(scw.spec, "1h", dry_run=True, provider=scw.provider()) == []  # too young
    listed = lifecycle.janitor(scw.spec, "0s", dry_run=True, provider=scw.provider())
    assert listed[0] == "server demo-smoke-t4-1.meet.example.org"  # with its IP, its volume and its fleet's group
    assert [line.split()[0] for line in listed] == ["server", "ip", "volume", "security"]
    assert listed[-1] == "security group ensemble-demo-smoke-t4-shard"  # its role's group (smoke: shards only)
    lifecycle.destroy_fleet(lifecycle.throwaway_spec(scw.spec, "t4"), yes=True, provider=scw.provider())
    assert scw.api.resource_count() == ZERO


def test_scale_uses_the_drain_hook_when_not_forced(scw):
    provider = scw.provider()
    lifecycle.scale_fleet(scw.spec, 4, provider=provider, deploy=False)
    drained = []
    # the front door read shards 2 and 3 (they may hold meetings: drained first); never shard 4
    view = {"memory": {"shards": {scw.spec.shard_name(n): {"last_ok": 1.0} for n in (1, 2, 3)}}}
    lifecycle.scale_fleet(scw.spec, 1, provider=provider, deploy=False, frontdoor_view=lambda door: view,
                          read_shard=lambda host: ShardReading(name=host.name, ok=False, error="unreachable"),
                          drain_and_wait=lambda spec, hosts, timeout: drained.extend(h.shard for h in hosts))
    assert drained == [3, 2] and shards(scw.api) == [1]
    for count in (0, 1001):
        with pytest.raises(lifecycle.UsageError, match="COUNT: must be between 1 and 1000"):
            lifecycle.scale_fleet(scw.spec, count, provider=provider)
    lifecycle.destroy_fleet(scw.spec, yes=True, provider=provider)
    assert scw.api.resource_count() == ZERO


def test_parse_duration():
    assert lifecycle.parse_duration("2h") == 7200 and lifecycle.parse_duration("90s") == 90
    with pytest.raises(lifecycle.UsageError, match="--older-than"):
        lifecycle.parse_duration("2 hours")


@pytest.mark.realhost
def test_smoke_with_the_local_provider_reaches_and_destroys_its_hosts():
    from conftest import local_spec, ssh_run

    from ensemble.providers.local import LocalProvider

    spec = local_spec("t-lifecycle")
    reached = []

    def checks(test_spec, hosts):
        for host in hosts:
            code, out, _ = ssh_run(host, "hostname")
            reached.append((host.role, code))
        return []

    result = lifecycle.smoke(spec, deploy=lambda *args: [], checks=checks, suffix="a1")
    assert result.ok and result.destroyed, result.failures
    assert ("shard", 0) in reached
    assert LocalProvider().list_hosts(lifecycle.throwaway_spec(spec, "a1")) == []


def test_janitor_tags_must_all_match_though_the_block_api_lists_any(scw):
    old = _iso(timedelta(hours=3))
    with scw.api.lock:
        for ident, tags in (("0f0f0f0f-0000-4000-8000-000000000001", ["ensemble-smoke"]),
                            ("0f0f0f0f-0000-4000-8000-000000000002", ["ensemble-smoke", "ci-run-1"])):
            scw.api.state.volumes[ident] = {
                "id": ident, "name": "leaked", "type": "sbs_5k", "size": 10_000_000_000, "status": "available",
                "tags": ["ensemble", *tags, f"ensemble-created={old}"], "zone": "fr-par-1",
                "project_id": scw.api.project_id, "created_at": old, "references": []}
    listed = lifecycle.janitor(scw.spec, "2h", ("ci-run-1",), dry_run=True, provider=scw.provider())
    assert listed == ["volume 0f0f0f0f-0000-4000-8000-000000000002"]


def test_hosts_file_names_the_front_door_by_the_domain_and_each_shards_turn_name():
    from dataclasses import replace

    from ensemble.spec import default_spec

    spec = default_spec()
    rows = [{"name": spec.fleet.domain, "role": "frontdoor", "address": "10.151.42.10"},
            {"name": spec.shard_name(1), "role": "shard", "address": "10.151.42.11"},
            {"name": spec.shard_name(2), "role": "shard", "address": None}]
    lines = lifecycle.hosts_file(spec, rows).splitlines()
    assert lines == [f"10.151.42.10 {spec.fleet.domain}",
                     f"10.151.42.11 {spec.shard_name(1)} turn-{spec.shard_name(1)}"]
    no_turn = replace(spec, turn=replace(spec.turn, enabled=False))
    assert lifecycle.hosts_file(no_turn, rows[1:2]) == f"10.151.42.11 {spec.shard_name(1)}"
