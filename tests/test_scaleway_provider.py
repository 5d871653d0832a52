"""The Scaleway provider against the STAND-IN API (real SDK over HTTP, real sshd per server)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ensemble import paths
from ensemble.errors import EnsembleError, UsageError
from ensemble.publicports import public_ports

pytest_plugins = ("standins.scaleway_env",)  # the scw fixture


def test_both_providers_implement_the_whole_protocol_with_its_signatures():
    import inspect

    from ensemble.providers.base import Provider
    from ensemble.providers.local import LocalProvider
    from ensemble.providers.scaleway import ScalewayProvider

    methods = [name for name, value in vars(Provider).items() if inspect.isfunction(value) and not name.startswith("_")]
    assert {"list_hosts", "ensure_hosts", "destroy", "destroy_all", "janitor", "deploy_environment"} <= set(methods)
    for provider in (LocalProvider, ScalewayProvider):
        assert isinstance(provider.name, str)
        for name in methods:
            wanted = inspect.signature(getattr(Provider, name))
            found = inspect.signature(getattr(provider, name))
            assert [(p.name, p.kind) for p in found.parameters.values()] == [
                (p.name, p.kind) for p in wanted.parameters.values()], f"{provider.__name__}.{name}"


def test_scaleway_deploys_with_the_spec_as_it_is(scw):
    from ensemble.providers.base import DeployEnv

    assert scw.provider().deploy_environment(scw.spec) == DeployEnv(spec=scw.spec)


def zero(api) -> dict:
    return {"servers": 0, "ips": 0, "volumes": 0, "security_groups": 0}


def _assert_one_group_per_role(api, spec, hosts) -> None:
    """Each role's group lets in exactly what its host firewall opens (public_ports), and each server is
    in its role's group: the front door has no UDP rule at all."""
    groups = {g["name"]: g for g in api.state.security_groups.values() if not g.get("project_default")}
    assert sorted(groups) == ["ensemble-demo-frontdoor", "ensemble-demo-shard"]
    for role in ("frontdoor", "shard"):
        group = groups[f"ensemble-demo-{role}"]
        assert group["stateful"] and group["inbound_default_policy"] == "drop"
        assert {"ensemble-fleet=demo", f"ensemble-role={role}"} <= set(group["tags"])
        tcp, udp = public_ports(role, spec)
        want = set()
        for protocol, ports in (("tcp", tcp), ("udp", udp)):
            for port in ports:
                first, last = (port, port) if isinstance(port, int) else map(int, port.split("-"))
                want |= {(protocol, first, last, "0.0.0.0/0"), (protocol, first, last, "::/0")}
        want |= {("tcp", 22, 22, cidr) for cidr in spec.provider.scaleway.ssh_allowed_cidrs}
        if role == "shard":  # the occupancy port: each shard's nftables narrows it to the front door
            want |= {("tcp", paths.OCCUPANCY_PORT, paths.OCCUPANCY_PORT, "0.0.0.0/0"),
                     ("tcp", paths.OCCUPANCY_PORT, paths.OCCUPANCY_PORT, "::/0")}
        got = [(r["protocol"], r["dest_port_from"], r["dest_port_to"], r["ip_range"]) for r in group["rules"]]
        assert len(got) == len(set(got)) and set(got) == want, role
        assert all(r["action"] == "accept" and r["direction"] == "inbound" for r in group["rules"])
    door = {(r["protocol"], r["dest_port_from"]) for r in groups["ensemble-demo-frontdoor"]["rules"]}
    assert door == {("tcp", 80), ("tcp", 443), ("tcp", 22)}  # no UDP 10000, no TURN ports
    shard = {(r["protocol"], r["dest_port_from"], r["dest_port_to"]) for r in groups["ensemble-demo-shard"]["rules"]}
    assert {("udp", 10000, 10000), ("udp", 3478, 3478), ("tcp", 3478, 3478), ("udp", 49152, 49999)} <= shard
    for host in hosts:
        assert api.state.servers[host.provider_id]["security_group"]["id"] == groups[f"ensemble-demo-{host.role}"]["id"]


