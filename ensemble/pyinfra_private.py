"""Every pyinfra internal ensemble relies on, in one place, checked against the installed pyinfra.

pyinfra 3 has no public API for what the worker (ensemble.worker) needs: run one host's
operations on their own so that a failing host stops alone, read a failed operation's
output in order, read the dry-run prediction without running the command generator, ask
whether an operation succeeded before pyinfra records it complete, mark a state as executing
outside `run_ops`, and learn each host's own name for an operation. The functions below are the
only code that touches those internals. `missing()` lists what the installed pyinfra no longer
has and `check()` turns that into one error naming the pyinfra version and every missing name;
the worker calls `check()` before it connects to any host, and tests/test_pyinfra_private.py
calls it on every test run, so a pyinfra upgrade that drops one of them fails loudly instead of
half-way through a deploy. This module imports pyinfra only when a function is called.

Example::

    from ensemble import pyinfra_private

    pyinfra_private.check()                          # raises PyinfraChanged on an incompatible pyinfra
    pyinfra_private.run_host_ops(state, host)        # pyinfra.api.operations._run_host_ops
    pyinfra_private.output_lines(op_meta)[-3:]       # a failed operation's last output lines
"""

from __future__ import annotations

import importlib
import inspect
import types
from collections.abc import Callable, Iterator
from importlib.metadata import PackageNotFoundError, version
from typing import Any

WRITTEN_FOR = "pyinfra 3.10 (pyproject: pyinfra>=3.10,<4)"

OpNamesHook = Callable[[str, set[str]], None]  # (op hash, names) on the current host (pyinfra.context.host)


class PyinfraChanged(RuntimeError):
    """The installed pyinfra lacks an internal ensemble relies on (the message names each one)."""


def pyinfra_version() -> str:
    try:
        return version("pyinfra")
    except PackageNotFoundError:
        return "(not installed)"


def _module(name: str) -> types.ModuleType:
    return importlib.import_module(name)


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _names_used_by(module: types.ModuleType) -> set[str]:
    """Global names the module's functions (nested ones included) look up."""
    names: set[str] = set()
    for value in vars(module).values():
        if isinstance(value, types.FunctionType) and value.__module__ == module.__name__:
            for code in _code_objects(value.__code__):
                names.update(code.co_names)
    return names


def _parameters(func: Any) -> list[str]:
    return list(inspect.signature(func).parameters)


def _checks() -> Iterator[tuple[str, Callable[[], bool]]]:
    """(what ensemble uses, a test that the installed pyinfra still has it)."""
    yield ("pyinfra.api.operations._run_host_ops(state, host)",
           lambda: _parameters(_module("pyinfra.api.operations")._run_host_ops)[:2] == ["state", "host"])
    yield ("pyinfra.api.operation.OperationMeta._combined_output (iterable of lines with .line)",
           lambda: "_combined_output" in vars(_module("pyinfra.api.operation").OperationMeta)
           and "line" in _module("pyinfra.connectors.util").OutputLine.__dataclass_fields__)
    yield ("pyinfra.api.operation.OperationMeta._maybe_is_change",
           lambda: "_maybe_is_change" in vars(_module("pyinfra.api.operation").OperationMeta))
    yield ("pyinfra.api.operation.OperationMeta.did_succeed(_raise_if_not_complete=...)",
           lambda: "_raise_if_not_complete" in _parameters(_module("pyinfra.api.operation").OperationMeta.did_succeed))
    yield ("pyinfra.api.operation.ensure_shared_op_meta(state, op_hash, op_order, global_arguments, names), "
           "looked up as a module global by pyinfra.api.operation",
           lambda: _parameters(_module("pyinfra.api.operation").ensure_shared_op_meta)
           == ["state", "op_hash", "op_order", "global_arguments", "names"]
           and "ensure_shared_op_meta" in _names_used_by(_module("pyinfra.api.operation")))
    yield ("pyinfra.api.state.State.is_executing (set by run_ops, which ensemble does not call)",
           lambda: "is_executing" in vars(_module("pyinfra.api.state").State))


def missing() -> list[str]:
    """What ensemble uses that the installed pyinfra no longer has ([] when all is there).

    Example::

        missing()    # [] with pyinfra 3.10
    """
    gone = []
    for name, test in _checks():
        try:
            ok = test()
        except Exception:  # an import, attribute or signature that is not there any more
            ok = False
        if not ok:
            gone.append(name)
    return gone


def check() -> None:
    """Raise PyinfraChanged naming the installed pyinfra version and every missing internal.

    Example::

        check()    # None with pyinfra 3.10
    """
    gone = missing()
    if gone:
        raise PyinfraChanged(f"pyinfra {pyinfra_version()} lacks internals ensemble uses (written for "
                             f"{WRITTEN_FOR}; see ensemble/pyinfra_private.py): {'; '.join(gone)}")


# ---- the wrappers (the only uses of these internals) ----

def run_host_ops(state: Any, host: Any) -> None:
    """Run every operation of one host in order; raises on the first failed operation.

    pyinfra's own no-wait runner lets that error escape its greenlets (every host stops).
    """
    _module("pyinfra.api.operations")._run_host_ops(state, host)


def mark_executing(state: Any) -> None:
    """What pyinfra's run_ops sets before it runs operations (operations then execute, not queue)."""
    state.is_executing = True


def output_lines(op_meta: Any) -> list[str]:
    """A completed operation's stdout and stderr lines, interleaved as they came (pyinfra exposes
    them only as two separate lists)."""
    output = op_meta._combined_output
    return [line.line for line in output] if output else []


def predicted_change(op_meta: Any) -> bool | None:
    """The dry-run prediction recorded when the operation was added (None: unknown), without
    running the command generator as the public `will_change` would."""
    return op_meta._maybe_is_change


def succeeded(op_meta: Any) -> bool:
    """Whether the operation succeeded, also before pyinfra has recorded it complete (False then)."""
    return op_meta.did_succeed(_raise_if_not_complete=False)


_op_names_hook: list[OpNamesHook] = []


def record_op_names(hook: OpNamesHook) -> None:
    """Call hook(op_hash, names) each time an operation is added for the current host.

    pyinfra keys an operation by its call site, so one loop that puts different files on different
    hosts is one operation whose names are the union of all hosts'; this lets a caller keep each
    host's own names. Installs one wrapper around pyinfra.api.operation.ensure_shared_op_meta; a
    second call replaces the hook.
    """
    operation = _module("pyinfra.api.operation")
    _op_names_hook[:] = [hook]
    original = operation.ensure_shared_op_meta
    if getattr(original, "ensemble_wrapped", False):
        return

    def ensure_shared_op_meta(state, op_hash, op_order, global_arguments, names):
        for current in _op_names_hook:
            current(op_hash, set(names))
        return original(state, op_hash, op_order, global_arguments, names)

    ensure_shared_op_meta.ensemble_wrapped = True  # type: ignore[attr-defined]
    operation.ensure_shared_op_meta = ensure_shared_op_meta
