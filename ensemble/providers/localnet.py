"""The network of a local fleet: a bridge per fleet, and the proxies guests reach the world through.

Guests have no default route. They reach the machine's bridge address only, where the provider
runs apt-cacher-ng (apt), tinyproxy (CONNECT to the npm registry only) and, on demand, small static
file servers (e.g. the stand-in Jitsi apt repository). Each is a process started detached, its pid
recorded under `<state_dir>/<fleet>/run/`, stopped by `stop_services`.

Names and subnet derive from a hash of the fleet name, so two fleets never clash.

Example::

    net = plan_network("demo", "")
    net.bridge, net.gateway, net.subnet    # ("ens-2a97516", "10.151.42.1", "10.151.42.0/24")
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ensemble.errors import EnsembleError, SpecError

BRIDGE_PREFIX = "ens-"
APT_PROXY_PORT = 3142
HTTP_PROXY_PORT = 8888
# Hosts that guests may CONNECT to through tinyproxy (Etherpad's npm install).
ALLOWED_CONNECT_HOSTS = ("registry.npmjs.org",)


@dataclass(frozen=True)
class LocalNetwork:
    """What guests of a fleet see: their bridge, gateway, subnet and proxies.

    Example::

        LocalNetwork("ens-2a9751", "10.151.42.1", "10.151.42.0/24",
                     "http://10.151.42.1:3142", "http://10.151.42.1:8888")
    """

    bridge: str
    gateway: str
    subnet: str
    apt_proxy_url: str
    http_proxy_url: str

    def address(self, index: int) -> str:
        """Address `index` of the subnet: 10 = front door, 10 + n = shard n."""
        return str(ipaddress.ip_network(self.subnet).network_address + index)

    @property
    def prefix_length(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen


def fleet_hash(fleet: str) -> str:
    """Six hex digits that name a fleet's network things. Example: fleet_hash("demo") -> "2a9751"."""
    return hashlib.sha256(fleet.encode()).hexdigest()[:6]


def plan_network(fleet: str, subnet: str = "") -> LocalNetwork:
    """The network facts of a fleet: derived from its name unless `subnet` is given.

    Example::

        plan_network("demo", "10.213.0.0/24").gateway   # "10.213.0.1"
    """
    digest = hashlib.sha256(fleet.encode()).digest()
    if subnet:
        net = ipaddress.ip_network(subnet, strict=False)
        if net.version != 4 or net.prefixlen > 24 or not net.is_private:
            raise SpecError("provider.local.subnet", f"must be a private IPv4 /24 or larger, got {subnet!r}")
        net = next(net.subnets(new_prefix=24)) if net.prefixlen < 24 else net
    else:
        # 10.64.0.0 - 10.191.255.0: away from the 10.0.x / 10.1.x ranges people usually use
        net = ipaddress.ip_network(f"10.{64 + digest[0] % 128}.{digest[1]}.0/24")
    gateway = str(net.network_address + 1)
    return LocalNetwork(
        bridge=f"{BRIDGE_PREFIX}{fleet_hash(fleet)}",
        gateway=gateway,
        subnet=str(net),
        apt_proxy_url=f"http://{gateway}:{APT_PROXY_PORT}",
        http_proxy_url=f"http://{gateway}:{HTTP_PROXY_PORT}",
    )


# ---- the bridge ----

def run_ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run iproute2's `ip`. Example: run_ip("link", "del", "ens-2a9751", check=False)."""
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def link_exists(name: str) -> bool:
    """Whether a network interface exists. Example: link_exists("lo") -> True."""
    return Path("/sys/class/net", name).exists()


def bridges_of_provider() -> list[str]:
    """Names of this provider's bridges on the machine. Example: ["ens-2a9751"]."""
    return sorted(p.name for p in Path("/sys/class/net").iterdir()
                  if p.name.startswith(BRIDGE_PREFIX) and (p / "bridge").exists())


def _check_subnet_free(net: LocalNetwork) -> None:
    wanted = ipaddress.ip_network(net.subnet)
    routes = json.loads(run_ip("-j", "-4", "route", "show").stdout or "[]")
    for route in routes:
        dst = route.get("dst", "")
        if dst in ("default", "") or route.get("dev") == net.bridge:
            continue
        if ipaddress.ip_network(dst, strict=False).overlaps(wanted):
            raise SpecError("provider.local.subnet", f"{net.subnet} overlaps {dst} on {route.get('dev')}; "
                            "set another private /24")


def bridge_up(net: LocalNetwork) -> None:
    """Create the fleet's bridge with the gateway address (idempotent).

    Example::

        bridge_up(plan_network("demo"))
    """
    if not link_exists(net.bridge):
        _check_subnet_free(net)
        run_ip("link", "add", net.bridge, "type", "bridge")
    addresses = run_ip("-4", "-o", "addr", "show", "dev", net.bridge).stdout
    if f" {net.gateway}/" not in addresses:
        run_ip("addr", "add", f"{net.gateway}/{net.prefix_length}", "dev", net.bridge)
    run_ip("link", "set", net.bridge, "up")