def test_an_old_single_group_fleet_moves_each_server_to_its_role_group(scw):
    """A fleet made before groups per role (every server in "ensemble-demo") keeps its servers running; a
    deploy moves each to its role's group without a restart and deletes the old group; destroy leaves nothing."""
    hosts = scw.provider().ensure_hosts(scw.spec)
    api = scw.api
    with api.lock:  # as an older ensemble left it: one group for all, with the shards' media ports
        old = {"id": "5e5e5e5e-0000-4000-8000-0000000000aa", "name": "ensemble-demo", "tags": ["ensemble",
               "ensemble-fleet=demo"], "rules": [{"id": "r1", "protocol": "udp", "dest_port_from": 10000,
               "dest_port_to": 10000, "ip_range": "0.0.0.0/0", "action": "accept", "direction": "inbound"}],
               "stateful": True, "zone": "fr-par-1", "project": api.project_id, "inbound_default_policy": "drop",
               "outbound_default_policy": "accept", "creation_date": "2026-01-01T00:00:00+00:00", "servers": []}
        api.state.security_groups[old["id"]] = old
        for group in [g for g in api.state.security_groups.values() if g["name"] != "ensemble-demo"]:
            del api.state.security_groups[group["id"]]
        for server in api.state.servers.values():
            server["security_group"] = {"id": old["id"], "name": old["name"]}
    actions = sum(1 for m, p, _ in api.requests if m == "POST" and p.endswith("/action"))
    again = scw.provider().ensure_hosts(scw.spec)
    assert [h.provider_id for h in again] == [h.provider_id for h in hosts]
    assert all(api.state.servers[h.provider_id]["state"] == "running" for h in again)
    assert sum(1 for m, p, _ in api.requests if m == "POST" and p.endswith("/action")) == actions  # no restart
    assert old["id"] not in api.state.security_groups
    _assert_one_group_per_role(api, scw.spec, again)
    patches = sum(1 for m, p, _ in api.requests if m == "PATCH" and "/servers/" in p and "user_data" not in p)
    scw.provider().ensure_hosts(scw.spec)  # moved once: a second deploy moves nothing
    assert sum(1 for m, p, _ in api.requests if m == "PATCH" and "/servers/" in p and "user_data" not in p) == patches
    scw.provider().destroy_all(scw.spec)
    assert api.resource_count() == zero(api)


def test_destroy_removes_both_role_groups_and_an_old_single_group(scw):
    hosts = scw.provider().ensure_hosts(scw.spec)
    with scw.api.lock:  # a leftover old single group, unused
        scw.api.state.security_groups["5e5e5e5e-0000-4000-8000-0000000000bb"] = {
            "id": "5e5e5e5e-0000-4000-8000-0000000000bb", "name": "ensemble-demo", "rules": [],
            "tags": ["ensemble", "ensemble-fleet=demo"], "stateful": True, "zone": "fr-par-1",
            "project": scw.api.project_id, "creation_date": "2026-01-01T00:00:00+00:00", "servers": []}
    assert scw.api.resource_count()["security_groups"] == 3
    scw.provider().destroy(scw.spec, hosts)
    assert scw.api.resource_count() == zero(scw.api)


