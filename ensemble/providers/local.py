"""The `local` provider: real throwaway Debian hosts as systemd-nspawn containers on this machine.

Each host is a container booting real systemd with sshd, its root filesystem restored from a cached
debootstrap tarball onto a tmpfs, its own address on a bridge made for the fleet, fresh SSH host keys
pinned in the fleet's known_hosts. Hosts are found again from their folders under
`<state_dir>/<fleet>/hosts/<machine>/` (the folder is the host: no state file to lose).

Layout::

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
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import EnsembleError, SpecError, UsageError
from ensemble.providers import localnet
from ensemble.providers.base import Host
from ensemble.providers.localimage import (
    check_suite,
    ensure_image,
    file_lock,
    mirror_for_suite,
    mounts_under,
    remove_tree,
)
from ensemble.providers.localnet import LocalNetwork, plan_network, process_alive, read_pid

if TYPE_CHECKING:
    from ensemble.spec import FleetSpec

KEYS_ROOT = Path(os.environ.get("ENSEMBLE_LOCAL_KEYS", "/var/lib/ensemble/local"))
REGISTRY = Path(os.environ.get("ENSEMBLE_LOCAL_REGISTRY", "/run/ensemble-local"))
FRONTDOOR_INDEX = 10  # front door at .10, shard n at .10+n
TMPFS_SIZE = os.environ.get("ENSEMBLE_LOCAL_TMPFS_SIZE", "16g")
SSH_TIMEOUT = float(os.environ.get("ENSEMBLE_LOCAL_SSH_TIMEOUT", "120"))
STOP_TIMEOUT = 15.0
# No RSA host key: generating one costs 1-2 s of CPU per host, and every client ensemble uses speaks ed25519.
HOST_KEY_TYPES = ("ed25519", "ecdsa")
REQUIRED_TOOLS = (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap"), ("zstd", "zstd"),
                  ("apt-cacher-ng", "apt-cacher-ng"), ("tinyproxy", "tinyproxy"), ("ip", "iproute2"),
                  ("ssh-keygen", "openssh-client"), ("unshare", "util-linux"), ("nsenter", "util-linux"))

_known_hosts_lock = threading.Lock()


@dataclass(frozen=True)
class PlannedHost:
    """A host the spec asks for. Example: PlannedHost("demo-1.meet.test", "shard", 1, "10.151.42.11")."""

    name: str
    role: str
    shard: int | None
    address: str


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


def machine_name(fleet: str, host_name: str) -> str:
    """The container's machine name: safe, unique per fleet, at most 64 characters.

    Example::

        machine_name("demo", "demo-1.meet.test")   # "e2a9751-demo-1-meet-test"
    """
    safe = re.sub(r"[^a-z0-9-]+", "-", host_name.lower()).strip("-")
    return f"e{localnet.fleet_hash(fleet)}-{safe}"[:64].rstrip("-")


def planned_hosts(spec: FleetSpec, net: LocalNetwork) -> list[PlannedHost]:
    """Every host the spec asks for: shards 1..N, then the front door.

    Example::

        [h.address for h in planned_hosts(spec, net)]   # ["10.151.42.11", "10.151.42.12", "10.151.42.10"]
    """
    if spec.fleet.shards > 200:
        raise SpecError("fleet.shards", "the local provider takes at most 200 shards (one /24)")
    hosts = [PlannedHost(name, "shard", n, net.address(FRONTDOOR_INDEX + n))
             for n, name in enumerate(spec.shard_names(), start=1)]
    hosts.append(PlannedHost(spec.fleet.domain, "frontdoor", None, net.address(FRONTDOOR_INDEX)))
    return hosts


def networkd_config(address: str, prefix_length: int) -> str:
    """systemd-networkd config of the guest's veth. Example: networkd_config("10.1.2.11", 24)."""
    return (f"[Match]\nName=host0\n\n[Network]\nAddress={address}/{prefix_length}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")


def etc_hosts(name: str, address: str) -> str:
    """The guest's /etc/hosts: its own domain is its bridge address. Example: etc_hosts("a.test", "10.1.2.3")."""
    short = name.split(".")[0]
    return (f"127.0.0.1 localhost\n{address} {name} {short}\n"
            "::1 localhost ip6-localhost ip6-loopback\nff02::1 ip6-allnodes\nff02::2 ip6-allrouters\n")


