"""The pyinfra worker: ``python -m ensemble.worker`` runs one job of ensemble.runner in its own process.

pyinfra's Python API needs gevent's monkey patch, applied before anything else is imported (as
pyinfra's own CLI does), so it runs here and never in the process that calls ensemble.runner.

Protocol (ensemble.runner is the only client):

- stdin: one pickle, ``{"sys_path": [...], "job": <pickle bytes>}``; the caller's sys.path is put
  first before the job is unpickled, so the deploy and the kwargs' classes import as they do in the
  caller. The job is ``{"kind": "deploy", "targets": [(name, host data)], "deploy":
  "module:qualname", "kwargs": {...}, "dry": bool, "parallel": int | None}`` or ``{"kind":
  "command", "targets": [...], "command": "..."}``. It carries secrets: it is never printed.
- stdout: one JSON object per line: ``{"progress": "[host] changed  name (0.3s)"}`` as the work
  goes, then ``{"results": {host name: HostResult fields}}`` (deploy) or ``{"results": {host name:
  stdout or null}}`` (command), or ``{"error": "..."}`` when the job could not run at all. Anything
  else written to stdout (a print in a deploy) goes to stderr instead.
- exit code 0 when results were sent. The worker runs in its own session (the runner ends it and what
  it started with one killpg on Ctrl-C) and exits by itself when its parent goes away.

Example (what ensemble.runner does)::

    envelope = pickle.dumps({"sys_path": sys.path, "job": pickle.dumps(job)})
    subprocess.run([sys.executable, "-m", "ensemble.worker"], input=envelope, capture_output=True)
"""
# ruff: noqa: E402 -- the monkey patch comes before every other import, as in pyinfra's CLI

if __name__ == "__main__":  # only the worker process is patched, never a process importing this module
    from gevent import monkey

    monkey.patch_all()

import importlib
import json
import logging
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict
from typing import IO, Any

import gevent
from pyinfra import context as pyinfra_context
from pyinfra.api import BaseStateCallback, Config, Inventory, State
from pyinfra.api.connect import connect_all, disconnect_all
from pyinfra.api.deploy import add_deploy
from pyinfra.api.exceptions import PyinfraError
from pyinfra.api.state import StateStage
from pyinfra.context import ctx_state
from pyinfra.facts.server import Command

from ensemble import pyinfra_private
from ensemble.runner import HostResult

Progress = Callable[[str], None]
Targets = list[tuple[str, dict[str, Any]]]

_OP_NAMES: dict[tuple[str, str], str] = {}  # (host name, op hash) -> name; one job per process


def _record_name(op_hash: str, names: set[str]) -> None:
    _OP_NAMES[(pyinfra_context.host.name, op_hash)] = ", ".join(sorted(names))


def op_name(state: State, host_name: str, op_hash: str) -> str:
    """The name an operation has on one host (pyinfra_private.record_op_names)."""
    return _OP_NAMES.get((host_name, op_hash)) or ", ".join(sorted(state.get_op_meta(op_hash).names)) or op_hash


class _ProgressCallback(BaseStateCallback):
    """Turns pyinfra's events into one line per host and operation, and records errors."""

    def __init__(self, progress: Progress, errors: dict[str, str]):
        self.progress = progress
        self.errors = errors
        self.started: dict[tuple[str, str], float] = {}

    def host_connect(self, state, host):
        self.progress(f"[{host.name}] connected")

    def host_connect_error(self, state, host, error):
        self.errors[host.name] = f"cannot connect: {error}"
        self.progress(f"[{host.name}] FAILED to connect: {error}")

    def operation_host_start(self, state, host, op_hash):
        self.started[(host.name, op_hash)] = time.monotonic()

    # pyinfra fires these callbacks just before it records the outcome on the operation: report
    # from the event loop's next turn, when did_change() and the output are known.
    def operation_host_success(self, state, host, op_hash, retry_count=0):
        gevent.get_hub().loop.run_callback(self._report, state, host, op_hash)

    def operation_host_error(self, state, host, op_hash, retry_count=0, max_retries=0):
        gevent.get_hub().loop.run_callback(self._report, state, host, op_hash)

    def _report(self, state, host, op_hash):
        meta = state.ops[host][op_hash].operation_meta
        took = time.monotonic() - self.started.pop((host.name, op_hash), time.monotonic())
        name = op_name(state, host.name, op_hash)
        if pyinfra_private.succeeded(meta):
            verdict = "changed" if meta.did_change() else "ok"
            self.progress(f"[{host.name}] {verdict:7} {name} ({took:.1f}s)")
            return
        detail = "; ".join(pyinfra_private.output_lines(meta)[-3:]) or "see the operation output"
        self.errors.setdefault(host.name, f"{name}: {detail}")
        self.progress(f"[{host.name}] FAILED  {name}: {detail}")


