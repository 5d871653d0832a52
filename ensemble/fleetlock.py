"""The fleet lock: one command at a time changes a fleet (deploy, scale, upgrade, drain, destroy).

An exclusive `flock` on `<lock dir>/<account>--<fleet>.lock` on the operator's machine, plus a note
beside it saying who holds it (user@machine, pid, command, since when). The kernel releases a flock
when its process dies, however it dies: a dead holder's lock is free at once and the next command takes
it over (and says so); there is no stale lock to clear by hand and no pid to trust.

It covers every command run on ONE machine by users who share the lock folder (default
`$XDG_STATE_HOME/ensemble/locks`, i.e. ~/.local/state/ensemble/locks; `ENSEMBLE_LOCK_DIR` moves it).
It does not see commands run from another machine or another user's home (docs/architecture.md).

The lock is re-entrant within a process: `scale` holds it and calls `deploy_fleet`, which takes it again.

Example::

    with fleet_lock("demo", "local", "ensemble deploy", wait=0):
        ...   # a second `ensemble deploy` meanwhile: "fleet 'demo' is locked by root@box (pid 42, ...)"
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ensemble.errors import EnsembleError, UsageError

_held: dict[str, int] = {}  # lock path -> depth, for re-entry within this process
_guard = threading.Lock()


class FleetLocked(UsageError):
    """Another command holds the fleet's lock (exit 2: nothing was done)."""


def lock_dir() -> Path:
    """Where fleet locks live on this machine. Example: lock_dir() -> ~/.local/state/ensemble/locks."""
    configured = os.environ.get("ENSEMBLE_LOCK_DIR")
    if configured:
        return Path(configured)
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "ensemble" / "locks"


def lock_path(fleet: str, account: str) -> Path:
    """The lock file of one fleet in one provider account.

    Example::

        lock_path("demo", "scaleway project 1f0c...")   # .../locks/scaleway-project-1f0c...--demo.lock
    """
    safe = re.sub(r"[^a-z0-9.-]+", "-", account.lower()).strip("-") or "default"
    return lock_dir() / f"{safe[:80]}--{fleet}.lock"


def command_line() -> str:
    """This process's command, shortened (what the holder note shows)."""
    argv = [Path(sys.argv[0]).name if sys.argv else "python", *sys.argv[1:]]
    text = " ".join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


def _holder_note() -> dict:
    user = os.environ.get("USER") or os.environ.get("LOGNAME") or str(os.getuid())
    return {"holder": f"{user}@{socket.gethostname()}", "pid": os.getpid(), "command": command_line(),
            "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def _describe(note: dict | None) -> str:
    if not note:
        return "another process (no note yet)"
    return (f"{note.get('holder', '?')} (pid {note.get('pid', '?')}, `{note.get('command', '?')}`) "
            f"since {note.get('since', '?')}")


def _read_note(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


@contextmanager
def fleet_lock(fleet: str, account: str, *, wait: float = 0, progress=None) -> Iterator[None]:
    """Hold the fleet's lock for the block; FleetLocked (one line: who holds it, since when) when another
    command holds it and `wait` seconds passed (0: do not wait).
    """
    path = lock_path(fleet, account)
    key = str(path)
    with _guard:
        if _held.get(key):
            _held[key] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key] -= 1
        return
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        deadline = time.monotonic() + max(0.0, wait)
        said = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                note = _read_note(path)
                if time.monotonic() >= deadline:
                    hint = "" if wait else " (or pass --wait-lock SECONDS)"
                    raise FleetLocked(f"fleet {fleet!r} is locked by {_describe(note)}; nothing done; "
                                      f"try again when it has finished{hint}") from None
                if progress and not said:
                    progress(f"fleet {fleet!r} is locked by {_describe(note)}; waiting up to {wait:.0f}s")
                    said = True
                time.sleep(0.2)  # polled: a blocking flock would stall gevent-patched callers
        previous = _read_note(path)
        if previous and progress and previous.get("pid") != os.getpid():
            progress(f"took over the lock of fleet {fleet!r} left by {_describe(previous)} (that process is gone)")
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(_holder_note()) + "\n").encode(), 0)
        with _guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _guard:
                _held.pop(key, None)
            try:
                os.ftruncate(fd, 0)  # released cleanly: no note, so the next holder says nothing of a takeover
            except OSError as exc:
                raise EnsembleError(f"cannot clear the lock note {path}: {exc.strerror}") from None
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