def test_create_is_tagged_and_idempotent_then_destroy_leaves_nothing(scw):
    provider = scw.provider()
    hosts = provider.ensure_hosts(scw.spec)
    assert [(h.role, h.shard) for h in hosts] == [("frontdoor", None), ("shard", 1), ("shard", 2)]
    assert scw.api.resource_count() == {"servers": 3, "ips": 3, "volumes": 3, "security_groups": 2}
    for server in scw.api.state.servers.values():
        assert {"ensemble", "ensemble-fleet=demo"} <= set(server["tags"])
        assert any(t.startswith("ensemble-created=") for t in server["tags"])
        assert server["state"] == "running"
    for item in [*scw.api.state.ips.values(), *scw.api.state.volumes.values()]:
        assert "ensemble-fleet=demo" in item["tags"] and any(t.startswith("ensemble-role=") for t in item["tags"])
    user_data = next(iter(scw.api.state.user_data.values()))
    assert isinstance(user_data, bytes) and user_data.startswith(b"#cloud-config")
    assert b"ops@test" in user_data
    _assert_one_group_per_role(scw.api, scw.spec, hosts)
    known = (scw.tmp / "state/ensemble/demo/known_hosts").read_text().splitlines()
    assert len(known) == 3
    posts = sum(1 for m, p, _ in scw.api.requests if m == "POST" and p.endswith("/servers"))
    again = scw.provider().ensure_hosts(scw.spec)  # second run: nothing created, strict SSH check passes
    assert [h.provider_id for h in again] == [h.provider_id for h in hosts]
    assert sum(1 for m, p, _ in scw.api.requests if m == "POST" and p.endswith("/servers")) == posts
    provider.destroy(scw.spec, again)
    assert scw.api.resource_count() == zero(scw.api)
    assert (scw.tmp / "state/ensemble/demo/known_hosts").read_text() == ""


def test_changed_host_key_is_refused_naming_the_host(scw):
    spec = scw.spec.with_shards(1)
    provider = scw.provider()
    hosts = provider.ensure_hosts(spec)
    shard = next(h for h in hosts if h.role == "shard")
    scw.farm.rekey(shard.address)
    with pytest.raises(EnsembleError, match=f"{shard.name}.*host key changed"):
        scw.provider().ensure_hosts(spec)
    provider.destroy(spec, hosts)
    assert scw.api.resource_count() == zero(scw.api)


def test_retries_429_and_5xx_and_html_then_succeeds(scw):
    spec = scw.spec.with_shards(1)
    scw.api.inject("POST", r"/servers$", status=429, retry_after=1, times=2)
    scw.api.inject("POST", r"/ips$", status=500, times=1)
    scw.api.inject("GET", r"/servers/[^/]+$", status=502, html=True, times=2)
    provider = scw.provider()
    hosts = provider.ensure_hosts(spec)
    assert len(hosts) == 2 and len(scw.api.state.servers) == 2
    assert sum(1 for _, _, s in scw.api.requests if s == 429) == 2
    provider.destroy(spec, hosts)
    assert scw.api.resource_count() == zero(scw.api)


def test_failed_create_keeps_and_reports_made_hosts_rerun_completes(scw):
    spec = scw.spec.with_shards(4)
    # The 3rd server create fails for good (a validation error is not retried).
    scw.api.inject("POST", r"/servers$", status=400, nth=3,
                   body={"type": "invalid_arguments", "message": "injected failure"})
    provider = scw.provider()
    with pytest.raises(EnsembleError, match=r"1 of 5 host\(s\) failed.*created and kept") as info:
        provider.ensure_hosts(spec)
    assert "run the same command again" in str(info.value)
    assert len(scw.api.state.servers) == 4
    assert len(scw.api.state.ips) == 4  # the failed host's IP was deleted, not leaked
    hosts = scw.provider().ensure_hosts(spec)
    assert sorted(h.shard or 0 for h in hosts) == [0, 1, 2, 3, 4]
    provider.destroy(spec, hosts)
    assert scw.api.resource_count() == zero(scw.api)


def test_quota_error_is_one_line_naming_the_quota_and_how_to_raise_it(scw):
    scw.api.quotas["servers"] = 1
    provider = scw.provider()
    with pytest.raises(EnsembleError) as info:
        provider.ensure_hosts(scw.spec.with_shards(1))
    message = str(info.value)
    assert "\n" not in message and "run the same command again" not in message
    assert "1 of 2 host(s) not created" in message and "created and kept (tagged)" in message
    assert "quota reached: instances_servers (limit 1, in use 1)" in message
    assert "Organization > Quotas" in message and "fleet.shards" in message
    posts = [r for r in scw.api.requests if r[0] == "POST" and r[1].endswith("/servers")]
    assert len(posts) == 2  # no retry of a quota error: one per host
    assert len(scw.api.state.ips) == 1  # the host that could not be made left no IP behind
    provider.destroy(scw.spec, provider.list_hosts(scw.spec))
    assert scw.api.resource_count() == zero(scw.api)


