"""ensemble.ssh against a real OpenSSH sshd on loopback: commands, atomic writes, HTTP through direct-tcpip,
pinned host keys (unknown refused, changed refused, first contact pinned when asked), unreachable hosts,
and several hosts at once."""

from __future__ import annotations

import getpass
import http.server
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import require_tool
from helpers.ports import free_port

from ensemble.errors import EnsembleError
from ensemble.providers import hostkeys
from ensemble.providers.base import Host
from ensemble.ssh import Connection, Group, HostKeyChanged, SSHError, fan_out, wait_until_reachable


def keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1:<free port> (this user's login, a client key), its host key pinned in a
    known_hosts file; yields (host, folder)."""
    binary = require_tool("/usr/sbin/sshd")
    require_tool("ssh-keygen")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        keygen(folder / name)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # privilege separation folder (root)
    proc = subprocess.Popen([
        binary, "-D", "-e", "-f", "/dev/null", "-o", f"ListenAddress=127.0.0.1:{port}",
        "-o", f"HostKey={folder / 'host_key'}", "-o", f"AuthorizedKeysFile={folder / 'authorized_keys'}",
        "-o", "PidFile=none", "-o", "StrictModes=no", "-o", "UsePAM=no", "-o", "PermitRootLogin=prohibit-password",
        "-o", "PasswordAuthentication=no", "-o", "AllowTcpForwarding=yes", "-o", "MaxStartups=50",
        "-o", "MaxSessions=50",
    ], stdout=subprocess.DEVNULL, stderr=(folder / "sshd.log").open("ab"))
    key_type, key_b64 = (folder / "host_key.pub").read_text().split()[:2]
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} {key_type} {key_b64}\n")
    host = Host(name="ssh-test.ensemble.test", role="shard", shard=1, address="127.0.0.1", ssh_port=port,
                ssh_user=getpass.getuser(), ssh_key=str(folder / "client_key"), known_hosts=str(folder / "known_hosts"))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    try:
        yield host, folder
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def with_known_hosts(host: Host, path: Path) -> Host:
    return Host(name=host.name, role=host.role, shard=host.shard, address=host.address, ssh_port=host.ssh_port,
                ssh_user=host.ssh_user, ssh_key=host.ssh_key, known_hosts=str(path))


# ---- one host ----

def test_run_returns_code_output_and_feeds_stdin(sshd):
    host, _ = sshd
    with Connection(host) as conn:
        assert conn.run("echo out; echo err >&2; exit 3") == (3, "out\n", "err\n")
        assert conn.run("tr a-z A-Z", stdin=b"hello") == (0, "HELLO", "")
        assert conn.run("wc -c", stdin="h\u00e9") == (0, "3\n", "")  # text goes as UTF-8
        assert conn.run("true") == (0, "", "")  # one connection, several commands


def test_run_reads_both_streams_at_once_beyond_the_ssh_window(sshd):
    host, _ = sshd
    # 4 MiB on stderr while stdout stays open: reading one stream to its end first would stall both sides
    script = "head -c 4194304 /dev/zero >&2; echo done"
    with Connection(host) as conn:
        code, out, err = conn.run_bytes(script, timeout=30)
    assert (code, out, len(err)) == (0, b"done\n", 4194304)


def test_a_silent_command_times_out_with_the_host_named(sshd):
    host, _ = sshd
    started = time.monotonic()
    with Connection(host) as conn, pytest.raises(SSHError, match=r"^ssh-test\.ensemble\.test: running 'sleep 30'.*"
                                                 r"timed out"):
        conn.run("sleep 30", timeout=1)
    assert time.monotonic() - started < 10


def test_write_file_atomically_sets_the_mode_makes_folders_and_leaves_no_temporary(sshd, tmp_path):
    host, _ = sshd
    target = tmp_path / "new" / "deeper" / "state.json"
    with Connection(host) as conn:
        conn.write_file_atomically(str(target), b'{"drain": true}\n', 0o644)
        assert target.read_bytes() == b'{"drain": true}\n' and oct(target.stat().st_mode & 0o777) == "0o644"
        conn.write_file_atomically(str(target), "secret\n", 0o600)  # replaced, mode too
        assert target.read_text() == "secret\n" and oct(target.stat().st_mode & 0o777) == "0o600"
        assert sorted(p.name for p in target.parent.iterdir()) == ["state.json"]
        (tmp_path / "a-file").write_text("")
        with pytest.raises(SSHError, match=r"writing .*a-file/x failed: mkdir"):
            conn.write_file_atomically(str(tmp_path / "a-file" / "x"), b"no", 0o644)


class _Answer(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        body = f"{self.path} for {self.headers['Host']}".encode()
        self.send_response(200 if self.path != "/missing" else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_http_get_reaches_a_loopback_service_through_direct_tcpip(sshd):
    host, _ = sshd
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with Connection(host) as conn:
            port = server.server_address[1]
            assert conn.http_get(port, "/room-census", "shard.test") == (200, b"/room-census for shard.test")
            assert conn.http_get(port, "/missing", "shard.test")[0] == 404
            with pytest.raises(SSHError, match=r"HTTP to 127\.0\.0\.1:\d+ over SSH: channel refused: Connect failed"):
                conn.http_get(free_port(), "/", "shard.test")  # nothing listens there: a reason, not a traceback
    finally:
        server.shutdown()


# ---- host keys ----

def test_an_unknown_host_key_is_refused(sshd, tmp_path):
    host, _ = sshd
    (tmp_path / "empty").write_text("")
    stranger = with_known_hosts(host, tmp_path / "empty")
    with pytest.raises(SSHError, match=rf"^{host.name}: SSH to 127\.0\.0\.1:{host.ssh_port} failed: host key not "
                       "pinned in .*empty: refused$"):
        Connection(stranger).open()
    with pytest.raises(SSHError, match=r"host key not pinned in .*absent: refused"):
        Connection(with_known_hosts(host, tmp_path / "absent")).open()
    unpinned = Host(name=host.name, role=host.role, shard=host.shard, address=host.address, ssh_port=host.ssh_port,
                    ssh_user=host.ssh_user, ssh_key=host.ssh_key, known_hosts=None)
    with pytest.raises(SSHError, match=r"host key not pinned in \(no known_hosts file\): refused"):
        Connection(unpinned).open()


def test_a_changed_host_key_is_refused_naming_the_host(sshd, tmp_path):
    host, _ = sshd
    keygen(tmp_path / "impostor")
    key_type, key_b64 = (tmp_path / "impostor.pub").read_text().split()[:2]
    (tmp_path / "pinned").write_text(f"[127.0.0.1]:{host.ssh_port} {key_type} {key_b64}\n")
    with pytest.raises(HostKeyChanged, match=rf"^{host.name}: .*host key changed since it was pinned"):
        Connection(with_known_hosts(host, tmp_path / "pinned")).open()
    with pytest.raises(HostKeyChanged):  # a wait gives up at once: a changed key never becomes right
        wait_until_reachable(with_known_hosts(host, tmp_path / "pinned"), timeout=30)


def test_first_contact_pins_when_asked_and_is_strict_after(sshd, tmp_path):
    host, folder = sshd
    new = with_known_hosts(host, tmp_path / "fleet" / "known_hosts")
    hostkeys.wait_for_ssh(new, timeout=10)  # a provider's new host: its key is pinned on first contact
    pinned = (tmp_path / "fleet" / "known_hosts").read_text()
    assert pinned.split()[1:] == (folder / "host_key.pub").read_text().split()[:2]
    assert Connection(new).run("echo strict") == (0, "strict\n", "")
    hostkeys.forget(new)
    assert (tmp_path / "fleet" / "known_hosts").read_text() == ""


# ---- reachability ----

def test_an_unreachable_host_is_reported_in_one_line(sshd):
    host, _ = sshd
    dead = Host(name="dead.ensemble.test", role="shard", shard=2, address="127.0.0.1", ssh_port=free_port(),
                ssh_key=host.ssh_key, known_hosts=host.known_hosts)
    with pytest.raises(SSHError, match=r"^dead\.ensemble\.test: SSH to 127\.0\.0\.1:\d+ failed: connection refused$"):
        Connection(dead).run("true")
    with pytest.raises(EnsembleError, match=r"^dead\.ensemble\.test: SSH on .* not ready after 1s \(.*refused"):
        wait_until_reachable(dead, timeout=1, interval=0.2)


def test_fan_out_gives_each_host_its_value_or_its_error(sshd, tmp_path):
    host, _ = sshd
    dead = Host(name="dead.ensemble.test", role="shard", shard=2, address="127.0.0.1", ssh_port=free_port(),
                ssh_key=host.ssh_key, known_hosts=host.known_hosts)
    twin = Host(name="twin.ensemble.test", role="shard", shard=3, address=host.address, ssh_port=host.ssh_port,
                ssh_user=host.ssh_user, ssh_key=host.ssh_key, known_hosts=host.known_hosts)
    results = Group([host, dead, twin]).run("echo $((6 * 7))")
    assert list(results) == [host.name, dead.name, twin.name]
    assert results[host.name].ok and results[host.name].value == (0, "42\n", "")
    assert results[twin.name].value == (0, "42\n", "")
    assert not results[dead.name].ok and "connection refused" in str(results[dead.name].error)
    started = time.monotonic()
    slept = fan_out([host, twin] * 3, lambda conn: conn.run("sleep 1")[0])  # in parallel, not one after the other
    assert time.monotonic() - started < 4 and [r.value for r in slept.values()] == [0, 0]
    written = Group([host]).write_file_atomically(str(tmp_path / "group.txt"), b"all\n", 0o640)
    assert written[host.name].ok and (tmp_path / "group.txt").read_text() == "all\n"