def apt_proxy_config(net: LocalNetwork) -> str:
    """apt settings: the mirror through the fleet's apt-cacher-ng, repositories served on the gateway directly.

    Example::

        apt_proxy_config(net)   # 'Acquire::http::Proxy "http://10.151.42.1:3142";\nAcquire::http::Proxy::...'
    """
    return f'Acquire::http::Proxy "{net.apt_proxy_url}";\nAcquire::http::Proxy::{net.gateway} "DIRECT";\n'


def nspawn_argv(rootfs: Path, machine: str, bridge: str) -> list[str]:
    """The command that boots a container (see testhosts.md for why each option is there).

    A private mount namespace with a tmpfs on /run/systemd/nspawn: nspawn refuses to clean its propagation
    folder on a disk file system (only that folder, not all of /run, which may hold the state folder).
    --register=no --keep-unit: no systemd/dbus on this machine.

    Example::

        nspawn_argv(Path("/run/ensemble/demo/hosts/x/rootfs"), "x", "ens-2a9751")
    """
    in_namespace = ("mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn"
                    ' && exec systemd-nspawn "$@"')
    return ["setsid", "unshare", "-m", "--propagation", "private", "sh", "-c", in_namespace, "sh",
            "-D", str(rootfs), "-M", machine, "--register=no", "--keep-unit", "--link-journal=no",
            "--resolv-conf=off", "--timezone=off", "-b", "--console=passive", f"--network-bridge={bridge}"]


