"""The `local` provider: real throwaway Debian hosts as systemd-nspawn containers on this machine.

Each host is a container booting real systemd with sshd, its root filesystem restored from a cached
debootstrap tarball onto a tmpfs, its own address on a bridge made for the fleet, fresh SSH host keys
pinned in the fleet's known_hosts. Hosts are found again from their folders under
`<state_dir>/<fleet>/hosts/<machine>/` (the folder is the host: no state file to lose).

Layout (one host's folder is described in localcontainer.py)::

    <state_dir>/<fleet>/hosts/            tmpfs; one folder per host: rootfs/, host.json, nspawn.pid, nspawn.log
    <state_dir>/<fleet>/run/              pids and configs of the proxies and file servers
    /var/lib/ensemble/local/<fleet>/      0700: id_ed25519 (the fleet's SSH key), known_hosts
    /run/ensemble-local/<bridge>.json     which fleet folder owns a bridge, and the live processes using it
    /run/ensemble-local/<bridge>.lock     orders set-up and clean-up of one fleet across processes
    /run/ensemble-local/cleanup.log       what cleanup_stale removed, when, by which process

Environment knobs (defaults in brackets): ENSEMBLE_LOCAL_KEYS [/var/lib/ensemble/local],
ENSEMBLE_LOCAL_REGISTRY [/run/ensemble-local], ENSEMBLE_LOCAL_TMPFS_SIZE [16g, per fleet, only what is
used counts], ENSEMBLE_LOCAL_SSH_TIMEOUT [120 seconds per host].

Example::

    provider = LocalProvider(spec)
    hosts = provider.ensure_hosts(spec, progress=print)
    env = provider.deploy_environment(spec)     # Jitsi from the stand-in repository, npm through the proxy
    provider.destroy_all(spec)
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import EnsembleError, SpecError, UsageError
from ensemble.providers import localnet
from ensemble.providers.base import DeployEnv, Host, Progress
from ensemble.providers.hostkeys import edit_known_hosts
from ensemble.providers.localcontainer import (
    PlannedHost,
    console_tail,
    container_processes,
    host_key_lines,
    host_side_veth,
    is_mountpoint,
    machine_name,
    nspawn_argv,
    nspawn_pid,
    planned_hosts,
    read_record,
    stop_container,
    write_identity,
    write_record,
)
from ensemble.providers.localimage import (
    check_suite,
    ensure_image,
    file_lock,
    mirror_for_suite,
    mounts_under,
    remove_tree,
)
from ensemble.providers.localnet import LocalNetwork, plan_network, process_alive
from ensemble.spec import EtherpadSection
from ensemble.ssh import HostKeyChanged, SSHError, wait_until_reachable

if TYPE_CHECKING:
    from ensemble.spec import FleetSpec

__all__ = ["LOCAL_ETHERPAD_SOURCE", "PRODUCTION_JITSI_REPO", "LocalProvider", "container_processes", "machine_name",
           "mounts_under", "suite_of", "suite_of_role"]

KEYS_ROOT = Path(os.environ.get("ENSEMBLE_LOCAL_KEYS", "/var/lib/ensemble/local"))
REGISTRY = Path(os.environ.get("ENSEMBLE_LOCAL_REGISTRY", "/run/ensemble-local"))
TMPFS_SIZE = os.environ.get("ENSEMBLE_LOCAL_TMPFS_SIZE", "16g")
SSH_TIMEOUT = float(os.environ.get("ENSEMBLE_LOCAL_SSH_TIMEOUT", "120"))
REQUIRED_TOOLS = (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"), ("zstd", "zstd"),
                  ("apt-cacher-ng", "apt-cacher-ng"), ("tinyproxy", "tinyproxy"), ("ip", "iproute2"),
                  ("ssh-keygen", "openssh-client"), ("unshare", "util-linux"), ("nsenter", "util-linux"))
# What a deploy on local hosts takes instead of what they cannot reach (see LocalProvider.deploy_environment).
PRODUCTION_JITSI_REPO = "https://download.jitsi.org"
LOCAL_ETHERPAD_SOURCE = "npm:ep_etherpad-lite@1.8.14"


# ---- facts ----

def suite_of(spec: FleetSpec) -> str:
    """The Debian suite of the fleet's containers; a SpecError when the mirror lacks it.

    Example::

        suite_of(default_spec())   # "bookworm"
    """
    configured = spec.provider.local.suite
    if configured:
        try:
            check_suite(configured, spec.fleet.os)
        except SpecError as exc:
            raise SpecError("provider.local.suite", exc.args[0].split(": ", 1)[1]) from None
        return configured
    check_suite(spec.profile.codename, spec.fleet.os)
    return spec.profile.codename


def suite_of_role(spec: FleetSpec, role: str) -> str:
    """The Debian suite of one role's containers: `provider.local.frontdoor_suite` for the front door
    when set (a test switch: e.g. a bullseye front door beside bookworm shards, bullseye's shards
    needing prosody.im, which is out of reach here), else the fleet's (`suite_of`).

    Example::

        suite_of_role(default_spec(), "frontdoor")   # "bookworm"
    """
    configured = spec.provider.local.frontdoor_suite
    if role == "frontdoor" and configured:
        try:
            check_suite(configured, spec.fleet.os)
        except SpecError as exc:
            raise SpecError("provider.local.frontdoor_suite", exc.args[0].split(": ", 1)[1]) from None
        return configured
    return suite_of(spec)


def fleet_lock(bridge: str):
    """The lock that orders network set-up, serving and clean-up of one fleet across processes.

    Example::

        with fleet_lock("ens-2a9751"):
            ...
    """
    return file_lock(REGISTRY / f"{bridge}.lock")


@contextmanager
def terminate_as_exit():
    """Within the block, SIGTERM raises SystemExit (so cleanup code runs) instead of killing outright.

    Only in the main thread (where Python delivers signals); the previous handler is put back after.

    Example::

        with terminate_as_exit():
            create_things()      # a SIGTERM here unwinds through its finally/except blocks
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum, _frame):
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ---- the fleet's folder: only what ensemble made is ever removed ----

