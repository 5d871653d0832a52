"""Everything ensemble does over SSH outside pyinfra: one connection type, one way to fail.

A `Connection` reaches one `Host` with paramiko, in the style of fabric: the host's key only
(no password, no agent), the host key checked strictly against the Host's pinned known_hosts
(an unknown key is refused, a changed key is `HostKeyChanged`), and timeouts on connecting, on
the handshake, on authentication and on every read. Providers that meet a brand new host pass
`on_unknown_key` to pin its key on first contact (see providers/hostkeys.py); nothing else does.

Every failure is an `SSHError` (an `EnsembleError`) naming the host and a readable reason, never
a paramiko traceback. `fan_out` / `Group` run the same function on several hosts in parallel
threads and hand back one `HostResult` per host (a value or the error), so one dead host never
hides the answers of the others.

Example::

    with Connection(host) as conn:
        code, out, err = conn.run("systemctl is-active nginx")
        conn.write_file_atomically("/var/lib/ensemble/state.json", b'{"drain": true}\\n', 0o644)
        status, body = conn.http_get(5280, "/room-census", host.name)   # the host's loopback service

    results = Group(hosts).run("hostname")
    {name: r.value[1] if r.ok else str(r.error) for name, r in results.items()}
"""

from __future__ import annotations

import select
import shlex
import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

import paramiko
from paramiko.ssh_exception import NoValidConnectionsError

from ensemble.errors import EnsembleError
from ensemble.providers.base import Host

T = TypeVar("T")
UnknownKeyHandler = Callable[[Host, str, paramiko.PKey], None]

DEFAULT_TIMEOUT = 10.0  # seconds: connect, banner, authentication, channel opening
DEFAULT_COMMAND_TIMEOUT = 300.0  # seconds a command may stay silent before it counts as hung


class SSHError(EnsembleError):
    """SSH to one host failed: `host` is its name, `reason` one readable line.

    Example::

        SSHError("demo-1.meet.test", "SSH to 10.1.2.11:22 failed: connection refused")
    """

    def __init__(self, host: str, reason: str):
        super().__init__(f"{host}: {reason}")
        self.host = host
        self.reason = reason


class HostKeyChanged(SSHError):
    """The host answered with a key other than the one pinned for it (never accepted)."""


def host_pattern(address: str, port: int) -> str:
    """How OpenSSH (and paramiko) name a host in known_hosts.

    Example::

        host_pattern("10.1.2.11", 22), host_pattern("127.0.0.1", 2222)   # ("10.1.2.11", "[127.0.0.1]:2222")
    """
    return address if port == 22 else f"[{address}]:{port}"


def describe(exc: BaseException) -> str:
    """One readable line for an exception met on the way (paramiko's own strings are often tuples).

    Example::

        describe(paramiko.ChannelException(2, "Connect failed"))   # "channel refused: Connect failed"
        describe(ConnectionRefusedError(111, "Connection refused"))  # "connection refused"
    """
    if isinstance(exc, paramiko.ChannelException):
        return f"channel refused: {exc.text}"
    if isinstance(exc, paramiko.AuthenticationException):
        return "authentication failed: the host refused the key"
    if isinstance(exc, NoValidConnectionsError) and exc.errors:
        return describe(next(iter(exc.errors.values())))
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, TimeoutError):
        return f"timed out ({exc})" if str(exc) and str(exc) != "timed out" else "timed out"
    if isinstance(exc, socket.gaierror):
        return f"name not resolved ({exc.strerror})"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror[0].lower() + exc.strerror[1:]
    if isinstance(exc, EOFError):
        return "connection closed by the host"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _PinPolicy(paramiko.MissingHostKeyPolicy):
    """Accept an unknown host key by handing it to the provider's pinning function."""

    def __init__(self, host: Host, pin: UnknownKeyHandler):
        self.host, self.pin = host, pin

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        self.pin(self.host, hostname, key)


