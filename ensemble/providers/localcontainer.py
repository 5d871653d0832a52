"""One local host: a systemd-nspawn container, its folder, its record, its identity and its processes.

A host lives in `<state_dir>/<fleet>/hosts/<machine>/`: `rootfs/` (restored from the cached image),
`host.json` (the record: name, role, shard, address, machine id, ready...), `nspawn.pid` and
`nspawn.log`. The folder is the host: the provider finds hosts again by reading these records.
Facts (names, addresses, config texts, the nspawn command) are apart from the few actions (records,
identity files, stopping a container). The fleet-level work (network, parallel creation, clean-up)
is in local.py.

Example::

    machine_name("demo", "demo-1.meet.test")            # "e2a9751-demo-1-meet-test"
    record = read_record(folder)                        # {"name": "demo-1.meet.test", "ready": True, ...}
    stop_container(folder, record)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ensemble.errors import SpecError
from ensemble.providers import localnet
from ensemble.providers.localnet import LocalNetwork, process_alive, read_pid

if TYPE_CHECKING:
    from ensemble.spec import FleetSpec

FRONTDOOR_INDEX = 10  # front door at .10, shard n at .10+n
STOP_TIMEOUT = 15.0
# No RSA host key: generating one costs 1-2 s of CPU per host, and every client ensemble uses speaks ed25519.
HOST_KEY_TYPES = ("ed25519", "ecdsa")


@dataclass(frozen=True)
class PlannedHost:
    """A host the spec asks for. Example: PlannedHost("demo-1.meet.test", "shard", 1, "10.151.42.11")."""

    name: str
    role: str
    shard: int | None
    address: str


# ---- facts ----

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

        apt_proxy_config(net)   # 'Acquire::http::Proxy "http://10.151.42.1:3142";\\nAcquire::http::Proxy::...'
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


def host_key_lines(planned: PlannedHost, rootfs: Path) -> list[str]:
    """known_hosts lines for the host keys generated in a guest's root filesystem (name and address).

    Example::

        host_key_lines(planned, rootfs)[0]   # "demo-1.meet.test,10.151.42.11 ssh-ed25519 AAAA...\\n"
    """
    lines = []
    for key_type in HOST_KEY_TYPES:
        public = (rootfs / f"etc/ssh/ssh_host_{key_type}_key.pub").read_text().split()
        lines.append(f"{planned.name},{planned.address} {public[0]} {public[1]}\n")
    return lines


# ---- the host's folder ----

def read_record(folder: Path) -> dict | None:
    """The host's record (host.json), None if missing or cut short. Example: read_record(folder)["ready"]."""
    try:
        return json.loads((folder / "host.json").read_text())
    except (FileNotFoundError, ValueError):
        return None


def write_record(folder: Path, record: dict) -> None:
    """Write host.json atomically. Example: write_record(folder, {**record, "ready": True})."""
    partial = folder / "host.json.part"
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, folder / "host.json")


def nspawn_pid(folder: Path) -> int | None:
    """The pid of the host's systemd-nspawn if it still runs (not a recycled pid), else None.

    Example::

        nspawn_pid(folder)   # 4242
    """
    pid = read_pid(folder / "nspawn.pid")
    if pid is None:
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return pid if folder.name.encode() in cmdline else None


def console_tail(folder: Path, lines: int = 5) -> str:
    """The last lines of the container's console, on one line. Example: console_tail(folder)."""
    try:
        text = (folder / "nspawn.log").read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return " / ".join(text.strip().splitlines()[-lines:])


def write_identity(rootfs: Path, planned: PlannedHost, net: LocalNetwork, machine_id: str, authorized_key: str) -> None:
    """Hostname, hosts, machine-id, fresh SSH host keys, the fleet's key, network and apt proxy of a guest.

    Example::

        write_identity(rootfs, planned, net, os.urandom(16).hex(), Path(key + ".pub").read_text())
    """
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
    authorized.write_text(authorized_key)
    authorized.chmod(0o600)
    (rootfs / "etc/systemd/network/10-host0.network").write_text(networkd_config(planned.address, net.prefix_length))
    (rootfs / "etc/apt/apt.conf.d/01ensemble-proxy").write_text(apt_proxy_config(net))


# ---- the container's processes ----

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


def stop_container(folder: Path, record: dict) -> None:
    """SIGTERM to nspawn (clean poweroff), then kill the container's init if it is still there.

    Example::

        stop_container(folder, read_record(folder) or {})
    """
    pid = nspawn_pid(folder)
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
