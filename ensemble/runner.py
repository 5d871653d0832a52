"""The runner: the one module that drives pyinfra's Python API.

It does what pyinfra's own CLI does (gevent monkey patch, State + Inventory + Config,
connect, add the deploy, run the operations, disconnect), prints one progress line
per host and operation, and hands back plain per-host results. A host that fails
(unreachable, or an operation errors) is reported and the others go on.

Example::

    targets = targets_for(provider.ensure_hosts(spec))       # ensemble.inventory
    results = run_deploy(targets, shard_deploy, {"spec": spec})
    results["demo-1.meet.test"].changed      # operations that changed something
"""

from __future__ import annotations

import warnings

with warnings.catch_warnings():
    # pyinfra's CLI patches first thing; we may be imported after ssl (scaleway SDK): harmless here.
    warnings.simplefilter("ignore")
    import gevent
    from gevent import monkey

    monkey.patch_all()

import importlib  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

from pyinfra import context as pyinfra_context  # noqa: E402
from pyinfra.api import BaseStateCallback, Config, Inventory, State  # noqa: E402
from pyinfra.api.connect import connect_all, disconnect_all  # noqa: E402
from pyinfra.api.deploy import add_deploy  # noqa: E402
from pyinfra.api.exceptions import PyinfraError  # noqa: E402
from pyinfra.api.operations import _run_host_ops  # noqa: E402
from pyinfra.api.state import StateStage  # noqa: E402
from pyinfra.context import ctx_state  # noqa: E402
from pyinfra.facts.server import Command  # noqa: E402

from ensemble.inventory import Target  # noqa: E402

Progress = Callable[[str], None]
# The module (pyinfra.api re-exports a function of the same name as `operation`).
pyinfra_operation = importlib.import_module("pyinfra.api.operation")


_OP_NAMES: dict[tuple[str, str], str] = {}  # (host name, op hash) -> name; one deploy at a time per process


def _record_names_per_host() -> None:
    """pyinfra keys an operation by its call site, so one put_files loop gives different files on
    different hosts the same operation with a union of names. Keep each host's own name too."""
    original = pyinfra_operation.ensure_shared_op_meta
    if getattr(original, "ensemble_wrapped", False):
        return

    def ensure_shared_op_meta(state, op_hash, op_order, global_arguments, names):
        _OP_NAMES[(pyinfra_context.host.name, op_hash)] = ", ".join(sorted(names))
        return original(state, op_hash, op_order, global_arguments, names)

    ensure_shared_op_meta.ensemble_wrapped = True
    pyinfra_operation.ensure_shared_op_meta = ensure_shared_op_meta


def op_name(state: State, host_name: str, op_hash: str) -> str:
    """The name an operation has on one host (see _record_names_per_host)."""
    return _OP_NAMES.get((host_name, op_hash)) or ", ".join(sorted(state.get_op_meta(op_hash).names)) or op_hash


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
        if meta.did_succeed(_raise_if_not_complete=False):
            verdict = "changed" if meta.did_change() else "ok"
            self.progress(f"[{host.name}] {verdict:7} {name} ({took:.1f}s)")
            return
        output = meta._combined_output  # pyinfra has no public accessor for a failed op's output
        lines = [line.line for line in output] if output else []
        detail = "; ".join(lines[-3:]) or "see the operation output"
        self.errors.setdefault(host.name, f"{name}: {detail}")
        self.progress(f"[{host.name}] FAILED  {name}: {detail}")


def _quiet_pyinfra() -> None:
    # pyinfra logs through the root handlers; our callback prints the progress instead.
    logging.getLogger("pyinfra").setLevel(logging.CRITICAL)


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


def _make_state(targets: list[Target], check_for_changes: bool, parallel: int | None) -> State:
    names = [(t.name, dict(t.data)) for t in targets]
    inventory = Inventory((names, {}))
    config = Config(FAIL_PERCENT=None, PARALLEL=parallel or max(1, len(targets)))
    return State(inventory, config, check_for_changes=check_for_changes)


def _collect(state: State, targets: list[Target], errors: dict[str, str], counters: dict[str, list[int]],
             dry: bool) -> dict[str, HostResult]:
    results: dict[str, HostResult] = {}
    for host in state.inventory:
        result = HostResult(host.name, error=errors.get(host.name), commands=counters[host.name][0])
        for op_hash, op_data in state.ops[host].items():
            meta = op_data.operation_meta
            name = op_name(state, host.name, op_hash)
            if dry:
                if op_data.global_arguments.get("_if"):
                    continue  # only follows another change (a restart after a file): listed there
                changes = meta._maybe_is_change is not False
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


def run_deploy(targets: list[Target], deploy: Callable[..., Any], kwargs: dict[str, Any] | None = None, *,
               dry: bool = False, progress: Progress = print, parallel: int | None = None
               ) -> dict[str, HostResult]:
    """Run one @deploy function on every target in parallel; return {host name: HostResult}.

    dry=True connects and computes what would change (pyinfra's prediction pass) without
    executing anything. A failing host never stops the others; `HostResult.error` says why.

    Example::

        run_deploy([Target("h1", ssh_data("10.0.0.2"))], base, {"spec": spec}, dry=True)
    """
    _quiet_pyinfra()
    _record_names_per_host()
    _OP_NAMES.clear()
    started = time.monotonic()
    errors: dict[str, str] = {}
    state = _make_state(targets, check_for_changes=dry, parallel=parallel)
    state.add_callback_handler(_ProgressCallback(progress, errors))
    counters = {host.name: _count_commands(host) for host in state.inventory}
    try:
        state.set_stage(StateStage.Connect)
        connect_all(state)
        state.set_stage(StateStage.Prepare)
        _prepare(state, deploy, kwargs or {}, errors, progress)
        if not dry:
            state.set_stage(StateStage.Execute)
            _run_hosts_independently(state, errors, progress)
    except PyinfraError as exc:  # "No hosts remaining!": every host failed, each already reported
        progress(f"every host failed ({exc})")
    finally:
        state.set_stage(StateStage.Disconnect)
        disconnect_all(state)
    results = _collect(state, targets, errors, counters, dry)
    for result in results.values():
        result.seconds = round(time.monotonic() - started, 2)
    return results


def _run_host(state: State, host, errors: dict[str, str], progress: Progress) -> None:
    try:
        _run_host_ops(state, host)
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
    state.is_executing = True
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


def run_command(targets: list[Target], command: str, *, progress: Progress = print) -> dict[str, str | None]:
    """Run one read-only shell command on every target; {host name: stdout, or None if unreachable}.

    Used to read state kept on the hosts (e.g. /etc/ensemble/secrets.json) before rendering.

    Example::

        run_command(targets, "cat /etc/ensemble/secrets.json 2>/dev/null || true")
    """
    _quiet_pyinfra()
    errors: dict[str, str] = {}
    state = _make_state(targets, check_for_changes=False, parallel=None)
    state.add_callback_handler(_ProgressCallback(progress, errors))
    outputs: dict[str, str | None] = {t.name: None for t in targets}
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
