"""The runner drives pyinfra for real: on this machine (@local) and over real SSH to a real sshd on loopback.

Checked: per-host results (changed / unchanged / failed), second run = 0 changes, dry run changes
nothing, a failing or unreachable host does not stop the others, strict host key checking
refuses an unknown key, remote commands are counted, progress lines name host and operation.
pyinfra runs in a worker process (ensemble.worker): importing the runner or the CLI patches and
imports nothing of gevent, a crashed worker gives every host an error, Ctrl-C ends the worker and
what it started, and the job's secrets are never in the worker's argv, environment or progress.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import require_root, require_tool
from helpers.ports import free_port
from pyinfra.api import deploy
from pyinfra.operations import files, server

from ensemble.inventory import Target, ssh_data
from ensemble.runner import deploy_reference, run_command, run_deploy

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


@deploy("Write a file")
def write_file(path: str, text: str, fail: bool = False) -> None:
    files.put(name="the file", src=io.StringIO(text), dest=path, mode="640")
    server.shell(name="maybe fail", commands=["false" if fail else "true"], _if=lambda: fail)


def test_local_first_run_changes_then_nothing(tmp_path: Path):
    target = [Target("@local", {})]
    path = str(tmp_path / "a.txt")
    lines: list[str] = []
    first = run_deploy(target, write_file, {"path": path, "text": "one\n"}, progress=lines.append)["@local"]
    assert first.ok and first.changed == 1
    assert Path(path).read_text() == "one\n" and oct(Path(path).stat().st_mode & 0o777) == "0o640"
    assert any("[@local] changed" in line and "the file" in line for line in lines)
    second = run_deploy(target, write_file, {"path": path, "text": "one\n"}, progress=lines.append)["@local"]
    assert second.ok and second.changed == 0 and second.unchanged >= 1
    assert second.commands > 0


def test_dry_run_predicts_and_changes_nothing(tmp_path: Path):
    path = tmp_path / "b.txt"
    result = run_deploy([Target("@local", {})], write_file, {"path": str(path), "text": "x\n"}, dry=True,
                        progress=lambda _: None)["@local"]
    assert result.changed == 1 and any("the file" in c for c in result.changes)
    assert not path.exists()


def test_importing_the_runner_and_the_cli_patches_nothing():
    """The CLI, the tests and library users run unpatched: only the worker process is monkey-patched."""
    script = textwrap.dedent("""
        import json, sys
        import ensemble.runner, ensemble.cli
        imported = {name: name in sys.modules for name in ("gevent", "pyinfra")}
        from gevent import monkey
        patched = {name: bool(monkey.is_module_patched(name)) for name in ("socket", "threading", "ssl")}
        print(json.dumps({"imported": imported, "patched": patched}))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"imported": {"gevent": False, "pyinfra": False},
                                       "patched": {"socket": False, "threading": False, "ssl": False}}


def test_this_process_stays_unpatched_after_a_deploy(tmp_path: Path):
    from gevent import monkey

    result = run_deploy([Target("@local", {})], write_file, {"path": str(tmp_path / "u"), "text": "u"},
                        progress=lambda _: None)["@local"]
    assert result.ok and not monkey.is_module_patched("socket") and not monkey.is_module_patched("threading")


@deploy("Crash the worker")
def crash_worker() -> None:
    os._exit(9)  # the worker process dies while it prepares the deploy


def test_a_crashed_worker_gives_every_host_an_error():
    lines: list[str] = []
    targets = [Target("@local", {}), Target("unreachable", ssh_data("127.0.0.1", port=free_port()))]
    results = run_deploy(targets, crash_worker, progress=lines.append)
    assert set(results) == {"@local", "unreachable"}
    for result in results.values():
        assert not result.ok and "worker failed" in result.error and "code 9" in result.error
    assert any("worker failed" in line for line in lines) and not any("Traceback" in line for line in lines)
    assert run_command([Target("@local", {})], "true", progress=lambda _: None) == {"@local": ""}


def test_a_deploy_the_worker_cannot_import_is_an_error_per_host():
    results = run_deploy([Target("@local", {})], "no_such_module_here:deploy", progress=lambda _: None)
    assert "ModuleNotFoundError" in results["@local"].error and "Traceback" not in results["@local"].error

    @deploy("Local")
    def nested() -> None:
        pass

    with pytest.raises(ValueError, match="cannot import"):
        deploy_reference(nested)
    assert deploy_reference(write_file) == f"{__name__}:write_file"


@deploy("Slow")
def slow_deploy(pid_file: str, token: str) -> None:
    Path(pid_file).write_text(str(os.getpid()))  # the worker's pid (this body runs in the worker)
    print(f"a stray print to stdout does not break the protocol {len(token)}")
    server.shell(name="quick", commands=["true"])
    server.shell(name="slow", commands=["sleep 97.5"])


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _sleepers() -> list[int]:
    found = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if (proc / "cmdline").read_bytes().split(b"\0")[:2] == [b"sleep", b"97.5"]:
                found.append(int(proc.name))
        except OSError:
            pass
    return found


