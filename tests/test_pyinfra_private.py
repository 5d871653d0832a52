"""The pyinfra internals ensemble uses (ensemble/pyinfra_private.py) are all in the installed pyinfra.

A pyinfra upgrade that renames or drops one fails here, with one message naming the pyinfra
version and each missing internal, and the worker refuses to start with the same message. The
wrappers' behaviour (a failed operation's output, the dry-run prediction, per-host operation
names, one host failing alone) is checked end to end by tests/test_runner.py.
"""

from __future__ import annotations

import importlib

import pytest

from ensemble import pyinfra_private


def test_the_installed_pyinfra_has_every_internal_ensemble_uses():
    gone = pyinfra_private.missing()
    assert not gone, (f"pyinfra {pyinfra_private.pyinfra_version()} lacks internals ensemble uses "
                      f"(written for {pyinfra_private.WRITTEN_FOR}): {gone}")
    pyinfra_private.check()


def test_a_missing_internal_is_named_with_the_pyinfra_version(monkeypatch):
    operation = importlib.import_module("pyinfra.api.operation")  # pyinfra.api.operation is also a function
    monkeypatch.delattr(importlib.import_module("pyinfra.api.operations"), "_run_host_ops")
    monkeypatch.delattr(operation.OperationMeta, "_maybe_is_change")
    monkeypatch.setattr(operation.OperationMeta, "did_succeed", lambda self: True)
    with pytest.raises(pyinfra_private.PyinfraChanged) as raised:
        pyinfra_private.check()
    message = str(raised.value)
    assert f"pyinfra {pyinfra_private.pyinfra_version()} " in message
    for name in ("_run_host_ops", "_maybe_is_change", "_raise_if_not_complete"):
        assert name in message
    assert "_combined_output" not in message and "ensure_shared_op_meta" not in message


def test_a_hook_that_pyinfra_would_no_longer_call_is_reported(monkeypatch):
    # pyinfra calling its op-meta helper under another name: replacing ensure_shared_op_meta would do nothing
    monkeypatch.setattr(pyinfra_private, "_names_used_by", lambda module: set())
    assert any("ensure_shared_op_meta" in name for name in pyinfra_private.missing())
    monkeypatch.undo()
    assert not pyinfra_private.missing()