FLEET_MARKER = ".ensemble-fleet"  # written when ensemble makes <state_dir>/<fleet>; destroy needs it
_MADE_BEFORE_MARKERS = {"hosts", "run"}  # a fleet folder made before markers holds only these


def check_state_dir(value: str) -> str:
    """provider.local.state_dir, refused unless absolute and normalised (no `..`, not `/`).

    Example::

        check_state_dir("/run/ensemble")     # "/run/ensemble"; "run/ensemble" -> SpecError
    """
    path = Path(value)
    if not value or not path.is_absolute() or ".." in path.parts or str(path) == "/" \
            or any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise SpecError("provider.local.state_dir", f"must be an absolute path below / without '..', got {value!r}")
    return value


def made_by_ensemble(fleet_dir: Path) -> bool:
    """True when ensemble made this fleet folder: its marker is there (or, made before markers existed,
    it holds nothing but ensemble's own `hosts` and `run`)."""
    if (fleet_dir / FLEET_MARKER).is_file() and not (fleet_dir / FLEET_MARKER).is_symlink():
        return True
    try:
        return {p.name for p in fleet_dir.iterdir()} <= _MADE_BEFORE_MARKERS
    except OSError:
        return False


def claim_fleet_dir(fleet_dir: Path) -> None:
    """Make the fleet's folder with its marker; refuse a folder that exists and is not ensemble's."""
    if fleet_dir.is_symlink() or (fleet_dir.exists() and not fleet_dir.is_dir()):
        raise SpecError("provider.local.state_dir", f"{fleet_dir} exists and is not a folder ensemble made")
    if fleet_dir.exists() and not made_by_ensemble(fleet_dir):
        raise SpecError("provider.local.state_dir", f"{fleet_dir} exists and was not made by ensemble "
                        f"(no {FLEET_MARKER}); pick another state_dir or fleet.name")
    fleet_dir.mkdir(parents=True, exist_ok=True)
    marker = fleet_dir / FLEET_MARKER
    if not marker.is_file():
        marker.write_text(json.dumps({"made_by": "ensemble", "fleet": fleet_dir.name,
                                      "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")


# ---- the provider ----

class LocalProvider:
    """Hosts of a fleet as systemd-nspawn containers on this machine (needs root).

    Example::

        provider = LocalProvider(spec)
        hosts = provider.ensure_hosts(spec)
        provider.network(spec).apt_proxy_url     # "http://10.151.42.1:3142"
    """

    name = "local"
    account = "local"  # this machine

    def __init__(self, spec: FleetSpec | None = None, keys_root: Path | None = None):
        self.keys_root = keys_root or KEYS_ROOT

    # -- paths --

    def fleet_dir(self, spec: FleetSpec) -> Path:
        """<state_dir>/<fleet>; a SpecError unless state_dir is an absolute, normalised path.

        Example::

            LocalProvider().fleet_dir(spec)     # Path("/run/ensemble/demo")
        """
        return Path(check_state_dir(spec.provider.local.state_dir)) / spec.fleet.name

    def hosts_dir(self, spec: FleetSpec) -> Path:
        return self.fleet_dir(spec) / "hosts"

    def keys_dir(self, spec: FleetSpec) -> Path:
        return self.keys_root / spec.fleet.name

    def ssh_key(self, spec: FleetSpec) -> Path:
        return self.keys_dir(spec) / "id_ed25519"

    def known_hosts(self, spec: FleetSpec) -> Path:
        return self.keys_dir(spec) / "known_hosts"

    def network(self, spec: FleetSpec) -> LocalNetwork:
        """The fleet's network facts (bridge, gateway, subnet, proxy URLs)."""
        return plan_network(spec.fleet.name, spec.provider.local.subnet)

    # -- checks --

    @staticmethod
    def check_machine() -> None:
        """Root and the tools, or a one-line error naming what to do."""
        if os.geteuid() != 0:
            raise UsageError("the local provider needs root (systemd-nspawn, bridges)")
        for tool, package in REQUIRED_TOOLS:
            localnet.require_tool(tool, package)

    # -- listing --

    def list_hosts(self, spec: FleetSpec) -> list[Host]:
        """The fleet's running, ready hosts, shards by number then the front door."""
        hosts = []
        root = self.hosts_dir(spec)
        for folder in sorted(root.iterdir()) if root.is_dir() else []:
            record = read_record(folder)
            if record and record.get("ready") and nspawn_pid(folder):
                hosts.append(self._host_from_record(spec, record))
        return sorted(hosts, key=lambda h: (h.shard is None, h.shard or 0, h.name))

    def _host_from_record(self, spec: FleetSpec, record: dict) -> Host:
        return Host(name=record["name"], role=record["role"], shard=record["shard"], address=record["address"],
                    ssh_key=str(self.ssh_key(spec)), known_hosts=str(self.known_hosts(spec)),
                    public_ipv4=record["address"], private_ipv4=record["address"], provider_id=record["machine"],
                    labels={**{k: str(v) for k, v in (record.get("labels") or {}).items()},
                            "machine": record["machine"], "suite": record["suite"], "provider": "local"})

    # -- creating --

    def ensure_hosts(self, spec: FleetSpec, progress: Progress = None,
                     labels: dict[str, str] | None = None) -> list[Host]:
        """Create the hosts the spec asks for that do not run yet (in parallel); return all running hosts.

        `progress` is called with one line of text per step, if given; hosts created keep `labels` in
        their record (the fleet's identity).
        """
        say = progress or (lambda _line: None)
        self.check_machine()
        suites = {role: suite_of_role(spec, role) for role in ("shard", "frontdoor")}
        self.cleanup_stale(progress=say)  # what a crashed earlier run left behind
        net = self.network(spec)
        wanted = planned_hosts(spec, net)
        tarballs = {suite: ensure_image(suite, Path(spec.provider.local.cache_dir),
                                        mirror_for_suite(spec.provider.local.mirror), progress=say)
                    for suite in sorted(set(suites.values()))}
        self.ensure_network(spec)
        self._ensure_ssh_key(spec)
        with file_lock(self.keys_dir(spec) / ".create.lock"):  # two runs on one fleet create each host once
            running = {h.name for h in self.list_hosts(spec)}
            missing = [h for h in wanted if h.name not in running]
            if missing:
                say(f"creating {len(missing)} host(s): {', '.join(h.name for h in missing)}")
                cancel = threading.Event()
                with terminate_as_exit(), ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                    futures = {h.name: pool.submit(self._create_host, spec, h, suites[h.role],
                                                   tarballs[suites[h.role]], net, say, cancel, dict(labels or {}))
                               for h in missing}
                    try:
                        while not all(f.done() for f in futures.values()):
                            time.sleep(0.1)
                    except BaseException:  # Ctrl-C or SIGTERM: the threads remove the hosts they were making
                        cancel.set()
                        raise
                failures = [f"{name}: {fut.exception()}" for name, fut in futures.items() if fut.exception()]
                if failures:
                    raise EnsembleError("local hosts failed to start: " + "; ".join(failures))
        return self.list_hosts(spec)

    def ensure_network(self, spec: FleetSpec) -> LocalNetwork:
        """Bridge, host tmpfs, apt proxy and npm proxy of the fleet (idempotent, safe for concurrent runs)."""
        self.check_machine()
        net = self.network(spec)
        with fleet_lock(net.bridge):
            claim_fleet_dir(self.fleet_dir(spec))
            self._claim_network(spec, net)
            hosts_dir = self.hosts_dir(spec)
            hosts_dir.mkdir(parents=True, exist_ok=True)
            if not is_mountpoint(hosts_dir):
                # root filesystems on tmpfs: restore in 0.4 s instead of seconds, dpkg's fsyncs are free
                subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE},mode=0755",
                                f"ensemble-{net.bridge}", str(hosts_dir)], check=True)
            localnet.bridge_up(net)
            localnet.start_services(net, self.fleet_dir(spec), Path(spec.provider.local.cache_dir) / "apt-cacher-ng")
        return net

    def _claim_network(self, spec: FleetSpec, net: LocalNetwork) -> None:
        """Record that this process uses the fleet's network, before the bridge exists: cleanup_stale of
        another run then never takes it for an orphan, nor tears it down while a user lives."""
        entry = REGISTRY / f"{net.bridge}.json"
        try:
            users = [pid for pid in json.loads(entry.read_text()).get("pids", []) if process_alive(pid)]
        except (OSError, ValueError):
            users = []
        partial = entry.with_name(entry.name + ".part")
        partial.write_text(json.dumps({"fleet": spec.fleet.name, "fleet_dir": str(self.fleet_dir(spec)),
                                       "keys_dir": str(self.keys_dir(spec)),
                                       "pids": sorted(set(users) | {os.getpid()})}))
        os.replace(partial, entry)

    def serve_directory(self, spec: FleetSpec, name: str, path: str | Path) -> str:
        """Serve a folder over HTTP on the fleet's gateway (stopped with the fleet); return its URL.

        Example::

            provider.serve_directory(spec, "jitsi-repo", "/tmp/repo")   # "http://10.151.42.1:40123/"
        """
        if not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,30}", name):
            raise UsageError(f"serve_directory name: lower-case a-z0-9-, got {name!r}")
        if not Path(path).is_dir():
            raise UsageError(f"serve_directory path: not a folder: {path}")
        net = self.ensure_network(spec)
        with fleet_lock(net.bridge):
            return localnet.serve_directory(net, self.fleet_dir(spec), name, Path(path))

    def _ensure_ssh_key(self, spec: FleetSpec) -> Path:
        keys = self.keys_dir(spec)
        keys.mkdir(parents=True, exist_ok=True)
        os.chmod(keys, 0o700)
        key = self.ssh_key(spec)
        with file_lock(keys / ".lock"):
            if not key.exists():
                subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"ensemble-{spec.fleet.name}",
                                "-f", str(key)], check=True)
            os.chmod(key, 0o600)
            self.known_hosts(spec).touch(mode=0o600, exist_ok=True)
        return key

    def _create_host(self, spec: FleetSpec, planned: PlannedHost, suite: str, tarball: Path,
                     net: LocalNetwork, say, cancel: threading.Event, labels: dict[str, str]) -> Host:
        machine = machine_name(spec.fleet.name, planned.name)
        folder = self.hosts_dir(spec) / machine
        started = time.monotonic()
        if folder.exists():  # leftovers of a dead host: start afresh
            self._remove_host(self.known_hosts(spec), folder)
        folder.mkdir(parents=True)
        try:
            return self._make_host(spec, planned, suite, tarball, net, say, cancel, folder, started, labels)
        except BaseException:
            self._remove_host(self.known_hosts(spec), folder)  # nothing half-made stays behind
            raise

    def _make_host(self, spec: FleetSpec, planned: PlannedHost, suite: str, tarball: Path, net: LocalNetwork,
                   say, cancel: threading.Event, folder: Path, started: float, labels: dict[str, str]) -> Host:
        rootfs = folder / "rootfs"
        machine = folder.name
        record = {"name": planned.name, "role": planned.role, "shard": planned.shard, "address": planned.address,
                  "machine": machine, "suite": suite, "bridge": net.bridge, "ready": False,
                  "creator": os.getpid(), "machine_id": os.urandom(16).hex(), "labels": labels}
        write_record(folder, record)  # first, so cleanup_stale can find what a killed run left
        rootfs.mkdir()
        subprocess.run(f"zstd -dc {tarball} | tar -C {rootfs} --numeric-owner -xf -", shell=True, check=True)
        write_identity(rootfs, planned, net, record["machine_id"], Path(f"{self.ssh_key(spec)}.pub").read_text())
        # the keys just generated are the host's: pinned before it boots, checked strictly from the first login
        edit_known_hosts(self.known_hosts(spec), {planned.name, planned.address}, host_key_lines(planned, rootfs))
        if cancel.is_set():
            raise EnsembleError(f"{planned.name}: creation interrupted")
        with open(folder / "nspawn.log", "wb") as log:
            proc = subprocess.Popen(nspawn_argv(rootfs, machine, net.bridge), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        (folder / "nspawn.pid").write_text(f"{proc.pid}\n")
        self._wait_for_ssh(self._host_from_record(spec, record), proc, folder, cancel)
        record["veth"] = host_side_veth(record["machine_id"])
        record["ready"] = True
        write_record(folder, record)
        say(f"{planned.name} up at {planned.address} in {time.monotonic() - started:.1f} s")
        return self._host_from_record(spec, record)

    @staticmethod
    def _wait_for_ssh(host: Host, proc: subprocess.Popen, folder: Path, cancel: threading.Event) -> None:
        """Until sshd answers with the pinned key; a clear error with the console tail if the container dies."""

        def give_up() -> str | None:
            if cancel.is_set():
                return f"{host.name}: creation interrupted"
            if proc.poll() is not None:
                return f"container of {host.name} exited ({proc.returncode}): {console_tail(folder)}"
            return None

        try:
            wait_until_reachable(host, SSH_TIMEOUT, interval=0.3, attempt_timeout=5.0, connect_timeout=2.0,
                                 give_up=give_up)
        except HostKeyChanged:
            raise
        except SSHError as exc:
            if proc.poll() is not None or cancel.is_set():
                raise EnsembleError(give_up() or exc.reason) from None
            raise EnsembleError(f"{host.name} ({host.address}): no SSH after {SSH_TIMEOUT:.0f} s "
                                f"({exc.reason}); console: {console_tail(folder)}") from None

    # -- destroying --

    def destroy(self, spec: FleetSpec, hosts: list[Host], progress: Progress = None) -> None:
        """Stop these hosts cleanly and remove their folders, veths and known_hosts entries."""
        say = progress or (lambda _line: None)
        self.check_machine()
        self._refuse_foreign(spec)
        folders = [self.hosts_dir(spec) / machine_name(spec.fleet.name, h.name) for h in hosts]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(folders)))) as pool:
            list(pool.map(lambda folder: self._remove_host(self.known_hosts(spec), folder, say), folders))

    def _refuse_foreign(self, spec: FleetSpec) -> None:
        fleet_dir = self.fleet_dir(spec)
        if fleet_dir.exists() and not made_by_ensemble(fleet_dir):
            raise SpecError("provider.local.state_dir", f"{fleet_dir} was not made by ensemble (no {FLEET_MARKER}); "
                            "nothing removed")

    def _remove_host(self, known_hosts: Path, folder: Path, say=None) -> None:
        record = read_record(folder) or {}
        if not record.get("machine_id"):  # a record cut short: the rootfs still knows the container's id
            try:
                record["machine_id"] = (folder / "rootfs/etc/machine-id").read_text().strip()
            except OSError:
                pass
        started = time.monotonic()
        stop_container(folder, record)
        veth = record.get("veth")
        if veth and localnet.link_exists(veth):  # normally gone with the container's network namespace
            localnet.run_ip("link", "del", veth, check=False)
        if nspawn_pid(folder) or container_processes(record.get("machine_id", "")):
            raise EnsembleError(f"the container of {record.get('name', folder.name)} is still running; "
                                f"not removing {folder}")
        leftovers = mounts_under(folder)
        if leftovers:
            raise EnsembleError(f"mounts left under {folder}: {', '.join(leftovers)}; not removing it")
        shutil.rmtree(folder / "rootfs", ignore_errors=True)
        shutil.rmtree(folder, ignore_errors=True)  # host.json goes last: a removal cut short is found again
        if record.get("name"):
            edit_known_hosts(known_hosts, {record["name"], record["address"]}, [])
        if say and record.get("name"):
            say(f"{record['name']} destroyed in {time.monotonic() - started:.1f} s")

    def destroy_all(self, spec: FleetSpec, progress: Progress = None) -> None:
        """Every host of the fleet, its proxies and file servers, its bridge, tmpfs and folders."""
        self.check_machine()
        self._refuse_foreign(spec)
        hosts_dir = self.hosts_dir(spec)
        folders = sorted(p for p in hosts_dir.iterdir() if p.is_dir()) if hosts_dir.is_dir() else []
        say = progress or (lambda _line: None)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(folders)))) as pool:
            list(pool.map(lambda folder: self._remove_host(self.known_hosts(spec), folder, say), folders))
        bridge = self.network(spec).bridge
        with fleet_lock(bridge):
            self._teardown_fleet(self.fleet_dir(spec), bridge, self.known_hosts(spec))

    @staticmethod
    def _teardown_fleet(fleet_dir: Path, bridge: str, known_hosts: Path | None) -> None:
        localnet.stop_services(fleet_dir)
        localnet.bridge_down(bridge)
        if fleet_dir.exists() and not made_by_ensemble(fleet_dir):
            raise EnsembleError(f"provider.local.state_dir: {fleet_dir} was not made by ensemble (no {FLEET_MARKER}); "
                                "not removing it")
        remove_tree(fleet_dir)  # unmounts the hosts' tmpfs first
        if known_hosts is not None:
            known_hosts.unlink(missing_ok=True)
        (REGISTRY / f"{bridge}.json").unlink(missing_ok=True)

    # -- crash recovery --

    def cleanup_stale(self, progress: Progress = None, *, dry_run: bool = False) -> list[str]:
        """Remove what dead runs left: hosts whose container or creator died, fleets with nothing alive,
        bridges no fleet owns. Returns what was removed (one line each); `dry_run` only says what would be.

        Never touches what a live run uses: a host being created by a live process, a network a live process
        claimed. Removals are appended to <registry>/cleanup.log (when, which process, what).

        Example::

            LocalProvider().cleanup_stale()   # ["host demo-1.meet.test (container gone)", "bridge ens-2a9751"]
        """
        self.check_machine()
        removed: list[str] = []
        entries = sorted(REGISTRY.glob("ens-*.json")) if REGISTRY.is_dir() else []
        for entry in entries:
            with fleet_lock(entry.stem):
                try:
                    owner = json.loads(entry.read_text())  # read again under the lock
                except (OSError, ValueError):
                    continue
                removed += self._cleanup_fleet(entry.stem, owner, dry_run)
        bridges = localnet.bridges_of_provider()  # before the claims: a claim is written before its bridge
        claimed = {e.stem for e in REGISTRY.glob("ens-*.json")} if REGISTRY.is_dir() else set()
        for bridge in bridges:
            if bridge not in claimed:
                if not dry_run:
                    localnet.bridge_down(bridge)
                removed.append(f"bridge {bridge} (no fleet)")
        if removed and not dry_run:  # an audit trail: what a run removed, when, and which run did
            REGISTRY.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(REGISTRY / "cleanup.log", "a") as log:
                log.writelines(f"{stamp} pid {os.getpid()}: {line}\n" for line in removed)
        for line in removed:
            if progress:
                progress(f"{'would clean up' if dry_run else 'cleaned up'} {line}")
        return removed

    def _cleanup_fleet(self, bridge: str, owner: dict, dry_run: bool) -> list[str]:
        fleet_dir = Path(owner["fleet_dir"])
        known_hosts = Path(owner["keys_dir"]) / "known_hosts"
        removed, alive = [], 0
        if fleet_dir.exists() and not made_by_ensemble(fleet_dir):
            return []  # the registry names a folder ensemble did not make: never delete anything in it
        hosts_dir = fleet_dir / "hosts"
        for folder in sorted(p for p in hosts_dir.iterdir() if p.is_dir()) if hosts_dir.is_dir() else []:
            try:
                record = read_record(folder) or {}
                reason = self._stale_reason(folder, record)
            except FileNotFoundError:  # removed meanwhile by the run that owns it: nothing left to clean
                continue
            if reason is None:
                alive += 1
                continue
            if not dry_run:
                self._remove_host(known_hosts, folder)
            removed.append(f"host {record.get('name', folder.name)} ({reason})")
        if alive == 0 and not any(process_alive(pid) for pid in owner.get("pids", [])):
            if not dry_run:
                self._teardown_fleet(fleet_dir, bridge, known_hosts)
            removed.append(f"fleet {owner['fleet']} network ({bridge})")
        return removed

    @staticmethod
    def _stale_reason(folder: Path, record: dict) -> str | None:
        if not record:  # a folder without host.json: a removal cut short (or a create in its first instant)
            return "removal interrupted" if time.time() - folder.stat().st_mtime > 60 else None
        if record.get("ready"):
            return None if nspawn_pid(folder) else "container gone"
        creator = record.get("creator")
        if creator and process_alive(int(creator)):
            return None  # still being created by a live run
        return "creation interrupted"

    def janitor(self, older_than_seconds: float, tags: list[str], *, dry_run: bool = False,
                progress: Progress = None) -> list[str]:
        """What dead or interrupted runs left on this machine, removed (`cleanup_stale`); `dry_run` only lists it.

        Local resources carry no tags: with `tags` given nothing matches and nothing is removed. The age
        threshold is not needed here: a resource is stale when the process that made or used it is dead
        (known for sure on one machine), never merely because it is old, and a live run's are never touched.

        Example::

            LocalProvider().janitor(7200, [], dry_run=True)   # ["host demo-1.meet.test (container gone)"]
        """
        if tags:
            if progress:
                progress(f"janitor: local hosts and networks carry no tags; nothing has {', '.join(tags)}")
            return []
        return self.cleanup_stale(progress=progress, dry_run=dry_run)

    # -- what a deploy on these hosts needs --

    def deploy_environment(self, spec: FleetSpec) -> DeployEnv:
        """Local hosts reach nothing but their bridge: Jitsi's packages come from the stand-in repository this
        provider serves (download.jitsi.org is out of reach), Etherpad from npm through the fleet's proxy
        (GitHub is out of reach; npm checks the package's integrity), SSH from the bridge subnet, and every
        host gets the others in /etc/hosts. A spec naming its own Jitsi repository or Etherpad source keeps it.
        Serving the repository brings the fleet's network up (root).

        Example::

            env = LocalProvider(spec).deploy_environment(spec)
            env.spec.jitsi.apt_repo, env.admin_cidrs          # ("http://10.151.42.1:40123", ["10.151.42.0/24"])
        """
        net = self.network(spec)
        if spec.jitsi.apt_repo == PRODUCTION_JITSI_REPO:
            from ensemble.standins.jitsi_repo import build_standin_repo

            repo = build_standin_repo()
            url = self.serve_directory(spec, "jitsi-standin", repo.path).rstrip("/")
            jitsi = replace(spec.jitsi, apt_repo=url, apt_suite=repo.suite, apt_key_url=repo.key_url(url),
                            apt_key_fingerprint=repo.key_fingerprint)
            spec = replace(spec, jitsi=jitsi)
        if spec.etherpad.source_url == EtherpadSection().source_url:
            spec = replace(spec, etherpad=replace(spec.etherpad, source_url=LOCAL_ETHERPAD_SOURCE, sha256=""))
        direct = urllib.parse.urlsplit(spec.jitsi.apt_repo).hostname or ""
        return DeployEnv(spec=spec, http_proxy=net.http_proxy_url, admin_cidrs=[net.subnet],
                         apt_direct=[direct] if direct else [], hosts_file=True, npm_only=True)