def test_ctrl_c_ends_the_worker_and_the_job_stays_out_of_argv_env_and_progress(tmp_path: Path):
    pid_file, token = tmp_path / "worker.pid", "s3cret-" + os.urandom(8).hex()
    lines: list[str] = []
    seen: dict[str, bytes] = {}

    def progress(line: str) -> None:
        lines.append(line)
        if "quick" in line:  # the slow operation starts now: interrupt as Ctrl-C would
            pid = int(pid_file.read_text())
            seen["argv"] = Path(f"/proc/{pid}/cmdline").read_bytes()
            seen["env"] = Path(f"/proc/{pid}/environ").read_bytes()
            deadline = time.monotonic() + 10
            while not _sleepers() and time.monotonic() < deadline:
                time.sleep(0.05)
            seen["sleeping"] = bool(_sleepers())
            raise KeyboardInterrupt

    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_deploy([Target("@local", {})], slow_deploy, {"pid_file": str(pid_file), "token": token},
                   progress=progress)
    assert time.monotonic() - started < 30
    assert b"ensemble.worker" in seen["argv"] and token.encode() not in seen["argv"] + seen["env"]
    assert not any(token in line for line in lines) and not any("stray print" in line for line in lines)
    assert seen["sleeping"] and not _alive(int(pid_file.read_text()))
    deadline = time.monotonic() + 5
    while _sleepers() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _sleepers(), "the command the worker started outlived it"


def test_failed_operation_is_reported(tmp_path: Path):
    lines: list[str] = []
    result = run_deploy([Target("@local", {})], write_file, {"path": str(tmp_path / "c"), "text": "c", "fail": True},
                        progress=lines.append)["@local"]
    assert not result.ok and result.failed == 1 and "maybe fail" in (result.error or "")
    assert any("FAILED" in line for line in lines)


@pytest.fixture
def sshd(tmp_path: Path):
    """A real OpenSSH server on 127.0.0.1:<free port> with its own host key and our client key."""
    require_root("sshd logs in as root")
    require_tool(SSHD, "openssh-server")
    host_key, client_key = tmp_path / "host_ed25519", tmp_path / "client_ed25519"
    for key in (host_key, client_key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    authorized = tmp_path / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    port = free_port()
    config = tmp_path / "sshd_config"
    config.write_text(f"Port {port}\nListenAddress 127.0.0.1\nHostKey {host_key}\nPidFile {tmp_path}/sshd.pid\n"
                      f"AuthorizedKeysFile {authorized}\nPasswordAuthentication no\nStrictModes no\n"
                      "PermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\nUsePAM no\n")
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.05)
    known = tmp_path / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {host_key.with_suffix('.pub').read_text().split(' ', 2)[0]} "
                     f"{host_key.with_suffix('.pub').read_text().split(' ', 2)[1]}\n")
    yield {"port": port, "key": str(client_key), "known_hosts": str(known), "tmp": tmp_path}
    proc.terminate()
    proc.wait(timeout=10)


def test_ssh_with_pinned_key_and_one_unreachable_host(sshd, tmp_path: Path):
    good = Target("good", ssh_data("127.0.0.1", port=sshd["port"], key=sshd["key"], known_hosts=sshd["known_hosts"]))
    dead = Target("dead", ssh_data("127.0.0.1", port=free_port(), key=sshd["key"], known_hosts=sshd["known_hosts"]))
    path = str(tmp_path / "over-ssh.txt")
    results = run_deploy([good, dead], write_file, {"path": path, "text": "ssh\n"}, progress=lambda _: None)
    assert results["good"].ok and results["good"].changed == 1
    assert Path(path).read_text() == "ssh\n"
    assert not results["dead"].ok and "connect" in (results["dead"].error or "")
    again = run_deploy([good], write_file, {"path": path, "text": "ssh\n"}, progress=lambda _: None)["good"]
    assert again.ok and again.changed == 0


def test_strict_checking_refuses_an_unknown_host_key(sshd, tmp_path: Path):
    other = tmp_path / "other_known_hosts"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "impostor")], check=True)
    other.write_text(f"[127.0.0.1]:{sshd['port']} {(tmp_path / 'impostor.pub').read_text()}")
    target = Target("pinned", ssh_data("127.0.0.1", port=sshd["port"], key=sshd["key"], known_hosts=str(other)))
    result = run_deploy([target], write_file, {"path": str(tmp_path / "never"), "text": "x"},
                        progress=lambda _: None)["pinned"]
    assert not result.ok and not (tmp_path / "never").exists()
    assert run_command([target], "echo hi", progress=lambda _: None)["pinned"] is None


@deploy("Per host")
def per_host_file(folder: str) -> None:
    from pyinfra import host

    files.put(name="own file", src=io.StringIO(host.name), dest=f"{folder}/{host.name}.txt")
    server.shell(name="fails on one host", commands=["false" if host.data.get("fail") else "true"])
    files.put(name="after the failure", src=io.StringIO("done"), dest=f"{folder}/{host.name}.done")


def test_a_failing_host_stops_alone(sshd, tmp_path: Path):
    ssh = ssh_data("127.0.0.1", port=sshd["port"], key=sshd["key"], known_hosts=sshd["known_hosts"])
    targets = [Target("bad", {**ssh, "fail": True}), Target("good", ssh)]
    results = run_deploy(targets, per_host_file, {"folder": str(tmp_path)}, progress=lambda _: None)
    assert results["good"].ok and results["good"].changed == 3
    assert (tmp_path / "good.done").exists()
    assert not results["bad"].ok and results["bad"].failed == 1 and "fails on one host" in results["bad"].error
    assert (tmp_path / "bad.txt").exists() and not (tmp_path / "bad.done").exists()