def test_permission_denied_points_at_the_api_key_and_its_iam_policy(scw):
    from standins.scaleway_env import PROJECT_ID

    scw.api.inject("POST", r"/ips$", status=403, times=None, body={
        "type": "permissions_denied", "message": "insufficient permissions",
        "details": [{"resource": "instance_ip", "action": "create"}]})
    with pytest.raises(UsageError) as info:
        scw.provider().ensure_hosts(scw.spec.with_shards(1))
    message = str(info.value)
    assert message.startswith("SCW_ACCESS_KEY: Scaleway denied this API key the right to create")
    assert "(denied: create instance_ip)" in message and "InstancesFullAccess" in message
    assert f"project {PROJECT_ID}" in message and "IAM > Policies" in message and "\n" not in message
    assert len([r for r in scw.api.requests if r[1].endswith("/ips") and r[2] == 403]) == 2  # not retried
    assert scw.api.resource_count()["servers"] == 0


def test_ssh_timeout_names_each_host_once(scw, tmp_path):
    from standins.scaleway_env import ADDRESS_PREFIX, write_spec

    from ensemble.spec import load_spec

    path = write_spec(tmp_path / "t.toml", tmp_path, shards=1)
    path.write_text(path.read_text().replace("ssh_timeout = 30", "ssh_timeout = 2"))
    spec = load_spec(path)
    scw.api.on_running = None  # the servers run, but nothing answers SSH
    with pytest.raises(EnsembleError) as info:
        scw.provider(spec).ensure_hosts(spec)
    message = str(info.value)
    parts = message.removeprefix("not ready: ").split("; ")
    assert [p.split(": ")[0] for p in parts] == [spec.fleet.domain, spec.shard_name(1)], message
    for part in parts:  # each names its host once and its address once
        name, _, why = part.partition(": ")
        assert name not in why and why.count(ADDRESS_PREFIX) == 1, message
        assert why.startswith(f"SSH on {ADDRESS_PREFIX}") and "not ready after 2s (last try: " in why, message
    scw.provider(spec).destroy_all(spec)


def test_unknown_image_names_label_zone_and_type(scw, tmp_path):
    from standins.scaleway_env import write_spec

    from ensemble.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "bad.toml", tmp_path, extra='image = "debian_potato"'))
    with pytest.raises(UsageError, match="debian_potato.*fr-par-1.*PRO2-S"):
        scw.provider(spec).ensure_hosts(spec)
    assert scw.api.resource_count()["servers"] == 0


def test_bad_credentials(scw, monkeypatch):
    monkeypatch.setenv("SCW_SECRET_KEY", "not-a-uuid")
    with pytest.raises(UsageError, match="^SCW_SECRET_KEY / secret_key .*malformed") as info:
        scw.provider()
    assert "not-a-uuid" not in str(info.value)
    monkeypatch.delenv("SCW_ACCESS_KEY")
    with pytest.raises(UsageError, match="^SCW_ACCESS_KEY: Scaleway credentials missing"):
        scw.provider()
    monkeypatch.setenv("SCW_ACCESS_KEY", "SCWTESTSTANDIN000001")
    monkeypatch.setenv("SCW_SECRET_KEY", "99999999-2222-4333-8444-555555555555")  # well formed, wrong
    with pytest.raises(UsageError, match="rejected the credentials"):
        scw.provider().list_hosts(scw.spec)