class Connection:
    """One SSH connection to a Host (opened lazily, or by `with`); see the module docstring.

    `timeout` bounds connecting, the handshake, authentication and channel opening (`connect_timeout`
    the TCP connect alone, when it should fail sooner); `on_unknown_key(host, pattern, key)`, if
    given, is called for a host key the known_hosts file lacks and accepts it (first contact).

    Example::

        conn = Connection(host, timeout=5)
        try:
            code, out, _ = conn.run("cat /etc/hostname")
        finally:
            conn.close()
    """

    def __init__(self, host: Host, *, timeout: float = DEFAULT_TIMEOUT, connect_timeout: float | None = None,
                 on_unknown_key: UnknownKeyHandler | None = None):
        self.host = host
        self.timeout = timeout
        self.connect_timeout = connect_timeout or timeout
        self.on_unknown_key = on_unknown_key
        self._client: paramiko.SSHClient | None = None

    @property
    def where(self) -> str:
        """address:port, as the error messages say it."""
        return f"{self.host.address}:{self.host.ssh_port}"

    def _fail(self, what: str, exc: BaseException) -> SSHError:
        return SSHError(self.host.name, f"{what}: {describe(exc)}")

    # ---- connecting ----

    def open(self) -> Connection:
        """Connect and authenticate (nothing if already open); SSHError / HostKeyChanged otherwise."""
        if self._client is not None:
            return self
        host = self.host
        client = paramiko.SSHClient()
        if host.known_hosts and Path(host.known_hosts).exists():
            client.load_host_keys(host.known_hosts)
        if self.on_unknown_key:
            client.set_missing_host_key_policy(_PinPolicy(host, self.on_unknown_key))
        else:
            client.set_missing_host_key_policy(paramiko.RejectPolicy())  # pinned keys only
        try:
            client.connect(host.address, port=host.ssh_port, username=host.ssh_user, key_filename=host.ssh_key,
                           timeout=self.connect_timeout, banner_timeout=self.timeout, auth_timeout=self.timeout,
                           channel_timeout=self.timeout, allow_agent=False, look_for_keys=host.ssh_key is None)
        except paramiko.BadHostKeyException as exc:
            client.close()
            pattern = host_pattern(host.address, host.ssh_port)
            raise HostKeyChanged(host.name, f"({pattern}) SSH host key changed since it was pinned in "
                                 f"{host.known_hosts}; if the host was rebuilt on purpose, remove that line "
                                 f"(it offered {exc.key.fingerprint})") from None
        except paramiko.SSHException as exc:
            client.close()
            reason = describe(exc)
            if "not found in known_hosts" in str(exc):
                reason = f"host key not pinned in {host.known_hosts or '(no known_hosts file)'}: refused"
            raise SSHError(host.name, f"SSH to {self.where} failed: {reason}") from None
        except (OSError, EOFError) as exc:
            client.close()
            raise self._fail(f"SSH to {self.where} failed", exc) from None
        self._client = client
        return self

    @property
    def client(self) -> paramiko.SSHClient:
        """The connected paramiko client (for what this module does not wrap, e.g. tests' tunnels)."""
        self.open()
        assert self._client is not None
        return self._client

    def close(self) -> None:
        """Close the connection (safe to call twice)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> Connection:
        return self.open()

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---- commands ----

    def run_bytes(self, command: str, stdin: bytes | str | None = None,
                  timeout: float = DEFAULT_COMMAND_TIMEOUT) -> tuple[int, bytes, bytes]:
        """Run a shell command; (exit code, stdout bytes, stderr bytes). See `run`."""
        try:
            channel = self.client.get_transport().open_session(timeout=self.timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(f"opening a session on {self.where}", exc) from None
        out: list[bytes] = []
        err: list[bytes] = []
        try:
            channel.settimeout(timeout)
            channel.exec_command(command)
            if stdin is not None:
                channel.sendall(stdin.encode() if isinstance(stdin, str) else stdin)
            channel.shutdown_write()
            # Both streams are read as they come (one full stream must never stall the other); the
            # command counts as hung after `timeout` seconds without a byte on either.
            quiet_since = time.monotonic()
            while True:
                got = False
                while channel.recv_ready():
                    out.append(channel.recv(65536))
                    got = True
                while channel.recv_stderr_ready():
                    err.append(channel.recv_stderr(65536))
                    got = True
                if (channel.eof_received or channel.closed) and not (channel.recv_ready()
                                                                     or channel.recv_stderr_ready()):
                    break
                now = time.monotonic()
                if got:
                    quiet_since = now
                elif now - quiet_since >= timeout:
                    raise TimeoutError(f"silent for {timeout:.0f}s")
                select.select([channel], [], [], min(1.0, max(0.01, quiet_since + timeout - now)))
            if not channel.status_event.wait(timeout):
                raise TimeoutError("no exit status")
            code = channel.recv_exit_status()
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(f"running {_short(command)}", exc) from None
        finally:
            channel.close()
        return code, b"".join(out), b"".join(err)

    def run(self, command: str, stdin: bytes | str | None = None,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> tuple[int, str, str]:
        """Run a shell command, feeding `stdin` if given; (exit code, stdout, stderr) as text.

        A non-zero exit code is returned, not raised; SSHError when the command stays silent for
        `timeout` seconds or the connection breaks.

        Example::

            code, out, err = conn.run("cat > /tmp/x && wc -c < /tmp/x", stdin=b"hello")   # (0, "5\\n", "")
        """
        code, out, err = self.run_bytes(command, stdin, timeout)
        return code, out.decode(errors="replace"), err.decode(errors="replace")

    def write_file_atomically(self, path: str, data: bytes | str, mode: int = 0o644,
                              timeout: float = 60.0) -> None:
        """Write `data` to `path` on the host: a temporary file in the same folder, its mode set, then
        renamed over `path` (readers see the old or the new file, never half of one). Folders missing
        on the way are made (0755). SSHError naming the path if anything fails.

        Example::

            conn.write_file_atomically("/var/lib/ensemble/state.json", b'{"drain": true}\\n', 0o644)
        """
        folder, _, name = path.rpartition("/")
        folder = folder or "/"
        q_folder, q_path = shlex.quote(folder), shlex.quote(path)
        template = shlex.quote(f"{folder.rstrip('/')}/.{name}.XXXXXX")
        command = (f"umask 022 && mkdir -p {q_folder} && tmp=$(mktemp {template}) && "
                   f'{{ cat > "$tmp" && chmod {mode:o} "$tmp" && mv -f "$tmp" {q_path}; }} '
                   f'|| {{ rm -f "$tmp"; exit 1; }}')
        code, _out, err = self.run(command, stdin=data, timeout=timeout)
        if code != 0:
            raise SSHError(self.host.name, f"writing {path} failed: {err.strip()[:200] or f'exit {code}'}")

    # ---- HTTP to the host's own services ----

    def http_get(self, target_port: int, path: str, host_header: str, target_host: str = "127.0.0.1",
                 timeout: float = 15.0) -> tuple[int, bytes]:
        """One HTTP/1.0 GET to a service the host listens on (its loopback by default), through a
        direct-tcpip channel: it works where only SSH reaches the host. (status, body); SSHError when
        the host refuses the channel (nothing listens there, or forwarding is off) or it breaks.

        Example::

            status, body = conn.http_get(5280, "/room-census", "demo-1.meet.test")   # (200, b'{"room_census"...')
        """
        target = f"{target_host}:{target_port}"
        try:
            channel = self.client.get_transport().open_channel("direct-tcpip", (target_host, target_port),
                                                               ("127.0.0.1", 0), timeout=self.timeout)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(f"HTTP to {target} over SSH", exc) from None
        chunks = []
        try:
            channel.settimeout(timeout)
            channel.sendall(f"GET {path} HTTP/1.0\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
            while data := channel.recv(65536):
                chunks.append(data)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise self._fail(f"HTTP GET {path} on {target} over SSH", exc) from None
        finally:
            channel.close()
        head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
        status_line = head.split(b"\r\n", 1)[0].split()
        status = int(status_line[1]) if len(status_line) > 1 and head.startswith(b"HTTP/") \
            and status_line[1].isdigit() else 0
        return status, body


def _short(command: str, limit: int = 60) -> str:
    line = " ".join(command.split())
    return repr(line if len(line) <= limit else line[:limit - 3] + "...")


# ---- several hosts at once ----

@dataclass(frozen=True)
class HostResult(Generic[T]):
    """What one host gave back: `value`, or `error` (an EnsembleError naming the host).

    Example::

        result = fan_out(hosts, lambda c: c.run("true"))["demo-1.meet.test"]
        result.ok, result.value, result.error        # (True, (0, "", ""), None)
    """

    host: Host
    value: T | None = None
    error: EnsembleError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def fan_out(hosts: Iterable[Host], fn: Callable[[Connection], T], *, workers: int = 16,
            timeout: float = DEFAULT_TIMEOUT) -> dict[str, HostResult[T]]:
    """Open a Connection to every host, call `fn(connection)` on each in parallel threads, close them.

    Returns {host name: HostResult} in the hosts' order. An EnsembleError raised by `fn` (or any SSH,
    socket or EOF error, made an SSHError) is that host's result; the other hosts are not disturbed.
    Anything else is a bug in `fn` and is raised.

    Example::

        fan_out(hosts, lambda conn: conn.run("uptime")[1].strip())
        # {"demo-1.meet.test": HostResult(host=..., value="12:00:01 up 3 min, ..."), ...}
    """
    hosts = list(hosts)

    def one(host: Host) -> HostResult[T]:
        conn = Connection(host, timeout=timeout)
        try:
            return HostResult(host, value=fn(conn.open()))
        except EnsembleError as exc:
            return HostResult(host, error=exc)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            return HostResult(host, error=SSHError(host.name, describe(exc)))
        finally:
            conn.close()

    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as pool:
        return {host.name: result for host, result in zip(hosts, pool.map(one, hosts), strict=True)}


class Group:
    """Several hosts addressed together (fabric's Group): each call runs on all of them in parallel.

    Example::

        group = Group(hosts)
        results = group.run("systemctl is-active prosody")
        failed = [name for name, r in results.items() if not r.ok or r.value[0] != 0]
    """

    def __init__(self, hosts: Iterable[Host], *, workers: int = 16, timeout: float = DEFAULT_TIMEOUT):
        self.hosts = list(hosts)
        self.workers = workers
        self.timeout = timeout

    def fan_out(self, fn: Callable[[Connection], T]) -> dict[str, HostResult[T]]:
        """`fan_out` over this group's hosts."""
        return fan_out(self.hosts, fn, workers=self.workers, timeout=self.timeout)

    def run(self, command: str, stdin: bytes | str | None = None,
            timeout: float = DEFAULT_COMMAND_TIMEOUT) -> dict[str, HostResult[tuple[int, str, str]]]:
        """`Connection.run` on every host: {name: HostResult((code, out, err))}."""
        return self.fan_out(lambda conn: conn.run(command, stdin, timeout))

    def write_file_atomically(self, path: str, data: bytes | str, mode: int = 0o644) -> dict[str, HostResult[None]]:
        """`Connection.write_file_atomically` on every host."""
        return self.fan_out(lambda conn: conn.write_file_atomically(path, data, mode))


def wait_until_reachable(host: Host, timeout: float, *, interval: float = 0.5, attempt_timeout: float = 5.0,
                         connect_timeout: float | None = None, on_unknown_key: UnknownKeyHandler | None = None,
                         give_up: Callable[[], str | None] | None = None) -> None:
    """Poll until the host takes an SSH login and runs `true`; SSHError after `timeout` seconds.

    A changed host key ends the wait at once (HostKeyChanged). `give_up()`, if given, is asked before
    each attempt: a non-empty answer ends the wait with that reason (e.g. the host's machine died).
    `attempt_timeout` bounds each try (`connect_timeout` its TCP connect, when that should fail sooner).

    Example::

        wait_until_reachable(host, 120, on_unknown_key=pin)   # a new host: pin its key on first contact
    """
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        if give_up is not None and (reason := give_up()):
            raise SSHError(host.name, reason)
        conn = Connection(host, timeout=attempt_timeout, connect_timeout=connect_timeout,
                          on_unknown_key=on_unknown_key)
        try:
            conn.run("true", timeout=attempt_timeout)
            return
        except HostKeyChanged:
            raise
        except SSHError as exc:
            last = exc.reason
        finally:
            conn.close()
        if time.monotonic() >= deadline:
            where = f"{host.address}:{host.ssh_port}"  # said once: the last reason's own "SSH to <where> failed: " goes
            last = last.removeprefix(f"SSH to {where} failed: ")
            raise SSHError(host.name, f"SSH on {where} not ready after {timeout:.0f}s (last try: {last})")
        time.sleep(interval)