def _count_commands(host) -> list[int]:
    """Wrap a host's command/transfer methods to count the remote commands they make."""
    counter = [0]
    for method in ("run_shell_command", "put_file", "get_file"):
        original = getattr(host, method)

        def counted(*args, _original=original, **kwargs):
            counter[0] += 1
            return _original(*args, **kwargs)

        setattr(host, method, counted)
    return counter


def _make_state(targets: Targets, check_for_changes: bool, parallel: int | None) -> State:
    inventory = Inventory(([(name, dict(data)) for name, data in targets], {}))
    config = Config(FAIL_PERCENT=None, PARALLEL=parallel or max(1, len(targets)))
    return State(inventory, config, check_for_changes=check_for_changes)


def _collect(state: State, errors: dict[str, str], counters: dict[str, list[int]], dry: bool
             ) -> dict[str, HostResult]:
    results: dict[str, HostResult] = {}
    for host in state.inventory:
        result = HostResult(host.name, error=errors.get(host.name), commands=counters[host.name][0])
        for op_hash, op_data in state.ops[host].items():
            meta = op_data.operation_meta
            name = op_name(state, host.name, op_hash)
            if dry:
                if op_data.global_arguments.get("_if"):
                    continue  # only follows another change (a restart after a file): listed there
                changes = pyinfra_private.predicted_change(meta) is not False
                result.changed += changes
                result.unchanged += not changes
                if changes:
                    result.changes.append(name)
            elif not meta.is_complete():
                continue  # not reached: the host failed earlier
            elif meta.did_error():
                result.failed += 1
            elif meta.did_change():
                result.changed += 1
                result.changes.append(name)
            else:
                result.unchanged += 1
        if host in state.failed_hosts and result.error is None:
            result.error = "failed (see the progress lines above)"
        results[host.name] = result
    return results


def _run_host(state: State, host, errors: dict[str, str], progress: Progress) -> None:
    try:
        pyinfra_private.run_host_ops(state, host)
    except Exception as exc:  # an operation failed (reported by the callback) or could not be run
        state.failed_hosts.add(host)
        gevent.sleep(0)  # let the callback report the failed operation first
        if host.name not in errors:
            errors[host.name] = str(exc)
            progress(f"[{host.name}] FAILED  {exc}")


def _run_hosts_independently(state: State, errors: dict[str, str], progress: Progress) -> None:
    """Every host runs its own operation list at its own pace (pyinfra's --no-wait), and a host
    that fails stops alone. pyinfra's own no-wait runner lets the error escape its greenlets, so
    this is that loop with the error caught (it uses pyinfra's per-host runner)."""
    pyinfra_private.mark_executing(state)
    with ctx_state.use(state):
        greenlets = [state.pool.spawn(_run_host, state, host, errors, progress)
                     for host in state.inventory.get_active_hosts()]
        gevent.joinall(greenlets)


def _prepare(state: State, deploy: Callable[..., Any], kwargs: dict[str, Any], errors: dict[str, str],
             progress: Progress) -> None:
    """add_deploy host by host, so that one host whose preparation fails only fails itself."""
    failed = set()
    for host in list(state.inventory.get_active_hosts()):
        try:
            add_deploy(state, deploy, host=host, **kwargs)
        except Exception as exc:  # a fact that cannot be read, a render error: this host only
            errors[host.name] = f"preparing the deploy: {exc}"
            progress(f"[{host.name}] FAILED  preparing the deploy: {exc}")
            failed.add(host)
    state.fail_hosts(failed)


