"""`ensemble render` shows every file deploy writes: base files (firewall, apt, secrets...) included,
with their modes, rendered with the whole fleet's hosts and the provider's settings."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ensemble import paths
from ensemble.contexts import fleet_contexts
from ensemble.hostfiles import nftables_conf, public_ports
from ensemble.providers.base import DeployEnv, Host
from ensemble.render import fleet_files, render_fleet_to
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict


def _fleet():
    spec = spec_from_dict({"fleet": {"shards": 2}, "provider": {"scaleway": {"ssh_allowed_cidrs": ["192.0.2.0/24"]}}})
    store: dict = {}
    complete_secrets(store, spec)
    return spec, store


def test_render_output_includes_firewall_apt_sources_and_secrets(tmp_path):
    spec, store = _fleet()
    render_fleet_to(spec, store, tmp_path, keyring=b"\x99binary-key")
    shard = tmp_path / spec.shard_name(1)
    door = tmp_path / spec.fleet.domain
    for host in (shard, door):
        firewall = (host / paths.NFTABLES_CONF.lstrip("/")).read_text()
        assert "ip saddr { 192.0.2.0/24 } tcp dport 22 accept" in firewall
        secrets = host / paths.SECRETS_FILE.lstrip("/")
        assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600
    assert "URIs: https://download.jitsi.org" in (shard / paths.JITSI_SOURCE.lstrip("/")).read_text()
    assert (shard / paths.JITSI_KEYRING.lstrip("/")).read_bytes() == b"\x99binary-key"
    assert not (door / paths.JITSI_KEYRING.lstrip("/")).exists()  # the front door installs no Jitsi package
    assert (shard / paths.SYSCTL_FILE.lstrip("/")).exists()


def test_provider_settings_reach_the_rendered_files():
    spec, store = _fleet()
    env = DeployEnv(spec=spec, admin_cidrs=["10.9.8.0/24"], apt_direct=["10.9.8.1"], hosts_file=True)
    files = fleet_files(spec, store, env=env)[spec.shard_name(1)]
    by_path = {f.path: f for f in files}
    tcp, udp = public_ports("shard", spec)  # with [turn] on: the relay's ports too
    # the private occupancy port: from the front door's address only (the placeholder here)
    assert by_path[paths.NFTABLES_CONF].content == nftables_conf(["10.9.8.0/24"], udp_ports=udp, tcp_ports=tcp,
                                                                 occupancy_from=["198.51.100.1"])
    rule = f"ip saddr {{ 198.51.100.1 }} tcp dport {paths.OCCUPANCY_PORT} accept"
    assert rule in by_path[paths.NFTABLES_CONF].content
    door = {f.path: f for f in fleet_files(spec, store, env=env)[spec.fleet.domain]}
    assert str(paths.OCCUPANCY_PORT) not in door[paths.NFTABLES_CONF].content
    assert "Proxy::10.9.8.1" in by_path[paths.APT_DIRECT_FILE].content


def test_a_partial_deploy_renders_with_the_whole_fleet():
    """Deploying one shard (rolling upgrade) renders it exactly as a full deploy does: the front door's
    real address is allowed, never render's documentation placeholder."""
    spec, store = _fleet()
    hosts = [Host(spec.shard_name(1), "shard", 1, "10.0.0.11"), Host(spec.shard_name(2), "shard", 2, "10.0.0.12"),
             Host(spec.fleet.domain, "frontdoor", None, "10.0.0.10")]
    env = DeployEnv(spec=spec)
    full = fleet_contexts(env, store, hosts)
    one = fleet_contexts(env, store, hosts, only=[spec.shard_name(2)])
    assert list(one) == [spec.shard_name(2)]
    assert one[spec.shard_name(2)].files == full[spec.shard_name(2)].files
    site = next(f for f in one[spec.shard_name(2)].files if f.path.endswith(f"{spec.shard_name(2)}.conf"))
    assert "allow 10.0.0.10;" in site.content and "198.51.100.1" not in site.content


@pytest.mark.needs_tool("nft")
def test_firewall_rules_are_accepted_by_nft_and_keep_ssh_to_the_cidrs():
    text = nftables_conf(["10.1.2.0/24", "2001:db8::/32"])
    assert "policy drop" in text and "ip saddr { 10.1.2.0/24 } tcp dport 22 accept" in text
    assert "ip6 saddr { 2001:db8::/32 } tcp dport 22 accept" in text and "udp dport { 10000 } accept" in text
    nft = shutil.which("nft") or "/usr/sbin/nft"
    assert Path(nft).exists(), "nft missing: apt-get install nftables (.ci/apt-packages.txt)"
    check = subprocess.run([nft, "--check", "-f", "-"], input=text, text=True, capture_output=True)  # parse only
    assert check.returncode == 0, check.stderr
    broken = subprocess.run([nft, "--check", "-f", "-"], input=text.replace("policy drop", "policy dorp"), text=True,
                            capture_output=True)
    assert broken.returncode != 0  # the check really parses