def is_mountpoint(path: Path) -> bool:
    """Whether `path` is a mount point in this namespace. Example: is_mountpoint(Path("/proc")) -> True."""
    target = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def container_processes(machine_id: str) -> list[int]:
    """Pids of a container's init (found by the container_uuid nspawn gives it).

    Example::

        container_processes("3f2b...")   # [4242]
    """
    if len(machine_id) != 32:
        return []
    uuid = f"{machine_id[:8]}-{machine_id[8:12]}-{machine_id[12:16]}-{machine_id[16:20]}-{machine_id[20:]}"
    wanted = f"container_uuid={uuid}".encode()
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if wanted in (proc / "environ").read_bytes().split(b"\0"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def host_side_veth(machine_id: str) -> str | None:
    """Name of the veth on the bridge whose peer is the container's host0 (nspawn shortens long names
    with a hash, so it is read, not computed).

    Example::

        host_side_veth("3f2b...")   # "vb-e2a9751-Jk2x"
    """
    inits = container_processes(machine_id)
    if not inits:
        return None
    shown = subprocess.run(["nsenter", "-t", str(inits[0]), "-n", "ip", "-o", "link", "show", "host0"],
                           capture_output=True, text=True).stdout
    match = re.search(r"host0@if(\d+)", shown)
    if not match:
        return None
    for link in Path("/sys/class/net").iterdir():
        try:
            if (link / "ifindex").read_text().strip() == match.group(1):
                return link.name
        except OSError:
            continue
    return None


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


def edit_known_hosts(path: Path, drop: set[str], add: list[str]) -> None:
    """Rewrite a known_hosts file atomically without the lines naming `drop`, plus the lines `add`.

    Example::

        edit_known_hosts(Path(".../known_hosts"), {"demo-1.meet.test", "10.151.42.11"}, [])
    """
    if not path.parent.exists():
        return
    with _known_hosts_lock, file_lock(path.parent / ".lock"):
        old = path.read_text().splitlines(keepends=True) if path.exists() else []
        kept = [line for line in old if line.strip() and not (set(line.split()[0].split(",")) & drop)]
        partial = path.with_name(path.name + ".part")
        partial.write_text("".join(kept + add))
        partial.chmod(0o600)
        os.replace(partial, path)


# ---- the provider ----

class LocalProvider:
    """Hosts of a fleet as systemd-nspawn containers on this machine (needs root).

    Example::

        provider = LocalProvider(spec)
        hosts = provider.ensure_hosts(spec)
        provider.network(spec).apt_proxy_url     # "http://10.151.42.1:3142"
    """

    name = "local"

    def __init__(self, spec: FleetSpec | None = None, keys_root: Path | None = None):
        self.keys_root = keys_root or KEYS_ROOT

    # -- paths --

    def fleet_dir(self, spec: FleetSpec) -> Path:
        return Path(spec.provider.local.state_dir) / spec.fleet.name

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
            record = self._read_record(folder)
            if record and record.get("ready") and self._nspawn_pid(folder):
                hosts.append(self._host_from_record(spec, record))
        return sorted(hosts, key=lambda h: (h.shard is None, h.shard or 0, h.name))

    def _read_record(self, folder: Path) -> dict | None:
        try:
            return json.loads((folder / "host.json").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def _host_from_record(self, spec: FleetSpec, record: dict) -> Host:
        return Host(name=record["name"], role=record["role"], shard=record["shard"], address=record["address"],
                    ssh_key=str(self.ssh_key(spec)), known_hosts=str(self.known_hosts(spec)),
                    public_ipv4=record["address"], private_ipv4=record["address"], provider_id=record["machine"],
                    labels={"machine": record["machine"], "suite": record["suite"], "provider": "local"})

    def _nspawn_pid(self, folder: Path) -> int | None:
        pid = read_pid(folder / "nspawn.pid")
        if pid is None:
            return None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        return pid if folder.name.encode() in cmdline else None  # not a recycled pid

    # -- creating --

    def ensure_hosts(self, spec: FleetSpec, progress=None) -> list[Host]:
        """Create the hosts the spec asks for that do not run yet (in parallel); return all running hosts.

        `progress` is called with one line of text per step, if given.
        """
        say = progress or (lambda _line: None)
        self.check_machine()
        suite = suite_of(spec)
        self.cleanup_stale(progress=say)  # what a crashed earlier run left behind
        net = self.network(spec)
        wanted = planned_hosts(spec, net)
        tarball = ensure_image(suite, Path(spec.provider.local.cache_dir),
                               mirror_for_suite(spec.provider.local.mirror), progress=say)
        self.ensure_network(spec)
        self._ensure_ssh_key(spec)
        with file_lock(self.keys_dir(spec) / ".create.lock"):  # two runs on one fleet create each host once
            running = {h.name for h in self.list_hosts(spec)}
            missing = [h for h in wanted if h.name not in running]
            if missing:
                say(f"creating {len(missing)} host(s): {', '.join(h.name for h in missing)}")
                cancel = threading.Event()
                with terminate_as_exit(), ThreadPoolExecutor(max_workers=min(8, len(missing))) as pool:
                    futures = {h.name: pool.submit(self._create_host, spec, h, suite, tarball, net, say, cancel)
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
                     net: LocalNetwork, say, cancel: threading.Event) -> Host:
        machine = machine_name(spec.fleet.name, planned.name)
        folder = self.hosts_dir(spec) / machine
        started = time.monotonic()
        if folder.exists():  # leftovers of a dead host: start afresh
            self._remove_host(self.known_hosts(spec), folder)
        folder.mkdir(parents=True)
        try:
            return self._make_host(spec, planned, suite, tarball, net, say, cancel, folder, started)
        except BaseException:
            self._remove_host(self.known_hosts(spec), folder)  # nothing half-made stays behind
            raise

    def _make_host(self, spec: FleetSpec, planned: PlannedHost, suite: str, tarball: Path, net: LocalNetwork,
                   say, cancel: threading.Event, folder: Path, started: float) -> Host:
        rootfs = folder / "rootfs"
        machine = folder.name
        record = {"name": planned.name, "role": planned.role, "shard": planned.shard, "address": planned.address,
                  "machine": machine, "suite": suite, "bridge": net.bridge, "ready": False,
                  "creator": os.getpid(), "machine_id": os.urandom(16).hex()}
        self._write_record(folder, record)  # first, so cleanup_stale can find what a killed run left
        rootfs.mkdir()
        subprocess.run(f"zstd -dc {tarball} | tar -C {rootfs} --numeric-owner -xf -", shell=True, check=True)
        self._write_identity(spec, rootfs, planned, net, record["machine_id"])
        self._pin_host_keys(spec, planned, rootfs)
        if cancel.is_set():
            raise EnsembleError(f"{planned.name}: creation interrupted")
        with open(folder / "nspawn.log", "wb") as log:
            proc = subprocess.Popen(nspawn_argv(rootfs, machine, net.bridge), stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        (folder / "nspawn.pid").write_text(f"{proc.pid}\n")
        self._wait_for_ssh(spec, planned, proc, folder, cancel)
        record["veth"] = host_side_veth(record["machine_id"])
        record["ready"] = True
        self._write_record(folder, record)
        say(f"{planned.name} up at {planned.address} in {time.monotonic() - started:.1f} s")
        return self._host_from_record(spec, record)

    @staticmethod
    def _write_record(folder: Path, record: dict) -> None:
        partial = folder / "host.json.part"
        partial.write_text(json.dumps(record, indent=1))
        os.replace(partial, folder / "host.json")

    def _write_identity(self, spec: FleetSpec, rootfs: Path, planned: PlannedHost, net: LocalNetwork,
                        machine_id: str) -> None:
        """Hostname, hosts, machine-id, fresh SSH host keys, the fleet key, network and apt proxy."""
        (rootfs / "etc/hostname").write_text(planned.name + "\n")
        (rootfs / "etc/hosts").write_text(etc_hosts(planned.name, planned.address))
        (rootfs / "etc/resolv.conf").unlink(missing_ok=True)
        (rootfs / "etc/resolv.conf").write_text("nameserver 127.0.0.1\n")  # nothing outside resolves anyway
        (rootfs / "etc/machine-id").write_text(machine_id + "\n")
        for key_type in HOST_KEY_TYPES:
            key_file = rootfs / f"etc/ssh/ssh_host_{key_type}_key"
            subprocess.run(["ssh-keygen", "-q", "-t", key_type, "-N", "", "-C", f"root@{planned.name}",
                            "-f", str(key_file)], check=True)
        (rootfs / "etc/ssh/sshd_config.d").mkdir(exist_ok=True)
        (rootfs / "etc/ssh/sshd_config.d/10-ensemble-host-keys.conf").write_text(
            "".join(f"HostKey /etc/ssh/ssh_host_{key_type}_key\n" for key_type in HOST_KEY_TYPES))
        ssh_dir = rootfs / "root/.ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        authorized = ssh_dir / "authorized_keys"
        authorized.write_text(Path(f"{self.ssh_key(spec)}.pub").read_text())
        authorized.chmod(0o600)
        (rootfs / "etc/systemd/network/10-host0.network").write_text(
            networkd_config(planned.address, net.prefix_length))
        (rootfs / "etc/apt/apt.conf.d/01ensemble-proxy").write_text(apt_proxy_config(net))

    def _pin_host_keys(self, spec: FleetSpec, planned: PlannedHost, rootfs: Path) -> None:
        """Write the guest's new public host keys into the fleet's known_hosts (replacing older ones)."""
        lines = []
        for key_type in HOST_KEY_TYPES:
            public = (rootfs / f"etc/ssh/ssh_host_{key_type}_key.pub").read_text().split()
            lines.append(f"{planned.name},{planned.address} {public[0]} {public[1]}\n")
        edit_known_hosts(self.known_hosts(spec), {planned.name, planned.address}, lines)

    def _wait_for_ssh(self, spec: FleetSpec, planned: PlannedHost, proc: subprocess.Popen, folder: Path,
                      cancel: threading.Event) -> None:
        """Until sshd answers with the pinned key; a clear error with the log tail if the container dies."""
        import paramiko

        deadline = time.monotonic() + SSH_TIMEOUT
        last_error = "no answer"
        while time.monotonic() < deadline:
            if cancel.is_set():
                raise EnsembleError(f"{planned.name}: creation interrupted")
            if proc.poll() is not None:
                tail = (folder / "nspawn.log").read_text(errors="replace").strip().splitlines()[-5:]
                raise EnsembleError(f"container of {planned.name} exited ({proc.returncode}): {' / '.join(tail)}")
            client = paramiko.SSHClient()
            client.load_host_keys(str(self.known_hosts(spec)))
            client.set_missing_host_key_policy(paramiko.RejectPolicy())
            try:
                client.connect(planned.address, username="root", key_filename=str(self.ssh_key(spec)),
                               timeout=2, banner_timeout=5, auth_timeout=5, allow_agent=False, look_for_keys=False)
                client.exec_command("true", timeout=5)[1].channel.recv_exit_status()
                return
            except (OSError, paramiko.SSHException) as exc:
                last_error = str(exc) or type(exc).__name__
                time.sleep(0.3)
            finally:
                client.close()
        tail = (folder / "nspawn.log").read_text(errors="replace").strip().splitlines()[-5:]
        raise EnsembleError(f"{planned.name} ({planned.address}): no SSH after {SSH_TIMEOUT:.0f} s ({last_error}); "
                            f"console: {' / '.join(tail)}")

    # -- destroying --

    def destroy(self, spec: FleetSpec, hosts: list[Host], progress=None) -> None:
        """Stop these hosts cleanly and remove their folders, veths and known_hosts entries."""
        say = progress or (lambda _line: None)
        self.check_machine()
        folders = [self.hosts_dir(spec) / machine_name(spec.fleet.name, h.name) for h in hosts]
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(folders)))) as pool:
            list(pool.map(lambda folder: self._remove_host(self.known_hosts(spec), folder, say), folders))

    def _remove_host(self, known_hosts: Path, folder: Path, say=None) -> None:
        record = self._read_record(folder) or {}
        if not record.get("machine_id"):  # a record cut short: the rootfs still knows the container's id
            try:
                record["machine_id"] = (folder / "rootfs/etc/machine-id").read_text().strip()
            except OSError:
                pass
        started = time.monotonic()
        self._stop_container(folder, record)
        veth = record.get("veth")
        if veth and localnet.link_exists(veth):  # normally gone with the container's network namespace
            localnet.run_ip("link", "del", veth, check=False)
        if self._nspawn_pid(folder) or container_processes(record.get("machine_id", "")):
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

    def _stop_container(self, folder: Path, record: dict) -> None:
        """SIGTERM to nspawn (clean poweroff), then kill the container's init if it is still there."""
        pid = self._nspawn_pid(folder)
        if pid:
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT
            while process_alive(pid) and time.monotonic() < deadline:
                localnet.reap(pid)
                time.sleep(0.1)
        # a SIGKILLed nspawn leaves the container's systemd running: killing its init ends the pid namespace
        for init in container_processes(record.get("machine_id", "")):
            try:
                os.kill(init, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if pid and process_alive(pid):
            localnet.stop_pid(pid, timeout=2)
        deadline = time.monotonic() + 5
        while container_processes(record.get("machine_id", "")) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not (pid and process_alive(pid)):
            (folder / "nspawn.pid").unlink(missing_ok=True)

    def destroy_all(self, spec: FleetSpec, progress=None) -> None:
        """Every host of the fleet, its proxies and file servers, its bridge, tmpfs and folders."""
        self.check_machine()
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
        remove_tree(fleet_dir)  # unmounts the hosts' tmpfs first
        if known_hosts is not None:
            known_hosts.unlink(missing_ok=True)
        (REGISTRY / f"{bridge}.json").unlink(missing_ok=True)

    # -- crash recovery --

    def cleanup_stale(self, progress=None) -> list[str]:
        """Remove what dead runs left: hosts whose container or creator died, fleets with nothing alive,
        bridges no fleet owns. Returns what was removed (one line each).

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
                removed += self._cleanup_fleet(entry.stem, owner)
        bridges = localnet.bridges_of_provider()  # before the claims: a claim is written before its bridge
        claimed = {e.stem for e in REGISTRY.glob("ens-*.json")} if REGISTRY.is_dir() else set()
        for bridge in bridges:
            if bridge not in claimed:
                localnet.bridge_down(bridge)
                removed.append(f"bridge {bridge} (no fleet)")
        if removed:  # an audit trail: what a run removed, when, and which run did
            REGISTRY.mkdir(parents=True, exist_ok=True)
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            with open(REGISTRY / "cleanup.log", "a") as log:
                log.writelines(f"{stamp} pid {os.getpid()}: {line}\n" for line in removed)
        for line in removed:
            if progress:
                progress(f"cleaned up {line}")
        return removed

    def _cleanup_fleet(self, bridge: str, owner: dict) -> list[str]:
        fleet_dir = Path(owner["fleet_dir"])
        known_hosts = Path(owner["keys_dir"]) / "known_hosts"
        removed, alive = [], 0
        hosts_dir = fleet_dir / "hosts"
        for folder in sorted(p for p in hosts_dir.iterdir() if p.is_dir()) if hosts_dir.is_dir() else []:
            try:
                record = self._read_record(folder) or {}
                reason = self._stale_reason(folder, record)
            except FileNotFoundError:  # removed meanwhile by the run that owns it: nothing left to clean
                continue
            if reason is None:
                alive += 1
                continue
            self._remove_host(known_hosts, folder)
            removed.append(f"host {record.get('name', folder.name)} ({reason})")
        if alive == 0 and not any(process_alive(pid) for pid in owner.get("pids", [])):
            self._teardown_fleet(fleet_dir, bridge, known_hosts)
            removed.append(f"fleet {owner['fleet']} network ({bridge})")
        return removed

    def _stale_reason(self, folder: Path, record: dict) -> str | None:
        if not record:  # a folder without host.json: a removal cut short (or a create in its first instant)
            return "removal interrupted" if time.time() - folder.stat().st_mtime > 60 else None
        if record.get("ready"):
            return None if self._nspawn_pid(folder) else "container gone"
        creator = record.get("creator")
        if creator and process_alive(int(creator)):
            return None  # still being created by a live run
        return "creation interrupted"
