"""Base of every host (hostname, apt sources and one batched install, unattended upgrades, firewall,
sysctl, secrets), and the one helper every component uses to put ensemble's rendered files and
restart a service only when one of its files changed (`put_files`).

Components generate no file of their own: every file comes from the host's DeployContext, rendered
by `ensemble.render` (base files by `ensemble.hostfiles`), so a deploy writes exactly what
`ensemble render` shows.

Example::

    @deploy("Shard")
    def shard(ctx):
        base(ctx)          # ctx: ensemble.contexts.DeployContext
"""

from __future__ import annotations

import hashlib
import io
import shlex

from pyinfra import host
from pyinfra.api import FactBase, deploy, operation
from pyinfra.facts.deb import DebPackages
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from ensemble import paths
from ensemble.contexts import DeployContext
from ensemble.hostfiles import PROSODY_SOURCE, peers_lines

APT_CACHE_SECONDS = 3600
SOURCES = (paths.APT_DIRECT_FILE, paths.JITSI_KEYRING, paths.JITSI_SOURCE, PROSODY_SOURCE)
# Files replaced whole or not at all: written to a new copy (private from its first byte), checked,
# then renamed over the live file. A run killed half-way leaves the old file, never a truncated one.
# {path: (new copy, check run on the copy or None)}
REPLACED_ATOMICALLY = {
    paths.SECRETS_FILE: (f"{paths.SECRETS_FILE}.new", None),
    # a ruleset nft rejects never reaches the file nftables.service loads at boot
    paths.NFTABLES_CONF: (paths.NFTABLES_CANDIDATE, "nft -c -f {new}"),
}

__all__ = ["DeployContext", "base", "put_files", "restart_on_change"]


# ---- actions ----

def file_state_command(file_paths: list[str]) -> str:
    """One remote command telling mode, owner, group and sha256 of many files (missing ones are left out).

    Example::

        file_state_command(["/etc/a.conf"])   # "stat -c '%a %U %G %n' /etc/a.conf 2>/dev/null; echo ::; ..."
    """
    quoted = " ".join(shlex.quote(p) for p in file_paths)
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
        wanted = [f"{item.mode:o}", item.owner, item.group, hashlib.sha256(item.data).hexdigest()]
        if found.get(item.path) != wanted:
            stale.append(item)
    return stale


def put_files(rendered: list, *, also_changed: dict[str, list] | None = None) -> dict[str, object]:
    """Put the rendered files that differ on the host, then restart (nginx: reload) each file's service
    if one of its files changed.

    One remote command compares every file first (instead of two facts per file): a re-run with
    nothing to do costs one command here. also_changed adds other operations (a link, a certificate)
    that should restart a service too. Returns {path: files.put operation} for the files put.

    Example::

        put_files(ctx.files_of("jicofo"))
    """
    state = host.get_fact(Command, command=file_state_command([f.path for f in rendered])) if rendered else ""
    puts: dict[str, object] = {}
    by_service: dict[str, list] = {name: list(ops) for name, ops in (also_changed or {}).items()}
    for item in stale_files(rendered, state):
        if item.path in REPLACED_ATOMICALLY:
            op = put_atomically(item, *REPLACED_ATOMICALLY[item.path])
        else:
            op = files.put(
                name=f"{item.component}: {item.path}",
                src=io.BytesIO(item.data), dest=item.path, mode=f"{item.mode:o}",
                user=item.owner, group=item.group, create_remote_dir=True,
            )
        puts[item.path] = op
        if item.path.endswith((".service", ".timer")) or ".service.d/" in item.path:
            systemd.daemon_reload(name=f"systemd reload ({item.path})", _if=op.did_change)
        if item.service:
            by_service.setdefault(item.service, []).append(op)
    for item in rendered:
        if item.service:
            by_service.setdefault(item.service, [])  # kept running even when none of its files changed
    for service, ops in by_service.items():
        restart_on_change(service, ops, reload=service == "nginx")
    return puts


def swap_command(new: str, live: str, check: str | None = None) -> str:
    """Check the new copy (if asked), flush it to disk, rename it over the live file; on a failed check
    remove the copy and fail, leaving the live file as it was.

    Example::

        swap_command("/etc/ensemble/nftables.conf.new", "/etc/nftables.conf", "nft -c -f {new}")
        # "nft -c -f '/etc/...new' || { rc=$?; rm -f ...; exit $rc; }; sync ... && mv -f ... /etc/nftables.conf"
    """
    q_new, q_live = shlex.quote(new), shlex.quote(live)
    checked = f"{check.format(new=q_new)} || {{ rc=$?; rm -f {q_new}; exit $rc; }}; " if check else ""
    return f"{checked}sync {q_new} && mv -f {q_new} {q_live}"