def resolve(reference: str) -> Callable[..., Any]:
    """The object a "module:qualname" reference names.

    Example::

        resolve("ensemble.components.shard:fleet_host")
    """
    module, _, qualname = reference.partition(":")
    found: Any = importlib.import_module(module)
    for part in qualname.split("."):
        found = getattr(found, part)
    return found


def run_deploy(targets: Targets, deploy: Callable[..., Any], kwargs: dict[str, Any], *, dry: bool,
               parallel: int | None, progress: Progress) -> dict[str, HostResult]:
    """Connect, add the deploy host by host, run every host's operations independently (not when dry)."""
    pyinfra_private.record_op_names(_record_name)
    _OP_NAMES.clear()
    errors: dict[str, str] = {}
    state = _make_state(targets, check_for_changes=dry, parallel=parallel)
    state.add_callback_handler(_ProgressCallback(progress, errors))
    counters = {host.name: _count_commands(host) for host in state.inventory}
    try:
        state.set_stage(StateStage.Connect)
        connect_all(state)
        state.set_stage(StateStage.Prepare)
        _prepare(state, deploy, kwargs, errors, progress)
        if not dry:
            state.set_stage(StateStage.Execute)
            _run_hosts_independently(state, errors, progress)
    except PyinfraError as exc:  # "No hosts remaining!": every host failed, each already reported
        progress(f"every host failed ({exc})")
    finally:
        state.set_stage(StateStage.Disconnect)
        disconnect_all(state)
    return _collect(state, errors, counters, dry)


def run_command(targets: Targets, command: str, *, progress: Progress) -> dict[str, str | None]:
    """Run one shell command on every host: {host name: stdout, or None if unreachable}."""
    errors: dict[str, str] = {}
    state = _make_state(targets, check_for_changes=False, parallel=None)
    state.add_callback_handler(_ProgressCallback(progress, errors))
    outputs: dict[str, str | None] = {name: None for name, _ in targets}
    try:
        state.set_stage(StateStage.Connect)
        connect_all(state)
        state.set_stage(StateStage.Prepare)
        for host in state.inventory.get_active_hosts():
            outputs[host.name] = host.get_fact(Command, command=command) or ""
    except PyinfraError as exc:
        progress(f"every host failed ({exc})")
    finally:
        state.set_stage(StateStage.Disconnect)
        disconnect_all(state)
    return outputs


def run_job(job: dict[str, Any], progress: Progress) -> dict[str, Any]:
    """One job (see the module docstring) -> the JSON-ready results."""
    pyinfra_private.check()
    logging.getLogger("pyinfra").setLevel(logging.CRITICAL)  # the progress lines replace pyinfra's log
    if job["kind"] == "command":
        return run_command(job["targets"], job["command"], progress=progress)
    deploy = resolve(job["deploy"])
    results = run_deploy(job["targets"], deploy, job["kwargs"], dry=job["dry"], parallel=job["parallel"],
                         progress=progress)
    return {name: asdict(result) for name, result in results.items()}


def _exit_with_parent(parent: int) -> None:
    """Stop when the process that started this one is gone (killed: it could not stop the worker),
    with what the worker started when the worker leads its own process group (as the runner starts it)."""
    while True:
        if os.getppid() != parent:
            if os.getpgrp() == os.getpid():
                os.killpg(os.getpid(), signal.SIGKILL)
            os._exit(3)
        gevent.sleep(1)


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # an interrupt stops the worker at once, no traceback
    channel: IO[str] = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # a stray print (a deploy, a library) must not break the protocol: it goes to stderr

    def send(message: dict[str, Any]) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    gevent.spawn(_exit_with_parent, os.getppid())
    try:
        envelope = pickle.loads(sys.stdin.buffer.read())
        sys.path[:0] = [path for path in envelope["sys_path"] if path not in sys.path]
        job = pickle.loads(envelope["job"])
        results = run_job(job, lambda line: send({"progress": line}))
    except Exception as exc:
        traceback.print_exc()  # stderr: the runner keeps it for debugging, the CLI never shows it
        send({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    send({"results": results})
    return 0


if __name__ == "__main__":
    sys.exit(main())
