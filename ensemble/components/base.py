"""Base of every host: hostname, apt (with the Jitsi source), unattended upgrades, firewall, sysctl.

Also the one helper every component uses to put ensemble's rendered files and restart a
service only when one of its files changed (`put_files`). File contents come from
`ensemble.render` (shards) or `ensemble.frontdoor.render` (front door): a deploy writes
exactly what `ensemble render` shows.

Example::

    @deploy("Shard")
    def shard(ctx):
        base(ctx)          # ctx: ensemble.components.context.DeployContext
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import json
import shlex
from collections.abc import Iterable
from dataclasses import dataclass, field

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from ensemble.providers.base import Host
from ensemble.spec import FleetSpec

JITSI_KEYRING = "/usr/share/keyrings/jitsi-keyring.gpg"
JITSI_SOURCE = "/etc/apt/sources.list.d/jitsi.sources"
SECRETS_FILE = "/etc/ensemble/secrets.json"
APT_DIRECT_FILE = "/etc/apt/apt.conf.d/02ensemble-direct"
SYSCTL_FILE = "/etc/sysctl.d/20-jvb-udp-buffers.conf"
APT_CACHE_SECONDS = 3600
BASE_PACKAGES_FRONTDOOR = ["nftables", "unattended-upgrades", "ca-certificates", "openssl", "curl", "nginx"]


@dataclass(frozen=True)
class DeployContext:
    """Everything one host's deploy needs, computed before any operation (plain values).

    Example::

        DeployContext(spec, host, files=render.shard_files(spec, 1, store, host), packages=["nginx"])
    """

    spec: FleetSpec
    host: Host
    files: list = field(default_factory=list)  # ensemble.render.RenderedFile
    host_secrets: dict = field(default_factory=dict)  # what /etc/ensemble/secrets.json holds
    packages: list[str] = field(default_factory=list)  # one batched apt install
    debconf: str = ""  # debconf-set-selections input
    jitsi_keyring: bytes | None = None  # dearmored, fingerprint-checked key (None: no Jitsi source)
    ssh_cidrs: list[str] = field(default_factory=list)
    frontdoor: Host | None = None
    http_proxy: str = ""  # proxy guests use for npm (local provider), "" = direct
    apt_direct: list[str] = field(default_factory=list)  # apt hosts reached without the apt proxy
    peers: dict[str, str] = field(default_factory=dict)  # fleet host name -> address, where no DNS has them

    def files_of(self, *components: str) -> list:
        return [f for f in self.files if f.component in components]


# ---- facts: what the files say (pure) ----

def nftables_conf(ssh_cidrs: Iterable[str], udp_ports: Iterable[int] = (10000,),
                  tcp_ports: Iterable[int] = (80, 443)) -> str:
    """The host firewall: drop inbound except established, loopback, ICMP, web, JVB media, SSH from CIDRs.

    Example::

        "tcp dport 22" in nftables_conf(["10.0.0.0/8"])    # True
    """
    v4 = [c for c in ssh_cidrs if ipaddress.ip_network(c, strict=False).version == 4]
    v6 = [c for c in ssh_cidrs if ipaddress.ip_network(c, strict=False).version == 6]
    ssh = []
    if v4:
        ssh.append(f"        ip saddr {{ {', '.join(v4)} }} tcp dport 22 accept")
    if v6:
        ssh.append(f"        ip6 saddr {{ {', '.join(v6)} }} tcp dport 22 accept")
    lines = [
        "#!/usr/sbin/nft -f",
        "# Managed by ensemble: changes here are overwritten on the next deploy.",
        "flush ruleset",
        "table inet ensemble {",
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        "        ct state established,related accept",
        "        ct state invalid drop",
        '        iifname "lo" accept',
        "        meta l4proto { icmp, icmpv6 } accept",
        f"        tcp dport {{ {', '.join(map(str, tcp_ports))} }} accept",
        f"        udp dport {{ {', '.join(map(str, udp_ports))} }} accept",
        *ssh,
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def sysctl_conf() -> str:
    """JVB's UDP buffer sizes (jitsi-videobridge's own recommendation).

    Example::

        "net.core.rmem_max" in sysctl_conf()    # True
    """
    return "# Managed by ensemble: UDP buffers for jitsi-videobridge\nnet.core.rmem_max = 10485760\n" \
           "net.core.netdev_max_backlog = 100000\n"


def auto_upgrades_conf() -> str:
    """Unattended security upgrades, daily.

    Example::

        "Unattended-Upgrade" in auto_upgrades_conf()   # True
    """
    return 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'


def jitsi_source(repo: str, suite: str) -> str:
    """deb822 source of Jitsi's flat repository, trusted through its own keyring only.

    Example::

        jitsi_source("https://download.jitsi.org", "stable/")
    """
    return f"Types: deb\nURIs: {repo}\nSuites: {suite}\nSigned-By: {JITSI_KEYRING}\n"


def apt_direct_conf(hosts: Iterable[str]) -> str:
    """apt settings that bypass a configured proxy for some hosts (a repository served on the bridge).

    Example::

        apt_direct_conf(["10.214.4.1"])   # 'Acquire::http::Proxy::10.214.4.1 "DIRECT";\n'
    """
    return "".join(f'Acquire::http::Proxy::{h} "DIRECT";\n' for h in hosts)


def peers_lines(peers: dict[str, str]) -> str:
    """/etc/hosts lines for the fleet's hosts, sorted (stable bytes).

    Example::

        peers_lines({"b.test": "10.0.0.2", "a.test": "10.0.0.1"})   # "10.0.0.1 a.test\n10.0.0.2 b.test"
    """
    return "\n".join(f"{address} {name}" for name, address in sorted(peers.items()))


def secrets_json(host_secrets: dict[str, dict[str, str]]) -> str:
    """The secrets a host keeps (its own entry + the fleet entry), stable bytes for idempotence.

    Example::

        secrets_json({"fleet": {"occupancy_token": "x"}})
    """
    return json.dumps(host_secrets, indent=2, sort_keys=True) + "\n"


# ---- actions ----

def file_state_command(paths: list[str]) -> str:
    """One remote command telling mode, owner, group and sha256 of many files (missing ones are left out).

    Example::

        file_state_command(["/etc/a.conf"])   # "stat -c '%a %U %G %n' /etc/a.conf 2>/dev/null; echo ::; ..."
    """
    quoted = " ".join(shlex.quote(p) for p in paths)
    return f"stat -c '%a %U %G %n' {quoted} 2>/dev/null; echo ::; sha256sum {quoted} 2>/dev/null; true"


def stale_files(rendered: list, state: str) -> list:
    """The rendered files whose bytes, mode, owner or group differ on the host (or that are missing).

    Example::

        stale_files(files, "644 root root /etc/a.conf\n::\n<sha256>  /etc/a.conf")   # [] when all match
    """
    meta, _, sums = (state or "").partition("::")
    found: dict[str, list[str]] = {}
    for line in meta.splitlines():
        parts = line.split(" ", 3)
        if len(parts) == 4:
            found[parts[3]] = parts[:3]
    for line in sums.splitlines():
        digest, _, path = line.partition("  ")
        if path in found:
            found[path].append(digest)
    stale = []
    for item in rendered:
        wanted = [f"{item.mode:o}", item.owner, item.group, hashlib.sha256(item.content.encode()).hexdigest()]
        if found.get(item.path) != wanted:
            stale.append(item)
    return stale


def put_files(rendered: list, *, also_changed: dict[str, list] | None = None) -> list:
    """Put the rendered files that differ on the host, then restart (nginx: reload) each file's service
    if one of its files changed.

    One remote command compares every file first (instead of two facts per file): a re-run with
    nothing to do costs one command here. also_changed adds other operations (a link, a certificate)
    that should restart a service too. Returns the files.put operations so callers can chain on them.

    Example::

        put_files(ctx.files_of("jicofo"))
    """
    state = host.get_fact(Command, command=file_state_command([f.path for f in rendered])) if rendered else ""
    puts = []
    by_service: dict[str, list] = {name: list(ops) for name, ops in (also_changed or {}).items()}
    for item in stale_files(rendered, state):
        op = files.put(
            name=f"{item.component}: {item.path}",
            src=io.StringIO(item.content), dest=item.path, mode=f"{item.mode:o}",
            user=item.owner, group=item.group, create_remote_dir=True,
        )
        puts.append(op)
        if item.path.endswith((".service", ".timer")):
            systemd.daemon_reload(name=f"systemd reload ({item.path})", _if=op.did_change)
        if item.service:
            by_service.setdefault(item.service, []).append(op)
    for item in rendered:
        if item.service:
            by_service.setdefault(item.service, [])  # kept running even when none of its files changed
    for service, ops in by_service.items():
        restart_on_change(service, ops, reload=service == "nginx")
    return puts


def restart_on_change(service: str, ops: list, *, reload: bool = False) -> None:
    """Keep a service enabled and running; restart/reload it only when one of ops changed.

    Example::

        restart_on_change("prosody", [vhost_put])
    """
    systemd.service(name=f"{service} running", service=service, running=True, enabled=True)
    if not ops:
        return
    if reload:
        systemd.service(name=f"{service} reload (config changed)", service=service, reloaded=True,
                        _if=any_changed(*ops))
    else:
        systemd.service(name=f"{service} restart (config changed)", service=service, restarted=True,
                        _if=any_changed(*ops))


@deploy("Base")
def base(ctx: DeployContext) -> None:
    """Hostname, apt sources and one batched install, unattended upgrades, firewall, sysctl, secrets."""
    server.hostname(name="hostname", hostname=ctx.host.name)
    if ctx.peers:
        # Local fleets have no DNS: the front door reaches shards (and shards the front door) by name.
        files.block(name="fleet hosts in /etc/hosts", path="/etc/hosts", marker="# {mark} ensemble fleet hosts",
                    content=peers_lines(ctx.peers))
    files.put(name="secrets (0600)", src=io.StringIO(secrets_json(ctx.host_secrets)), dest=SECRETS_FILE,
              mode="600", user="root", group="root", create_remote_dir=True)
    sources = []
    if ctx.apt_direct:
        sources.append(files.put(name="apt: direct to the local repositories", dest=APT_DIRECT_FILE, mode="644",
                                 src=io.StringIO(apt_direct_conf(ctx.apt_direct))))
    if ctx.jitsi_keyring:
        sources.append(files.put(name="Jitsi keyring (fingerprint checked)", src=io.BytesIO(ctx.jitsi_keyring),
                                 dest=JITSI_KEYRING, mode="644"))
        sources.append(files.put(name="Jitsi apt source", src=io.StringIO(
            jitsi_source(ctx.spec.jitsi.apt_repo, ctx.spec.jitsi.apt_suite)), dest=JITSI_SOURCE, mode="644"))
    update = apt.update(name="apt update", cache_time=APT_CACHE_SECONDS)
    if sources:
        # A new or changed source needs its lists now, whatever the cache age (once, not twice).
        server.shell(name="apt update (sources changed)", commands=["apt-get update -qq"],
                     _if=[any_changed(*sources), lambda: not update.did_change()])
    if ctx.debconf:
        preseed = files.put(name="debconf preseed", src=io.StringIO(ctx.debconf),
                            dest="/etc/ensemble/debconf.preseed", mode="600", create_remote_dir=True)
        server.shell(name="debconf-set-selections", commands=["debconf-set-selections /etc/ensemble/debconf.preseed"],
                     _if=preseed.did_change)
    apt.packages(name=f"install {len(ctx.packages)} packages", packages=ctx.packages, no_recommends=True)
    files.put(name="unattended upgrades", src=io.StringIO(auto_upgrades_conf()),
              dest="/etc/apt/apt.conf.d/20auto-upgrades", mode="644")
    firewall = files.put(name="firewall rules", src=io.StringIO(nftables_conf(ctx.ssh_cidrs)),
                         dest="/etc/nftables.conf", mode="755")
    systemd.service(name="nftables enabled", service="nftables", enabled=True)
    server.shell(name="firewall load", commands=["nft -f /etc/nftables.conf"], _if=firewall.did_change)
    sysctl = files.put(name="sysctl JVB UDP buffers", src=io.StringIO(sysctl_conf()), dest=SYSCTL_FILE,
                       mode="644")
    # Containers cannot set net.core.* (EINVAL): apply where the kernel lets us, never fail on it.
    server.shell(name="sysctl apply (tolerant in containers)",
                 commands=[f"sysctl -q -p {SYSCTL_FILE} || echo 'sysctl not applied (container?)'"],
                 _if=sysctl.did_change)