def test_profile_from_scw_config_file(scw, monkeypatch, tmp_path):
    from standins.scaleway_env import ACCESS_KEY, PROJECT_ID, SECRET_KEY, write_spec

    from ensemble.spec import load_spec

    for key in ("SCW_ACCESS_KEY", "SCW_SECRET_KEY", "SCW_DEFAULT_PROJECT_ID"):
        monkeypatch.delenv(key)
    config = tmp_path / "scw.yaml"
    config.write_text(f"profiles:\n  ops:\n    access_key: {ACCESS_KEY}\n    secret_key: {SECRET_KEY}\n"
                      f"    default_project_id: {PROJECT_ID}\n")
    monkeypatch.setenv("SCW_CONFIG_PATH", str(config))
    spec = load_spec(write_spec(tmp_path / "p.toml", tmp_path, extra='profile = "ops"'))
    assert scw.provider(spec).list_hosts(spec) == []
    spec = load_spec(write_spec(tmp_path / "q.toml", tmp_path, extra='profile = "nope"'))
    with pytest.raises(UsageError, match="provider.scaleway.profile: no profile 'nope'.*profiles: ops"):
        scw.provider(spec)


def test_slow_api_times_out_and_is_retried(scw, tmp_path):
    from standins.scaleway_env import write_spec

    from ensemble.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "slow.toml", tmp_path, shards=1, api_timeout=1))
    scw.api.inject("GET", r"/servers$", status=0, delay=6, times=1)  # hangs longer than api_timeout
    provider = scw.provider(spec)
    assert provider.list_hosts(spec) == []
    assert len([r for r in scw.api.requests if r[0] == "GET" and r[1].endswith("/servers")]) == 1  # the retry
    scw.api.inject("GET", r"/servers$", status=0, delay=3, times=None)
    with pytest.raises(EnsembleError, match="list servers: timed out.*gave up after 5 attempts"):
        provider.list_hosts(spec)


def test_ipv6_hosts_get_two_routed_ips_and_lose_both(scw, tmp_path):
    from standins.scaleway_env import ADDRESS_PREFIX, write_spec

    from ensemble.spec import load_spec

    spec = load_spec(write_spec(tmp_path / "v6.toml", tmp_path, shards=1, extra="ipv6 = true"))
    provider = scw.provider(spec)
    hosts = provider.ensure_hosts(spec)
    assert all(h.ipv6 and ":" in h.ipv6 and h.address.startswith(ADDRESS_PREFIX) for h in hosts)
    assert sorted(ip["type"] for ip in scw.api.state.ips.values()) == ["routed_ipv4"] * 2 + ["routed_ipv6"] * 2
    provider.destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def test_cloud_init_carries_the_host_key_made_here_and_no_other_type():
    import yaml

    from ensemble.cloudinit import user_data
    from ensemble.providers.hostkeys import generate_host_key

    key = generate_host_key()
    assert key.private not in repr(key) and key.public.startswith("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5")
    doc = yaml.safe_load(user_data("ssh-ed25519 AAAA ops: #x", "demo-1.meet.example.org", key.public, key.private))
    assert doc["ssh_keys"] == {"ed25519_private": key.private, "ed25519_public": key.public}
    assert doc["ssh_genkeytypes"] == [] and doc["ssh_deletekeys"] is True
    assert "ssh_keys" not in yaml.safe_load(user_data("ssh-ed25519 AAAA ops", "demo-1.meet.example.org"))


