"""The per-fleet known_hosts files both providers keep, and waiting for SSH on new hosts.

A host's key is pinned once: the local provider writes the keys it generated for a container before
the container boots; the Scaleway provider accepts the key a new server shows on first contact
(right after creating it, when nobody else could answer on its fresh address; or the first time this
machine meets it). Every later connection checks strictly (ensemble.ssh): a changed key is
`HostKeyChanged`, naming the host. Destroying a host forgets its lines, since addresses are reused.
Edits are atomic and locked across threads and processes.

Example::

    wait_for_ssh(host, timeout=600)   # pins the key on first contact
    wait_for_ssh(host, timeout=30)    # strict now: HostKeyChanged if it changed
    forget(host)                      # the host is gone
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import paramiko

from ensemble.providers.base import Host
from ensemble.providers.localimage import file_lock
from ensemble.ssh import HostKeyChanged, host_pattern, wait_until_reachable

__all__ = ["HostKeyChanged", "edit_known_hosts", "forget", "host_pattern", "known_hosts_path", "pin_unknown_key",
           "wait_for_ssh"]

_FILE_LOCK = threading.Lock()  # parallel creates edit the same file; file_lock orders processes


def known_hosts_path(fleet: str) -> Path:
    """Per-fleet known_hosts of Scaleway fleets: $XDG_STATE_HOME/ensemble/<fleet>/known_hosts.

    Example::

        known_hosts_path("demo")   # Path("/root/.local/state/ensemble/demo/known_hosts")
    """
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "ensemble" / fleet / "known_hosts"


def edit_known_hosts(path: Path, drop: set[str], add: list[str]) -> None:
    """Rewrite a known_hosts file atomically without the lines naming any of `drop`, plus the lines `add`.

    Nothing happens when the file's folder is gone and there is nothing to add (the fleet's keys were removed).

    Example::

        edit_known_hosts(Path(".../known_hosts"), {"demo-1.meet.test", "10.151.42.11"}, [])
        edit_known_hosts(Path(".../known_hosts"), set(), ["10.1.2.3 ssh-ed25519 AAAA...\\n"])
    """
    if not path.parent.exists():
        if not add:
            return
        path.parent.mkdir(parents=True, mode=0o700)
    with _FILE_LOCK, file_lock(path.parent / ".lock"):
        old = path.read_text().splitlines(keepends=True) if path.exists() else []
        kept = [line for line in old if line.strip() and not (set(line.split()[0].split(",")) & drop)]
        partial = path.with_name(path.name + ".part")
        partial.write_text("".join(kept + [line if line.endswith("\n") else line + "\n" for line in add]))
        partial.chmod(0o600)
        os.replace(partial, path)


def forget(host: Host) -> None:
    """Drop the host's pinned keys (it was destroyed; its address may come back on another host).

    Example::

        forget(host)   # the lines for "51.15.1.2" (or "[51.15.1.2]:2222") are gone
    """
    if host.known_hosts:
        edit_known_hosts(Path(host.known_hosts), {host_pattern(host.address, host.ssh_port)}, [])


def pin_unknown_key(host: Host, pattern: str, key: paramiko.PKey) -> None:
    """Pin a key a host shows on first contact (ensemble.ssh's `on_unknown_key`), in the host's known_hosts.

    Example::

        Connection(host, on_unknown_key=pin_unknown_key).open()
    """
    path = Path(host.known_hosts) if host.known_hosts else known_hosts_path("default")
    edit_known_hosts(path, set(), [f"{pattern} {key.get_name()} {key.get_base64()}\n"])


def wait_for_ssh(host: Host, timeout: float, interval: float = 0.5) -> None:
    """Poll until SSH answers and the key login works, pinning an unknown key; EnsembleError after timeout.

    Example::

        wait_for_ssh(host, timeout=600)
    """
    wait_until_reachable(host, timeout, interval=interval, attempt_timeout=10.0, connect_timeout=5.0,
                         on_unknown_key=pin_unknown_key)