def test_only_shards_open_the_media_port():
    """UDP 10000 is the bridge's: open on shards, closed on the front door (nothing of it listens there)."""
    spec, store = _fleet()
    files = fleet_files(spec, store)
    shard = {f.path: f for f in files[spec.shard_name(1)]}[paths.NFTABLES_CONF].content
    door = {f.path: f for f in files[spec.fleet.domain]}[paths.NFTABLES_CONF].content
    assert f"udp dport {{ {paths.JVB_MEDIA_PORT}, " in shard  # then the TURN relay's ports ([turn] is on)
    assert "udp dport" not in door and "tcp dport { 80, 443 } accept" in door


# The deploy's swap, run for real inside a private network namespace (its own empty ruleset):
# load the live file, then swap in the candidate given as $1 and load what is live afterwards.
SWAP_IN_NETNS = """
set -u
nft -f "$LIVE" || exit 90
sh -c "$SWAP"; echo "swap=$?"
nft -f "$LIVE" || exit 91
nft list ruleset
"""


@pytest.mark.needs_root("a private network namespace to load rulesets into")
@pytest.mark.needs_tool("nft", "unshare")
@pytest.mark.parametrize("candidate, accepted", [
    ("good", True),
    ("policy dorp", False),                     # a typo
    ("ip saddr { fe80::1%eth0/64 }", False),    # a scoped IPv6 address nft rejects
    ("", False),                                # empty (a truncated write)
])
def test_a_rejected_ruleset_never_replaces_the_live_one(tmp_path, candidate, accepted):
    """The deploy's swap: a candidate nft rejects is removed and the live file and ruleset stay as they
    were (the host is never left unfirewalled, now or at the next boot); a good one replaces both."""
    from ensemble.components.base import REPLACED_ATOMICALLY, swap_command

    live, new = tmp_path / "nftables.conf", tmp_path / "nftables.conf.new"
    old_text = nftables_conf(["10.1.2.0/24"])
    good = nftables_conf(["10.3.4.0/24"])
    live.write_text(old_text)
    if candidate == "good":
        new.write_text(good)
    elif candidate == "":
        new.write_text(good[: len(good) // 2])
    elif candidate.startswith("ip saddr"):
        new.write_text(good.replace("ip saddr { 10.3.4.0/24 }", candidate))
    else:
        new.write_text(good.replace("policy drop", candidate))
    check = REPLACED_ATOMICALLY[paths.NFTABLES_CONF][1]
    env = {**os.environ, "LIVE": str(live), "SWAP": swap_command(str(new), str(live), check)}
    run = subprocess.run(["unshare", "--net", "sh", "-c", SWAP_IN_NETNS], env=env, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert ("swap=0" in run.stdout) is accepted, run.stdout + run.stderr
    assert not new.exists()  # renamed in, or removed after a failed check
    if accepted:
        assert live.read_text() == good and "10.3.4.0/24" in run.stdout
    else:
        assert live.read_text() == old_text  # on disk for the next boot
        assert "10.1.2.0/24" in run.stdout and "policy drop" in run.stdout  # and loaded


@pytest.mark.parametrize("turn", [True, False])
@pytest.mark.parametrize("role", ["frontdoor", "shard"])
def test_the_cloud_firewall_opens_exactly_what_the_host_firewall_opens(role, turn):
    """One list (ensemble.publicports) for both firewalls: the rendered nftables file of a role and the
    rules of its Scaleway security group name the same public ports; the front door has no UDP in either."""
    from ensemble.providers.scalewaytags import firewall_rules

    spec = spec_from_dict({"fleet": {"shards": 1}, "turn": {"enabled": turn},
                           "provider": {"scaleway": {"ssh_allowed_cidrs": ["192.0.2.0/24"]}}})
    store: dict = {}
    complete_secrets(store, spec)
    host = spec.fleet.domain if role == "frontdoor" else spec.shard_name(1)
    files = {f.path: f for f in fleet_files(spec, store)[host]}
    tcp, udp = public_ports(role, spec)
    from ensemble.render import host_addresses, resolve_hosts

    door = host_addresses(resolve_hosts(spec, None)[1]) if role == "shard" else ()
    assert files[paths.NFTABLES_CONF].content == nftables_conf(["192.0.2.0/24"], udp_ports=udp, tcp_ports=tcp,
                                                               occupancy_from=door)
    cloud = firewall_rules(["192.0.2.0/24"], role, spec)

    def spelled(port):
        return str(port) if isinstance(port, int) else port
    public = {(p, f"{a}" if a == b else f"{a}-{b}") for p, a, b, cidr in cloud if cidr in ("0.0.0.0/0", "::/0")
              and (p, a) != ("tcp", paths.OCCUPANCY_PORT)}  # let through; nftables admits the front door only
    assert (("tcp", paths.OCCUPANCY_PORT, paths.OCCUPANCY_PORT, "0.0.0.0/0") in cloud) == (role == "shard")
    assert public == {("tcp", spelled(t)) for t in tcp} | {("udp", spelled(u)) for u in udp}
    admin = {(p, a, cidr) for p, a, _, cidr in cloud if cidr not in ("0.0.0.0/0", "::/0")}
    assert admin == {("tcp", 22, "192.0.2.0/24")}
    if role == "frontdoor":
        assert udp == () and not any(p == "udp" for p, *_ in cloud)
    else:
        assert ("udp", "10000") in public and (("udp", "49152-49999") in public) == turn