def test_host_keys_are_made_before_creation_and_every_runner_pins_them_from_the_api(scw, monkeypatch):
    spec = scw.spec.with_shards(1)
    hosts = scw.provider().ensure_hosts(spec)
    for host in hosts:  # the key the server's sshd shows is the one made here and tagged at creation
        shown = (scw.farm.root / host.address / "host_key.pub").read_text().split()
        assert shown[:2] == ["ssh-ed25519", host.labels["ensemble-hostkey"]]
    assert all(b"PRIVATE KEY" not in data and b"ssh_keys" not in data for data in scw.api.state.user_data.values()), \
        "the private host key stays in the API after the host answered with it"
    state = scw.tmp / "state"
    assert not [p for p in state.rglob("*") if p.is_file() and b"PRIVATE KEY" in p.read_bytes()]

    # A fresh runner (another machine, a CI job) pins from the API before its first connection: a man in the
    # middle answering for a shard with another key is refused, never trusted on first use.
    monkeypatch.setenv("XDG_STATE_HOME", str(scw.tmp / "fresh"))
    shard = next(h for h in hosts if h.role == "shard")
    scw.farm.rekey(shard.address)
    with pytest.raises(EnsembleError, match=f"{shard.name}.*host key changed"):
        scw.provider().ensure_hosts(spec)
    known = (scw.tmp / "fresh/ensemble/demo/known_hosts").read_text().splitlines()
    assert sorted(known) == sorted(f"{h.address} ssh-ed25519 {h.labels['ensemble-hostkey']}" for h in hosts)
    scw.provider().destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def test_a_server_whose_run_died_before_booting_it_is_made_again(scw):
    spec = scw.spec.with_shards(1)
    # the run dies right after creating the shard's server: its user data (with the host key) never set
    scw.api.inject("PATCH", r"/user_data/cloud-init$", status=400, nth=2,
                   body={"type": "invalid_arguments", "message": "injected failure"})
    with pytest.raises(EnsembleError):
        scw.provider().ensure_hosts(spec)
    stopped = [s["id"] for s in scw.api.state.servers.values() if s["state"] == "stopped"]
    assert len(stopped) == 1
    with scw.api.lock:  # long ago: not another run's, about to boot it
        scw.api.state.servers[stopped[0]]["creation_date"] = "2026-01-01T00:00:00+00:00"
    hosts = scw.provider().ensure_hosts(spec)
    assert len(hosts) == 2 and stopped[0] not in {h.provider_id for h in hosts}
    assert scw.api.resource_count() == {"servers": 2, "ips": 2, "volumes": 2, "security_groups": 2}
    scw.provider().destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def test_two_runs_creating_the_same_fleet_at_once_leave_one_of_each_host(scw):
    import threading

    spec = scw.spec.with_shards(2)
    # Both runs list (nothing there) before either creates: each POST waits, so both create every host.
    scw.api.inject("POST", r"/servers$", status=0, delay=0.5, times=None)
    scw.api.inject("POST", r"/security_groups$", status=0, delay=0.5, times=None)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        try:
            results[name] = [h.provider_id for h in scw.provider().ensure_hosts(spec)]
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            results[name] = exc

    runs = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(120)
    posts = sum(1 for m, p, s in scw.api.requests if m == "POST" and p.endswith("/servers") and s == 201)
    assert posts == 6, "the race did not happen: both runs should have created every host"
    assert not isinstance(results["a"], Exception), results["a"]
    assert results["a"] == results["b"], "both runs must end on the same hosts"
    groups = sum(1 for m, p, s in scw.api.requests if m == "POST" and p.endswith("/security_groups") and s == 201)
    assert groups == 4, "both runs should have created both roles' security groups"
    assert scw.api.resource_count() == {"servers": 3, "ips": 3, "volumes": 3, "security_groups": 2}
    _assert_one_group_per_role(scw.api, spec, scw.provider().list_hosts(spec))
    assert sorted(s["name"] for s in scw.api.state.servers.values()) == sorted(
        [spec.fleet.domain] + [spec.shard_name(n) for n in (1, 2)])
    known = (scw.tmp / "state/ensemble/demo/known_hosts").read_text().splitlines()
    addresses = {ip["address"] for ip in scw.api.state.ips.values()}
    assert len(known) == 3 and {line.split()[0] for line in known} == addresses  # the duplicates' keys are gone
    again = scw.provider().ensure_hosts(spec)  # a later run sees one of each and creates nothing
    assert [h.provider_id for h in again] == results["a"]
    scw.provider().destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def _untagged_volumes(api) -> list[str]:
    return [v["id"] for v in api.state.volumes.values() if not any(t.startswith("ensemble-fleet=") for t in v["tags"])]


