"""The runner: runs a pyinfra deploy or command on many hosts, in a worker process.

pyinfra's Python API needs gevent's monkey patch for the whole process; this module leaves the
calling process (the CLI, the tests, a library user) unpatched and does not even import gevent
or pyinfra. Each call starts ``python -m ensemble.worker`` (see ensemble/worker.py), sends it the
job on stdin (pickled: it carries secrets, so never in argv or the environment), calls `progress`
with each progress line the worker streams back (one per host and operation) and returns plain
per-host results. A host that fails (unreachable, or an operation errors) is reported and the
others go on; a worker that crashes gives every host an error result; an exception in the caller
(Ctrl-C) stops the worker and what it started (it runs in its own session).

Example::

    targets = targets_for(provider.ensure_hosts(spec))       # ensemble.inventory
    results = run_deploy(targets, shard_deploy, {"spec": spec})
    results["demo-1.meet.test"].changed      # operations that changed something
"""

from __future__ import annotations

import collections
import json
import logging
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from ensemble.inventory import Target

Progress = Callable[[str], None]

WORKER_MODULE = "ensemble.worker"
_log = logging.getLogger(__name__)


@dataclass
class HostResult:
    """What one run did on one host (plain values: the summary and --json print it).

    Example::

        HostResult("demo-1.meet.test", changed=3, unchanged=40).ok   # True
    """

    name: str
    changed: int = 0
    unchanged: int = 0
    failed: int = 0
    error: str | None = None
    commands: int = 0  # remote commands run (facts + operations + file transfers)
    changes: list[str] = field(default_factory=list)  # names of operations that changed / would change
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None and self.failed == 0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def deploy_reference(deploy: Callable[..., Any] | str) -> str:
    """"module:qualname" of a deploy function, for the worker to import it.

    Example::

        deploy_reference(fleet_host)    # "ensemble.components.shard:fleet_host"
    """
    if isinstance(deploy, str):
        return deploy
    module, qualname = getattr(deploy, "__module__", None), getattr(deploy, "__qualname__", None)
    if module == "__main__":  # `python -m package.module`: the worker imports it under its real name
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        module = spec.name if spec is not None else None
    if not module or not qualname or "<locals>" in qualname:
        raise ValueError(f"the worker cannot import the deploy {deploy!r}: pass a function defined at the top "
                         "level of an importable module, or a 'module:qualname' string")
    return f"{module}:{qualname}"


def _worker_environment() -> dict[str, str]:
    """The caller's environment, with the folder holding the ensemble package on PYTHONPATH (so that
    `-m ensemble.worker` is found even when the caller put it on sys.path itself)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def _keep_tail(stream: IO[bytes], tail: collections.deque[str]) -> None:
    for raw in stream:
        line = raw.decode("utf-8", "replace").rstrip()
        tail.append(line)
        _log.debug("worker: %s", line)


def _stop(proc: subprocess.Popen) -> None:
    """End the worker and whatever it started (its own session: @local commands die with it)."""
    for sig, grace in ((signal.SIGTERM, 5.0), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _run_worker(job: dict[str, Any], progress: Progress) -> tuple[Any, str | None]:
    """Run one job in a worker process: (its results, None) or (None, why there are none)."""
    try:
        envelope = pickle.dumps({"sys_path": list(sys.path), "job": pickle.dumps(job)})
    except Exception as exc:  # a kwarg that cannot cross to the worker: the caller's mistake
        raise TypeError(f"the deploy's arguments cannot be sent to the pyinfra worker: {exc}") from exc
    proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_worker_environment(), start_new_session=True)
    stderr_tail: collections.deque[str] = collections.deque(maxlen=50)
    drain = threading.Thread(target=_keep_tail, args=(proc.stderr, stderr_tail), daemon=True)
    drain.start()
    results, error = None, None
    try:
        try:
            assert proc.stdin is not None and proc.stdout is not None
            proc.stdin.write(envelope)
            proc.stdin.close()
        except BrokenPipeError:
            pass  # the worker died before reading its job: said below
        for raw in proc.stdout:
            try:
                message = json.loads(raw)
            except ValueError:
                _log.debug("worker sent a line that is not JSON: %r", raw[:200])
                continue
            if "progress" in message:
                progress(message["progress"])
            elif "results" in message:
                results = message["results"]
            elif "error" in message:
                error = message["error"]
        code = proc.wait()
    finally:
        if proc.poll() is None:  # the caller's exception (Ctrl-C, a progress callback that raised)
            _stop(proc)
        drain.join(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None and not drain.is_alive():  # else a process the job started still holds it
            proc.stderr.close()
    if results is not None and code == 0:
        return results, None
    if error is None:
        last = next((line for line in reversed(stderr_tail) if line.strip()), "")
        error = f"killed by signal {-code}" if code < 0 else f"exited with code {code}"
        error += f" ({last})" if last else ""
    return None, f"the pyinfra worker failed: {error}"


def run_deploy(targets: list[Target], deploy: Callable[..., Any] | str, kwargs: dict[str, Any] | None = None, *,
               dry: bool = False, progress: Progress = print, parallel: int | None = None
               ) -> dict[str, HostResult]:
    """Run one @deploy function on every target in parallel; return {host name: HostResult}.

    dry=True connects and computes what would change (pyinfra's prediction pass) without
    executing anything. A failing host never stops the others; `HostResult.error` says why.
    `deploy` must be importable by the worker (a module-level function, or "module:qualname");
    `kwargs` must pickle.

    Example::

        run_deploy([Target("h1", ssh_data("10.0.0.2"))], base, {"spec": spec}, dry=True)
    """
    if not targets:
        return {}
    started = time.monotonic()
    job = {"kind": "deploy", "targets": [(t.name, dict(t.data)) for t in targets],
           "deploy": deploy_reference(deploy), "kwargs": kwargs or {}, "dry": dry, "parallel": parallel}
    raw, error = _run_worker(job, progress)
    if error is not None:
        progress(error)
        raw = {t.name: {"name": t.name, "error": error} for t in targets}
    seconds = round(time.monotonic() - started, 2)
    results: dict[str, HostResult] = {}
    for name, fields in raw.items():
        result = HostResult(**{k: v for k, v in fields.items() if k in HostResult.__dataclass_fields__})
        result.seconds = seconds
        results[name] = result
    return results


def run_command(targets: list[Target], command: str, *, progress: Progress = print) -> dict[str, str | None]:
    """Run one read-only shell command on every target; {host name: stdout, or None if unreachable}.

    Used to read state kept on the hosts (e.g. /etc/ensemble/secrets.json) before rendering. A
    worker that fails gives None for every host (and one progress line saying why).

    Example::

        run_command(targets, "cat /etc/ensemble/secrets.json 2>/dev/null || true")
    """
    if not targets:
        return {}
    job = {"kind": "command", "targets": [(t.name, dict(t.data)) for t in targets], "command": command}
    raw, error = _run_worker(job, progress)
    if error is not None:
        progress(error)
        return {t.name: None for t in targets}
    return {t.name: raw.get(t.name) for t in targets}