def put_atomically(item, new: str, check: str | None) -> object:
    """Put a rendered file through a new copy: created empty and private first (umask 077, so the bytes
    are never readable by others, even for a moment), filled, given its mode/owner, checked, renamed.
    Returns the rename operation (its did_change is the file's).

    Example::

        put_atomically(nftables_file, "/etc/ensemble/nftables.conf.new", "nft -c -f {new}")
    """
    folders = sorted({new.rsplit("/", 1)[0], item.path.rsplit("/", 1)[0]})
    server.shell(name=f"{item.component}: new copy of {item.path}", commands=[
        f"mkdir -p {' '.join(shlex.quote(f) for f in folders)} && (umask 077 && : > {shlex.quote(new)})"])
    files.put(name=f"{item.component}: {item.path} (new copy)", src=io.BytesIO(item.data), dest=new,
              mode=f"{item.mode:o}", user=item.owner, group=item.group)
    return server.shell(name=f"{item.component}: {item.path}", commands=[swap_command(new, item.path, check)])


class ServiceActiveState(FactBase):
    """systemd's ActiveState of a unit ("active", "reloading", "inactive", "failed", ...).

    Example::

        host.get_fact(ServiceActiveState, service="nginx")   # "active"
    """

    def command(self, service: str) -> str:
        return f"systemctl show --property=ActiveState --value {shlex.quote(service)}"

    def process(self, output: list[str]) -> str:
        return output[0].strip() if output else ""


# A unit reloading is running: pyinfra's own check reads SubState, where a reload ("reload") counts as
# stopped, so a deploy meeting the front door's refresher mid-reload started nginx again and reported a change.
RUNNING_STATES = ("active", "reloading")


@operation()
def service_running(service: str):
    """Start `service` unless systemd has it active or reloading.

    Example::

        service_running(name="nginx running", service="nginx")
    """
    state = host.get_fact(ServiceActiveState, service=service)
    if state in RUNNING_STATES:
        host.noop(f"{service} is {state}")
        return
    yield f"systemctl start {shlex.quote(service)}"


def restart_on_change(service: str, ops: list, *, reload: bool = False) -> None:
    """Keep a service enabled and running; restart/reload it only when one of ops changed.

    Example::

        restart_on_change("prosody", [vhost_put])
    """
    systemd.service(name=f"{service} enabled", service=service, running=None, enabled=True)
    service_running(name=f"{service} running", service=service)
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
    early = put_files(ctx.files_of("secrets", "apt"))  # before the install: sources, keyrings, debconf
    sources = [op for path, op in early.items() if path in SOURCES]
    # an upgrade reads fresh package lists; a deploy trusts lists younger than an hour
    update = apt.update(name="apt update", cache_time=None if ctx.upgrade_packages else APT_CACHE_SECONDS)
    if sources:
        # A new or changed source needs its lists now, whatever the cache age (once, not twice).
        server.shell(name="apt update (sources changed)", commands=["apt-get update -qq"],
                     _if=[any_changed(*sources), lambda: not update.did_change()])
    if ctx.files_of("apt") and any(f.path == paths.DEBCONF_PRESEED for f in ctx.files):
        # the answers must be in debconf before Jitsi's packages first install, even if an earlier run
        # put the file and stopped before this step (DebPackages: the fact apt.packages reads anyway)
        preseed = early.get(paths.DEBCONF_PRESEED)
        first_install = "jitsi-meet" not in (host.get_fact(DebPackages) or {})
        server.shell(name="debconf-set-selections", commands=[f"debconf-set-selections {paths.DEBCONF_PRESEED}"],
                     _if=lambda: first_install or bool(preseed and preseed.did_change()))
    # `ensemble upgrade` (upgrade_packages) takes the newest packages on a drained shard; a plain
    # deploy installs what is missing and never upgrades under live meetings
    apt.packages(name=f"{'upgrade' if ctx.upgrade_packages else 'install'} {len(ctx.packages)} packages",
                 packages=ctx.packages, no_recommends=True, latest=ctx.upgrade_packages)
    late = put_files(ctx.files_of("upgrades", "firewall", "sysctl"))
    systemd.service(name="nftables enabled", service="nftables", enabled=True)
    if paths.NFTABLES_CONF in late:
        server.shell(name="firewall load", commands=[f"nft -f {paths.NFTABLES_CONF}"],
                     _if=late[paths.NFTABLES_CONF].did_change)
    if paths.SYSCTL_FILE in late:
        # Containers cannot set net.core.* (EINVAL): apply where the kernel lets us, never fail on it.
        server.shell(name="sysctl apply (tolerant in containers)",
                     commands=[f"sysctl -q -p {paths.SYSCTL_FILE} || echo 'sysctl not applied (container?)'"],
                     _if=late[paths.SYSCTL_FILE].did_change)