def test_a_volume_that_cannot_be_tagged_goes_with_its_server(scw):
    spec = scw.spec.with_shards(2)
    scw.api.inject("PATCH", r"/block/v1/zones/[^/]+/volumes/", status=400, nth=2,
                   body={"type": "invalid_arguments", "message": "injected failure"})
    with pytest.raises(EnsembleError, match=r"1 of 3 host\(s\) failed.*tag volume 0 of .*injected failure"):
        scw.provider().ensure_hosts(spec)
    assert scw.api.resource_count() == {"servers": 2, "ips": 2, "volumes": 2, "security_groups": 2}
    assert _untagged_volumes(scw.api) == []
    hosts = scw.provider().ensure_hosts(spec)
    assert len(hosts) == 3 and _untagged_volumes(scw.api) == []
    scw.provider().destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def test_untagged_volumes_are_tagged_again_and_destroy_finds_them_even_when_cut_short(scw):
    spec = scw.spec.with_shards(1)
    provider = scw.provider()
    provider.ensure_hosts(spec)
    with scw.api.lock:  # a run died between creating the servers and tagging their volumes
        for volume in scw.api.state.volumes.values():
            volume["tags"] = []
    provider.ensure_hosts(spec)  # the next run tags them
    assert _untagged_volumes(scw.api) == []
    with scw.api.lock:
        for volume in scw.api.state.volumes.values():
            volume["tags"] = []
    # destroy is cut short after the servers went, before their volumes were deleted
    scw.api.inject("DELETE", r"/block/v1/zones/[^/]+/volumes/", status=400, times=None,
                   body={"type": "invalid_arguments", "message": "injected failure"})
    with pytest.raises(EnsembleError):
        provider.destroy_all(spec)
    assert scw.api.resource_count()["servers"] == 0 and scw.api.resource_count()["volumes"] == 2
    assert _untagged_volumes(scw.api) == []  # tagged before their servers went: found again below
    scw.api.faults.clear()
    provider.destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def test_the_private_host_key_is_never_logged_even_at_debug(scw, caplog):
    import logging

    spec = scw.spec.with_shards(1)
    sdk_log = logging.getLogger("scaleway")
    try:
        with caplog.at_level(logging.DEBUG):  # a verbose setup: every logger at DEBUG, the SDK's included
            sdk_log.setLevel(logging.DEBUG)
            provider = scw.provider()
            provider.ensure_hosts(spec)
    finally:
        sdk_log.setLevel(logging.NOTSET)
    assert "PRIVATE KEY" not in caplog.text
    provider.destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)


def test_a_young_stopped_server_is_left_to_the_run_that_creates_it(scw, tmp_path):
    import time

    from standins.scaleway_env import write_spec

    from ensemble.spec import load_spec

    path = write_spec(tmp_path / "t.toml", tmp_path, shards=1)
    path.write_text(path.read_text().replace("ssh_timeout = 30", "ssh_timeout = 8"))
    spec = load_spec(path)
    # another run created the shard's server and has not set its user data yet (here: it never will)
    scw.api.inject("PATCH", r"/user_data/cloud-init$", status=400, nth=2,
                   body={"type": "invalid_arguments", "message": "injected failure"})
    with pytest.raises(EnsembleError):
        scw.provider(spec).ensure_hosts(spec)
    stopped = next(s["id"] for s in scw.api.state.servers.values() if s["state"] == "stopped")
    with pytest.raises(EnsembleError, match="still stopped after 8s"):  # waited for, never touched
        scw.provider(spec).ensure_hosts(spec)
    assert scw.api.state.servers[stopped]["state"] == "stopped"
    assert not [r for r in scw.api.requests if r[1].endswith(f"/servers/{stopped}/action")]
    created = datetime.fromisoformat(scw.api.state.servers[stopped]["creation_date"])
    time.sleep(max(0.0, 8.5 - (datetime.now(UTC) - created).total_seconds()))
    hosts = scw.provider(spec).ensure_hosts(spec)  # older than ssh_timeout: that run is gone; made again
    assert len(hosts) == 2 and stopped not in scw.api.state.servers
    scw.provider(spec).destroy_all(spec)
    assert scw.api.resource_count() == zero(scw.api)
