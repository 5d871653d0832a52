"""The local provider: facts (names, subnets, suites, errors) and real nspawn hosts over real SSH."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import local_spec, ssh_run

from ensemble.errors import EnsembleError, SpecError, UsageError
from ensemble.providers import local as local_mod
from ensemble.providers import localnet
from ensemble.providers.local import LOCAL_ETHERPAD_SOURCE, LocalProvider, suite_of, suite_of_role
from ensemble.providers.localcontainer import container_processes, machine_name
from ensemble.providers.localimage import guest_sources, machine_sources, mirror_for_suite, mounts_under
from ensemble.providers.localnet import plan_network
from ensemble.ssh import Connection, HostKeyChanged

REPO = Path(__file__).resolve().parent.parent


# ---- facts ----

def test_network_is_derived_from_the_fleet_name_and_fits_interface_limits():
    one, again, other = plan_network("demo"), plan_network("demo"), plan_network("demo-2")
    assert one == again
    assert one.bridge != other.bridge and one.subnet != other.subnet
    assert len(one.bridge) <= 15 and one.bridge.startswith("ens-")
    assert one.gateway.endswith(".1") and one.subnet.endswith(".0/24") and one.subnet.startswith("10.")
    assert one.apt_proxy_url == f"http://{one.gateway}:3142"
    assert one.address(10).endswith(".10") and one.address(13).endswith(".13")


def test_configured_subnet_wins_and_bad_ones_name_the_key():
    assert plan_network("demo", "10.213.0.0/24").gateway == "10.213.0.1"
    with pytest.raises(SpecError, match=r"^provider\.local\.subnet: "):
        plan_network("demo", "8.8.8.0/24")


def test_machine_names_are_safe_short_and_unique_per_fleet():
    long_name = "a" * 60 + ".example.org"
    name = machine_name("demo", long_name)
    assert len(name) <= 64 and all(c.isalnum() or c == "-" for c in name)
    assert machine_name("demo", "x.test") != machine_name("other", "x.test")


def test_suite_follows_the_os_profile_and_refuses_what_the_mirror_lacks():
    assert suite_of(local_spec("t-facts")) == "bookworm"
    assert suite_of(local_spec("t-facts", os_profile="debian-trixie")) == "trixie"
    for profile in ("debian-buster", "ubuntu-jammy"):
        with pytest.raises(SpecError, match=r"^fleet\.os: .*not on this machine's mirror"):
            suite_of(local_spec("t-facts", os_profile=profile))
    with pytest.raises(SpecError, match=r"^provider\.local\.suite: "):
        suite_of(local_spec("t-facts", provider={"kind": "local", "local": {"suite": "buster"}}))


def test_the_front_door_may_run_another_suite_than_the_shards():
    """A test switch: bullseye's front door beside bookworm shards (bullseye's shards need prosody.im)."""
    spec = local_spec("t-facts", provider={"kind": "local", "local": {"frontdoor_suite": "bullseye"}})
    assert (suite_of_role(spec, "frontdoor"), suite_of_role(spec, "shard")) == ("bullseye", "bookworm")
    assert suite_of_role(local_spec("t-facts"), "frontdoor") == "bookworm"
    with pytest.raises(SpecError, match=r"^provider\.local\.frontdoor_suite: "):
        suite_of_role(local_spec("t-facts", provider={"kind": "local", "local": {"frontdoor_suite": "buster"}}),
                      "frontdoor")


def test_mirror_is_read_from_the_machine_sources(tmp_path):
    (tmp_path / "etc/apt/sources.list.d").mkdir(parents=True)
    (tmp_path / "etc/apt/sources.list.d/debian.sources").write_text(textwrap.dedent("""\
        Types: deb
        URIs: http://mirror.test/debian-security
        Suites: bookworm-security
        Components: main

        Types: deb
        # a comment
        URIs: http://mirror.test/debian
        Suites: bookworm bookworm-updates
        Components: main
        """))
    assert mirror_for_suite("", tmp_path) == "http://mirror.test/debian"
    assert mirror_for_suite("http://other.test/debian", tmp_path) == "http://other.test/debian"
    assert len(machine_sources(tmp_path)) == 3
    assert "Suites: trixie trixie-updates" in guest_sources("trixie", "http://m/debian", "http://m/sec")
    assert "Suites: trixie-security" in guest_sources("trixie", "http://m/debian", "http://m/sec")


def test_machine_ca_bundle_is_what_the_machine_trusts():
    bundle = localnet.machine_ca_bundle()
    assert bundle.is_file() and "BEGIN CERTIFICATE" in bundle.read_text()


def test_non_root_gets_one_clear_line(monkeypatch):
    monkeypatch.setattr(local_mod.os, "geteuid", lambda: 1000)
    with pytest.raises(UsageError, match=r"^the local provider needs root \(systemd-nspawn, bridges\)$"):
        LocalProvider().ensure_hosts(local_spec("t-facts"))


def test_janitor_with_tags_matches_nothing_local(monkeypatch):
    monkeypatch.setattr(local_mod.os, "geteuid", lambda: 1000)  # not even the root check: nothing to look at
    said = []
    assert LocalProvider().janitor(0, ["ci-run-1"], dry_run=True, progress=said.append) == []
    assert said == ["janitor: local hosts and networks carry no tags; nothing has ci-run-1"]


def test_missing_tool_names_its_package(monkeypatch):
    monkeypatch.setattr(local_mod.os, "geteuid", lambda: 0)
    monkeypatch.setattr(localnet.shutil, "which", lambda tool, path=None: None if tool == "tinyproxy" else "/bin/x")
    with pytest.raises(EnsembleError, match=r"needs tinyproxy: apt-get install tinyproxy$"):
        LocalProvider().ensure_hosts(local_spec("t-facts"))


# ---- real hosts ----

def _leftovers(spec, provider: LocalProvider, machine_ids: list[str]) -> list[str]:
    """Everything of a fleet that should be gone after destroy_all."""
    net = provider.network(spec)
    found = []
    if localnet.link_exists(net.bridge):
        found.append(f"bridge {net.bridge}")
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [f"veth {line.split(':')[1].strip()}" for line in links.splitlines()
              if f"master {net.bridge} " in line]
    found += [f"mount {m}" for m in mounts_under(provider.fleet_dir(spec).parent) if spec.fleet.name in m]
    found += [f"container init {pid}" for mid in machine_ids for pid in container_processes(mid)]
    if provider.fleet_dir(spec).exists():
        found.append(f"folder {provider.fleet_dir(spec)}")
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and localnet.process_alive(int(proc.name)):
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(provider.fleet_dir(spec)) + "/" in cmdline:
                found.append(f"process {proc.name}: {cmdline[:80]}")
    return found


def _machine_ids(provider: LocalProvider, spec) -> list[str]:
    hosts_dir = provider.hosts_dir(spec)
    return [json.loads((d / "host.json").read_text()).get("machine_id", "")
            for d in hosts_dir.iterdir() if (d / "host.json").exists()] if hosts_dir.exists() else []


@pytest.fixture(scope="module")
def fleet(local_provider):
    """A 2-host fleet (1 shard + front door), created once for the module, destroyed at its end."""
    spec = local_spec("t-local", shards=1)
    local_provider.destroy_all(spec)
    started = time.monotonic()
    hosts = local_provider.ensure_hosts(spec)
    took = time.monotonic() - started
    print(f"\n[measure] create {len(hosts)} hosts in parallel: {took:.1f} s")
    yield spec, hosts
    ids = _machine_ids(local_provider, spec)
    started = time.monotonic()
    local_provider.destroy_all(spec)
    print(f"\n[measure] destroy_all of {len(hosts)} hosts: {time.monotonic() - started:.1f} s")
    assert _leftovers(spec, local_provider, ids) == []


@pytest.mark.realhost
def test_hosts_boot_systemd_and_answer_ssh_with_pinned_keys(fleet):
    spec, hosts = fleet
    assert [(h.role, h.shard) for h in hosts] == [("shard", 1), ("frontdoor", None)]
    net = LocalProvider().network(spec)
    assert [h.address for h in hosts] == [net.address(11), net.address(10)]
    for host in hosts:
        assert host.name in Path(host.known_hosts).read_text()
        assert oct(Path(host.ssh_key).stat().st_mode & 0o777) == "0o600"
        code, out, _ = ssh_run(host, "systemctl is-system-running --wait; hostname; cat /etc/hosts")
        state, hostname = out.split()[:2]
        assert state in ("running", "degraded"), out
        assert hostname == host.name
        assert f"{host.address} {host.name}" in out


@pytest.mark.realhost
def test_ensure_hosts_again_creates_nothing(fleet, local_provider):
    spec, hosts = fleet
    ids = _machine_ids(local_provider, spec)
    started = time.monotonic()
    again = local_provider.ensure_hosts(spec)
    assert again == hosts and _machine_ids(local_provider, spec) == ids
    assert time.monotonic() - started < 5


@pytest.mark.realhost
def test_apt_works_through_the_proxy_and_nothing_else_is_reachable(fleet):
    _spec, hosts = fleet
    code, out, err = ssh_run(hosts[0], "apt-get update -q")
    assert code == 0, err
    code, _out, err = ssh_run(hosts[0], "curl -sS -m 5 http://deb.debian.org/ -o /dev/null")
    assert code != 0  # no default route, no DNS: only the proxies on the bridge


@pytest.mark.realhost
def test_npm_proxy_allows_the_registry_only(fleet, local_provider):
    spec, hosts = fleet
    proxy = local_provider.network(spec).http_proxy_url
    # the machine may inspect TLS: trust what its own clients trust (as the Etherpad deploy does)
    with Connection(hosts[0]) as conn:
        conn.write_file_atomically("/tmp/machine-ca.crt", Path("/etc/ssl/certs/ca-certificates.crt").read_bytes())
    curl = f"curl -sS -m 20 --cacert /tmp/machine-ca.crt -x {proxy} -o /dev/null -w '%{{http_code}}' "
    code, out, err = ssh_run(hosts[0], curl + "https://registry.npmjs.org/is-number")
    assert (code, out) == (0, "200"), err
    code, out, err = ssh_run(hosts[0], curl + "https://pypi.org/simple/")
    assert code != 0 and "403" in err


@pytest.mark.realhost
def test_hosts_reach_each_other(fleet):
    _spec, (shard, frontdoor) = fleet
    code, out, err = ssh_run(shard, f"timeout 5 bash -c 'head -c 7 </dev/tcp/{frontdoor.address}/22'")
    assert (code, out) == (0, "SSH-2.0"), err


@pytest.mark.realhost
def test_serve_directory_reaches_guests(fleet, local_provider, tmp_path):
    spec, hosts = fleet
    (tmp_path / "hello.txt").write_text("stand-in repository\n")
    url = local_provider.serve_directory(spec, "t-repo", tmp_path)
    assert url == local_provider.serve_directory(spec, "t-repo", tmp_path)  # idempotent
    code, out, err = ssh_run(hosts[0], f"curl -sS -m 5 {url}hello.txt")
    assert (code, out) == (0, "stand-in repository\n"), err
    # apt reaches it directly (not through apt-cacher-ng): an empty flat repository
    (tmp_path / "Packages").write_text("")
    digest = hashlib.sha256(b"").hexdigest()
    date = time.strftime("%a, %d %b %Y %H:%M:%S UTC", time.gmtime())
    (tmp_path / "Release").write_text(f"Origin: ensemble test\nDate: {date}\nSHA256:\n {digest} 0 Packages\n")
    apt = (f"echo 'deb [trusted=yes] {url} ./' > /tmp/served.list && apt-get update "
           "-o Dir::Etc::SourceList=/tmp/served.list -o Dir::Etc::SourceParts=- 2>&1")
    code, out, err = ssh_run(hosts[0], apt)
    assert code == 0 and "Err:" not in out and f"Get:2 {url.rstrip('/')} ./ Release" in out, out
    served = (local_provider.fleet_dir(spec) / "run/serve-t-repo.log").read_text()
    assert f'{hosts[0].address} - - ' in served and '"GET /./Release HTTP' in served  # from the guest itself


@pytest.mark.realhost
def test_pebble_directory_answers_guests(fleet, local_provider, acme_factory):
    spec, hosts = fleet
    acme = acme_factory(local_provider.network(spec).gateway)
    assert "newOrder" in acme.directory()
    assert "BEGIN CERTIFICATE" in acme.issuing_root()
    with Connection(hosts[0]) as conn:
        conn.write_file_atomically("/tmp/pebble-ca.pem", Path(acme.ca_pem).read_bytes())
    code, out, err = ssh_run(hosts[0], f"curl -sS -m 5 --cacert /tmp/pebble-ca.pem {acme.directory_url}")
    assert code == 0 and "newAccount" in json.loads(out), err
    acme.stop()
    assert not localnet.wait_for_port(acme.gateway, 14000, timeout=0.5)  # stopped for real


@pytest.mark.realhost
def test_a_changed_host_key_is_refused(fleet):
    _spec, hosts = fleet
    host = hosts[-1]
    keep = "mkdir -p /root/keep && cp -a /etc/ssh/ssh_host_* /root/keep/"
    new = "rm -f /etc/ssh/ssh_host_* && ssh-keygen -A >/dev/null"
    assert ssh_run(host, f"{keep} && {new} && systemctl restart ssh")[0] == 0
    try:
        with pytest.raises(HostKeyChanged, match=rf"^{host.name}: .*host key changed since it was pinned"):
            ssh_run(host, "true")
    finally:  # put the pinned keys back, through the container's own console-free path: nsenter
        pid = _init_pid(host)
        subprocess.run(["nsenter", "-t", str(pid), "-m", "-u", "-i", "-n", "-p", "sh", "-c",
                        "cp -a /root/keep/ssh_host_* /etc/ssh/ && systemctl restart ssh"], check=True)
    assert ssh_run(host, "true")[0] == 0


@pytest.mark.realhost
def test_deploy_environment_points_the_deploy_at_what_local_hosts_reach(fleet, local_provider):
    spec, hosts = fleet
    net = local_provider.network(spec)
    env = local_provider.deploy_environment(spec)
    assert env.spec.jitsi.apt_repo.startswith(f"http://{net.gateway}:") and env.apt_direct == [net.gateway]
    assert env.spec.jitsi.apt_key_fingerprint and env.spec.jitsi.apt_key_url.startswith(env.spec.jitsi.apt_repo)
    assert env.spec.etherpad.source_url == LOCAL_ETHERPAD_SOURCE and env.spec.etherpad.sha256 == ""
    assert (env.http_proxy, env.admin_cidrs, env.hosts_file, env.npm_only) == (net.http_proxy_url, [net.subnet],
                                                                                True, True)
    assert env.peers_of(hosts) == {h.name: h.address for h in hosts}
    code, out, err = ssh_run(hosts[0], f"curl -sS -m 5 {env.spec.jitsi.apt_key_url}")
    assert code == 0 and "BEGIN PGP PUBLIC KEY BLOCK" in out, err
    own = local_spec("t-local", shards=1, jitsi={"apt_repo": "http://repo.example.test/jitsi"})
    assert local_provider.deploy_environment(own).spec.jitsi == own.jitsi  # a repository the spec names is kept


def _init_pid(host) -> int:
    record = json.loads((LocalProvider().hosts_dir(local_spec("t-local")) / host.labels["machine"]
                         / "host.json").read_text())
    (pid,) = container_processes(record["machine_id"])
    return pid


@pytest.mark.realhost
def test_destroy_one_host_leaves_the_rest(local_provider):
    spec = local_spec("t-local-d", shards=2)
    local_provider.destroy_all(spec)
    try:
        hosts = local_provider.ensure_hosts(spec)
        ids = _machine_ids(local_provider, spec)
        started = time.monotonic()
        folder = local_provider.hosts_dir(spec) / hosts[1].labels["machine"]
        veth = json.loads((folder / "host.json").read_text())["veth"]
        assert veth and localnet.link_exists(veth)
        local_provider.destroy(spec, [hosts[1]])
        print(f"\n[measure] destroy 1 host: {time.monotonic() - started:.1f} s")
        assert not localnet.link_exists(veth) and not folder.exists()
        remaining = local_provider.list_hosts(spec)
        assert [h.name for h in remaining] == [hosts[0].name, hosts[2].name]
        assert hosts[1].name not in Path(hosts[0].known_hosts).read_text()
        assert hosts[0].name in Path(hosts[0].known_hosts).read_text()
        assert len([i for i in ids if container_processes(i)]) == 2
        recreated = local_provider.ensure_hosts(spec)
        assert [h.name for h in recreated] == [h.name for h in hosts]
        assert ssh_run(recreated[1], "true")[0] == 0  # new host keys were pinned
        ids = _machine_ids(local_provider, spec)
    finally:
        local_provider.destroy_all(spec)
    assert _leftovers(spec, local_provider, ids) == []


def start_run_until_a_container_boots(provider, spec, script: str) -> subprocess.Popen:
    """Start `script` (an ensure_hosts run) in its own session; return once one of its containers boots."""
    run = subprocess.Popen([sys.executable, "-c", script.format(tests=str(REPO / "tests"))],
                           cwd=REPO, start_new_session=True)
    hosts_dir = provider.hosts_dir(spec)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if hosts_dir.exists() and any((d / "nspawn.pid").exists() for d in hosts_dir.glob("*")):
            break
        time.sleep(0.02)
    return run


CRASHING_RUN = """
import sys
sys.path.insert(0, {tests!r})
from conftest import local_spec
from ensemble.providers.local import LocalProvider
spec = local_spec("t-crash", shards=2)
LocalProvider().ensure_hosts(spec)
"""


@pytest.mark.realhost
def test_a_killed_run_and_a_killed_container_are_cleaned_up_and_converge(local_provider):
    spec = local_spec("t-crash", shards=2)
    local_provider.destroy_all(spec)
    run = start_run_until_a_container_boots(local_provider, spec, CRASHING_RUN)  # then kill it
    hosts_dir = local_provider.hosts_dir(spec)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    try:
        ids = _machine_ids(local_provider, spec)
        local_provider.cleanup_stale()
        interrupted = [h.name for h in local_provider.list_hosts(spec)]
        assert len(interrupted) < 3  # what was not ready is gone, what was ready may stay
        hosts = local_provider.ensure_hosts(spec)
        assert len(hosts) == 3 and all(ssh_run(h, "true")[0] == 0 for h in hosts)
        # a container manager killed hard leaves the container's systemd running: cleanup_stale ends it
        victim = hosts[0]
        folder = hosts_dir / victim.labels["machine"]
        victim_id = json.loads((folder / "host.json").read_text())["machine_id"]
        os.kill(int((folder / "nspawn.pid").read_text()), signal.SIGKILL)
        time.sleep(0.3)
        assert container_processes(victim_id)  # the orphaned container still runs
        removed = local_provider.cleanup_stale()
        assert f"host {victim.name} (container gone)" in removed
        assert container_processes(victim_id) == [] and not folder.exists()
        assert [h.name for h in local_provider.ensure_hosts(spec)] == [h.name for h in hosts]
        ids += _machine_ids(local_provider, spec)
    finally:
        local_provider.destroy_all(spec)
    assert _leftovers(spec, local_provider, ids) == []


INTERRUPTED_RUN = """
import sys
sys.path.insert(0, {tests!r})
from conftest import local_spec
from ensemble.providers.local import LocalProvider
LocalProvider().ensure_hosts(local_spec("t-term", shards=2))
"""


@pytest.mark.realhost
def test_a_terminated_run_removes_the_hosts_it_was_making_on_its_way_out(local_provider):
    spec = local_spec("t-term", shards=2)
    local_provider.destroy_all(spec)
    run = start_run_until_a_container_boots(local_provider, spec, INTERRUPTED_RUN)  # then stop it
    hosts_dir = local_provider.hosts_dir(spec)
    ids = _machine_ids(local_provider, spec)
    run.send_signal(signal.SIGTERM)
    try:
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        records = [json.loads((d / "host.json").read_text()) for d in hosts_dir.iterdir() if d.is_dir()]
        assert records and all(r["ready"] for r in records) or not records  # nothing half-made
        assert len(records) < 3
        ready_ids = {r["machine_id"] for r in records}
        assert [i for i in ids if i not in ready_ids and container_processes(i)] == []
    finally:
        run.kill()
        local_provider.destroy_all(spec)
    assert _leftovers(spec, local_provider, ids) == []


TWIN_RUN = """
import sys
sys.path.insert(0, {tests!r})
from conftest import local_spec
from ensemble.providers.local import LocalProvider
print(sorted(h.name for h in LocalProvider().ensure_hosts(local_spec("t-twins", shards=2))))
"""


@pytest.mark.realhost
def test_two_runs_at_once_on_one_fleet_create_each_host_once(local_provider):
    spec = local_spec("t-twins", shards=2)
    local_provider.destroy_all(spec)
    code = TWIN_RUN.format(tests=str(REPO / "tests"))
    runs = [subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
            for _ in range(2)]
    try:
        outputs = [run.communicate(timeout=300)[0] for run in runs]
        assert [run.returncode for run in runs] == [0, 0]
        assert outputs[0] == outputs[1] and outputs[0].count(".test") == 3
        hosts = local_provider.list_hosts(spec)
        assert len(hosts) == 3 and all(ssh_run(h, "true")[0] == 0 for h in hosts)
        ids = _machine_ids(local_provider, spec)
        assert len(set(ids)) == 3
    finally:
        local_provider.destroy_all(spec)
    assert _leftovers(spec, local_provider, ids) == []


@pytest.mark.realhost
def test_cleanup_stale_removes_orphan_bridges_only(local_provider):
    localnet.run_ip("link", "add", "ens-0rphan", "type", "bridge")
    try:
        said = []
        assert "bridge ens-0rphan (no fleet)" in local_provider.janitor(7200, [], dry_run=True, progress=said.append)
        assert "would clean up bridge ens-0rphan (no fleet)" in said and localnet.link_exists("ens-0rphan")
        assert "bridge ens-0rphan (no fleet)" in local_provider.cleanup_stale()
        assert not localnet.link_exists("ens-0rphan")
    finally:
        localnet.bridge_down("ens-0rphan")


@pytest.mark.realhost
@pytest.mark.parametrize("os_profile", ["debian-bullseye", "debian-trixie"])
def test_other_debian_suites_boot(local_fleet_factory, os_profile):
    suite = os_profile.split("-")[1]
    _spec, hosts = local_fleet_factory(f"t-{suite}", shards=1, os_profile=os_profile)
    code, out, err = ssh_run(hosts[0], "systemctl is-system-running --wait; . /etc/os-release; "
                             "echo $VERSION_CODENAME; apt-get update -q >/dev/null && echo apt-ok")
    assert code == 0, err
    assert out.split()[0] in ("running", "degraded") and out.split()[1:] == [suite, "apt-ok"]


NGINX_TLS_SITE = """server {{
    listen 443 ssl;
    server_name {domain};
    ssl_certificate /etc/letsencrypt/live/{domain}/fullchain.pem;
    ssl_certificate_key /etc/letsencrypt/live/{domain}/privkey.pem;
    root /var/www/html;
    location / {{ return 200 "hello from {domain}\\n"; }}
}}
"""


@pytest.mark.realhost
@pytest.mark.slow
def test_pebble_issues_a_certificate_to_a_guest_nginx_with_certbot_webroot(fleet, local_provider, tmp_path):
    import socket
    import ssl

    from standins.acme import start_pebble

    spec, (shard, _frontdoor) = fleet
    install = ("apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
               "--no-install-recommends nginx-light certbot >/dev/null && systemctl is-active nginx")
    code, out, err = ssh_run(shard, install, timeout=600)
    assert code == 0, err
    acme = start_pebble(local_provider.network(spec).gateway, tmp_path / "pebble")
    try:
        acme.add_a(shard.name, shard.address)
        with Connection(shard) as conn:
            conn.write_file_atomically("/usr/local/share/ca-certificates/ensemble-test-pebble.crt",
                                       Path(acme.ca_pem).read_bytes())
            conn.write_file_atomically(f"/etc/nginx/sites-enabled/{shard.name}-tls",
                                       NGINX_TLS_SITE.format(domain=shard.name))
        certbot = (f"update-ca-certificates >/dev/null && REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt "
                   f"certbot certonly --non-interactive --agree-tos --register-unsafely-without-email "
                   f"--server {acme.directory_url} --webroot -w /var/www/html -d {shard.name} "
                   f"&& nginx -t && systemctl reload nginx")
        code, out, err = ssh_run(shard, certbot, timeout=300)
        assert code == 0, out + err
        root = tmp_path / "root0.pem"
        root.write_text(acme.issuing_root())
        time.sleep(0.5)  # nginx reload
        context = ssl.create_default_context(cafile=str(root))
        with socket.create_connection((shard.address, 443), timeout=5) as raw:
            with context.wrap_socket(raw, server_hostname=shard.name) as tls:
                assert tls.getpeercert()["subjectAltName"] == (("DNS", shard.name),)
                tls.sendall(f"GET / HTTP/1.0\r\nHost: {shard.name}\r\n\r\n".encode())
                assert f"hello from {shard.name}" in tls.recv(4096).decode()
        with pytest.raises(ssl.SSLCertVerificationError):  # and not trusted without pebble's root
            with socket.create_connection((shard.address, 443), timeout=5) as raw:
                ssl.create_default_context().wrap_socket(raw, server_hostname=shard.name)
    finally:
        acme.stop()


# ---- the cached image: one build under concurrency, nothing half-built after a crash ----

STUB_DEBOOTSTRAP = """#!/bin/bash
# TEST STAND-IN for debootstrap: unpacks the real cached image (debootstrap itself ran when it was built)
echo "$*" >> {calls}
{delay}
target="${{@: -2:1}}"
mkdir -p "$target" && zstd -dc {image} | tar -C "$target" --numeric-owner -xf -
{after}
"""


def _stub_debootstrap(tmp_path: Path, monkeypatch, delay: str, after: str = "") -> Path:
    from ensemble.providers.localimage import ensure_image

    real = ensure_image("bookworm", Path(local_spec("t-image").provider.local.cache_dir), mirror_for_suite(""))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    calls = tmp_path / "calls"
    stub = bin_dir / "debootstrap"
    stub.write_text(STUB_DEBOOTSTRAP.format(calls=calls, delay=delay, after=after, image=real))
    stub.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return calls


@pytest.mark.realhost
def test_concurrent_runs_build_the_image_once(tmp_path, monkeypatch):
    from concurrent.futures import ThreadPoolExecutor

    from ensemble.providers.localimage import ensure_image

    calls = _stub_debootstrap(tmp_path, monkeypatch, "sleep 1")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(3) as pool:
        built = list(pool.map(lambda _: ensure_image("bookworm", cache, "http://mirror.test/debian"), range(3)))
    assert len(set(built)) == 1 and built[0].exists()
    assert len(calls.read_text().splitlines()) == 1
    assert [p.name for p in cache.iterdir() if p.name.startswith("build-")] == []


@pytest.mark.realhost
def test_a_build_killed_midway_leaves_no_tarball_and_the_next_run_recovers(tmp_path, monkeypatch):
    from ensemble.providers.localimage import ensure_image, image_path

    started = _stub_debootstrap(tmp_path, monkeypatch, "", after="touch unpacked; sleep 60")
    cache = tmp_path / "cache"
    build = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                              "from ensemble.providers.localimage import ensure_image; "
                              "ensure_image('bookworm', Path(sys.argv[1]), 'http://mirror.test/debian')", str(cache)],
                             cwd=tmp_path, start_new_session=True, env=dict(os.environ))
    deadline = time.monotonic() + 30
    while not (tmp_path / "unpacked").exists() and time.monotonic() < deadline:  # killed while half-built
        time.sleep(0.05)
    os.killpg(build.pid, signal.SIGKILL)
    build.wait()
    assert started.exists() and list(cache.glob("build-bookworm-*"))
    assert not image_path(cache, "bookworm").exists()
    calls = _stub_debootstrap(tmp_path, monkeypatch, "")
    assert ensure_image("bookworm", cache, "http://mirror.test/debian").exists()
    assert list(cache.glob("build-bookworm-*")) == [] and len(calls.read_text().splitlines()) == 2


@pytest.mark.realhost
def test_a_container_that_dies_at_boot_gives_its_console_and_leaves_nothing(local_provider, monkeypatch):
    spec = local_spec("t-dies", shards=1)
    real_argv = local_mod.nspawn_argv
    monkeypatch.setattr(local_mod, "nspawn_argv",
                        lambda rootfs, machine, bridge: real_argv(rootfs, machine, "ens-missing0"))
    try:
        with pytest.raises(EnsembleError, match=r"container of t-dies-1\.t-dies\.test exited \(\d+\): .*ens-missing0"):
            local_provider.ensure_hosts(spec)
        assert local_provider.list_hosts(spec) == []
        assert [p for p in local_provider.hosts_dir(spec).iterdir()] == []
        assert "t-dies-1" not in Path(local_provider.known_hosts(spec)).read_text()
    finally:
        local_provider.destroy_all(spec)


@pytest.mark.realhost
def test_a_proxy_port_taken_by_someone_else_is_an_error_not_a_silent_stranger(local_provider):
    import socket

    spec = local_spec("t-taken", shards=1)
    net = local_provider.network(spec)
    localnet.bridge_up(net)
    stranger = socket.socket()
    try:
        stranger.bind((net.gateway, localnet.HTTP_PROXY_PORT))
        stranger.listen()
        with pytest.raises(EnsembleError, match=r"^tinyproxy did not start on .*:8888 \(is a system-wide tinyproxy"):
            local_provider.ensure_network(spec)
    finally:
        stranger.close()
        local_provider.destroy_all(spec)
    assert not localnet.link_exists(net.bridge) and not local_provider.fleet_dir(spec).exists()


@pytest.mark.realhost
def test_one_apt_cacher_at_a_time_uses_the_shared_cache(local_provider):
    import fcntl

    first, second = local_spec("t-cache-a"), local_spec("t-cache-b")
    lock = Path(first.provider.local.cache_dir) / "apt-cacher-ng/shared/.in-use.lock"

    def cache_of(spec) -> str:
        conf = (local_provider.fleet_dir(spec) / "run/acng/acng.conf").read_text()
        return conf.splitlines()[0].split("/")[-1]

    def shared_lock_free() -> bool:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        finally:
            os.close(fd)

    free_before = shared_lock_free()  # another fleet (e.g. this module's) may hold it already
    try:
        local_provider.ensure_network(first)
        local_provider.ensure_network(second)
        expected = ("shared", "t-cache-b") if free_before else ("t-cache-a", "t-cache-b")
        assert (cache_of(first), cache_of(second)) == expected
        assert not shared_lock_free()  # held by an apt-cacher-ng itself
    finally:
        local_provider.destroy_all(first)
        local_provider.destroy_all(second)
    assert shared_lock_free() == free_before  # released with its apt-cacher-ng