def bridge_down(bridge: str) -> None:
    """Remove a bridge (its veths go with their containers). Example: bridge_down("ens-2a9751")."""
    if link_exists(bridge):
        run_ip("link", "del", bridge, check=False)


def wait_for_port(address: str, port: int, timeout: float = 10.0) -> bool:
    """Whether something accepts TCP connections on address:port within `timeout` seconds.

    Example::

        wait_for_port("10.151.42.1", 3142)
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.1)
    return False


# ---- recorded background processes ----

def process_alive(pid: int) -> bool:
    """Whether `pid` runs (and is not a zombie). Example: process_alive(os.getpid()) -> True."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state != "Z"


def read_pid(pid_file: Path) -> int | None:
    """The pid recorded in `pid_file` if that process still runs. Example: read_pid(Path("x.pid"))."""
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if process_alive(pid) else None


def start_recorded(run_dir: Path, name: str, argv: list[str], env: dict | None = None,
                   pass_fds: tuple[int, ...] = ()) -> int:
    """Start `argv` detached (own session, survives this process), record its pid as run_dir/name.pid.

    Example::

        start_recorded(Path("/run/ensemble/demo/run"), "tinyproxy", ["tinyproxy", "-d", "-c", conf])
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / f"{name}.log", "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, pass_fds=pass_fds)
    (run_dir / f"{name}.pid").write_text(f"{proc.pid}\n")
    return proc.pid


def stop_recorded(pid_file: Path, timeout: float = 5.0) -> None:
    """Stop the process recorded in `pid_file` (TERM, then KILL) and forget it.

    Example::

        stop_recorded(Path("/run/ensemble/demo/run/tinyproxy.pid"))
    """
    pid = read_pid(pid_file)
    if pid:
        stop_pid(pid, timeout)
    pid_file.unlink(missing_ok=True)


def stop_pid(pid: int, timeout: float = 5.0) -> None:
    """SIGTERM, wait up to `timeout`, then SIGKILL. Example: stop_pid(1234)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        reap(pid)
        time.sleep(0.05)
    if process_alive(pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    reap(pid)


def reap(pid: int) -> None:
    """Collect `pid` if it is our exited child (else nothing). Example: reap(1234)."""
    try:
        os.waitpid(pid, os.WNOHANG)  # our own child: collect it so it is not a zombie
    except ChildProcessError:
        pass


# ---- services on the gateway ----

def require_tool(tool: str, package: str) -> str:
    """Path of `tool`, or a one-line error naming the Debian package. Example: require_tool("zstd", "zstd")."""
    found = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise EnsembleError(f"the local provider needs {tool}: apt-get install {package}")
    return found


def machine_ca_bundle() -> Path:
    """The CA bundle this machine's own clients trust (npm's cafile, else the system bundle).

    Guests reach npm through tinyproxy's CONNECT; where the machine's way out inspects TLS, guests
    must trust the same CAs as the machine's npm does.

    Example::

        machine_ca_bundle()   # PosixPath("/etc/ssl/certs/ca-certificates.crt")
    """
    npm = shutil.which("npm")
    if npm:
        found = subprocess.run([npm, "config", "get", "cafile"], capture_output=True, text=True).stdout.strip()
        if found and found not in ("null", "undefined") and Path(found).is_file():
            return Path(found)
    return Path("/etc/ssl/certs/ca-certificates.crt")


def acng_config(net: LocalNetwork, cache: Path, base: Path) -> str:
    """apt-cacher-ng settings: bound to the gateway only, cache kept across runs.

    Example::

        acng_config(net, Path("/var/cache/ensemble/apt/demo"), Path("/run/ensemble/demo/acng"))
    """
    return (f"CacheDir: {cache}\nLogDir: {base}\nSupportDir: /usr/lib/apt-cacher-ng\n"
            f"SocketPath: {base}/socket\nBindAddress: {net.gateway}\n"
            f"Port: {APT_PROXY_PORT}\nExThreshold: 4\n")


def tinyproxy_config(net: LocalNetwork, filter_file: Path) -> str:
    """tinyproxy settings: the fleet subnet only, CONNECT to port 443 of the allowed hosts only.

    Example::

        tinyproxy_config(net, Path("/run/ensemble/demo/run/tinyproxy.filter"))
    """
    return (f"User nobody\nGroup nogroup\nListen {net.gateway}\nPort {HTTP_PROXY_PORT}\nTimeout 600\n"
            f"MaxClients 100\nAllow {net.subnet}\nConnectPort 443\nFilter \"{filter_file}\"\n"
            "FilterURLs Off\nFilterExtended On\nFilterDefaultDeny Yes\nLogLevel Notice\n")


def claim_apt_cache(cache_root: Path, fleet: str) -> tuple[Path, int | None]:
    """The apt cache a fleet's apt-cacher-ng should use, and the locked descriptor that holds it.

    One apt-cacher-ng at a time may use the shared cache (`<cache_root>/shared`): whoever gets its lock
    passes the descriptor to apt-cacher-ng, which then holds it for its lifetime. A fleet started while
    the shared cache is in use gets its own (`<cache_root>/<fleet>`): two instances never write one cache.

    Example::

        claim_apt_cache(Path("/var/cache/ensemble/apt-cacher-ng"), "demo")   # (PosixPath(".../shared"), 7)
    """
    shared = cache_root / "shared"
    shared.mkdir(parents=True, exist_ok=True)
    fd = os.open(shared / ".in-use.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return shared, fd
    except BlockingIOError:
        os.close(fd)
        own = cache_root / fleet
        own.mkdir(parents=True, exist_ok=True)
        return own, None


def start_services(net: LocalNetwork, fleet_dir: Path, apt_cache_root: Path) -> None:
    """Start apt-cacher-ng and tinyproxy on the gateway unless they run (idempotent).

    Example::

        start_services(net, Path("/run/ensemble/demo"), Path("/var/cache/ensemble/apt-cacher-ng"))
    """
    run = fleet_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    started = False
    if not read_pid(run / "apt-cacher-ng.pid"):
        started = True
        acng = require_tool("apt-cacher-ng", "apt-cacher-ng")
        base = run / "acng"
        base.mkdir(exist_ok=True)
        cache, lock_fd = claim_apt_cache(apt_cache_root, fleet_dir.name)
        (base / "acng.conf").write_text(acng_config(net, cache, base))
        try:
            start_recorded(run, "apt-cacher-ng", [acng, "-c", str(base), "ForeGround=1"],
                           pass_fds=(lock_fd,) if lock_fd is not None else ())
        finally:
            if lock_fd is not None:
                os.close(lock_fd)  # apt-cacher-ng holds the lock from now on
    if not read_pid(run / "tinyproxy.pid"):
        started = True
        tinyproxy = require_tool("tinyproxy", "tinyproxy")
        filter_file = run / "tinyproxy.filter"
        filter_file.write_text("".join("^" + h.replace(".", r"\.") + "$\n" for h in ALLOWED_CONNECT_HOSTS))
        (run / "tinyproxy.conf").write_text(tinyproxy_config(net, filter_file))
        start_recorded(run, "tinyproxy", [tinyproxy, "-d", "-c", str(run / "tinyproxy.conf")])
    if started:
        time.sleep(0.3)  # a proxy that cannot bind exits at once
    for name, port in (("apt-cacher-ng", APT_PROXY_PORT), ("tinyproxy", HTTP_PROXY_PORT)):
        # ours must be the one answering: a system-wide one on 0.0.0.0 would take our port silently
        if not wait_for_port(net.gateway, port) or not read_pid(run / f"{name}.pid"):
            log = (run / f"{name}.log").read_text(errors="replace").strip().splitlines()[-2:]
            raise EnsembleError(f"{name} did not start on {net.gateway}:{port} (is a system-wide {name} "
                                f"holding the port? stop it): {' / '.join(log)}")


def serve_directory(net: LocalNetwork, fleet_dir: Path, name: str, path: Path) -> str:
    """Serve `path` over plain HTTP on the gateway (a stand-in repository); return its URL.

    Idempotent: the same name and path give the same running server and URL.

    Example::

        serve_directory(net, Path("/run/ensemble/demo"), "jitsi-repo", Path("/tmp/repo"))
        # "http://10.151.42.1:40123/"
    """
    run = fleet_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    meta_file = run / f"serve-{name}.json"
    pid_file = run / f"serve-{name}.pid"
    if read_pid(pid_file) and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta["path"] == str(path.resolve()):
            return meta["url"]
    stop_recorded(pid_file)
    port = _free_port(net.gateway)
    start_recorded(run, f"serve-{name}", [sys.executable, "-m", "http.server", "--bind", net.gateway,
                                          "--directory", str(path.resolve()), str(port)])
    url = f"http://{net.gateway}:{port}/"
    meta_file.write_text(json.dumps({"path": str(path.resolve()), "url": url}))
    if not wait_for_port(net.gateway, port):
        raise EnsembleError(f"the file server for {name} did not start on {net.gateway}:{port}")
    return url


def _free_port(address: str) -> int:
    with socket.socket() as probe:
        probe.bind((address, 0))
        return probe.getsockname()[1]


def stop_services(fleet_dir: Path) -> None:
    """Stop every recorded process of a fleet (proxies, file servers).

    Example::

        stop_services(Path("/run/ensemble/demo"))
    """
    run = fleet_dir / "run"
    for pid_file in sorted(run.glob("*.pid")) if run.exists() else []:
        stop_recorded(pid_file)


def services_alive(fleet_dir: Path) -> bool:
    """Whether any recorded process of the fleet still runs. Example: services_alive(Path("/run/ensemble/demo"))."""
    run = fleet_dir / "run"
    return run.exists() and any(read_pid(p) for p in run.glob("*.pid"))
