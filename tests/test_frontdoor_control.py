"""The front door's own view of the shards (ensemble.frontdoor.control): pure parts and the wait."""

from __future__ import annotations

import pytest

from ensemble.errors import EnsembleError
from ensemble.frontdoor.control import ever_read, shard_states, wait_until_ready
from ensemble.providers.base import Host

DOOR = Host("door.test", "frontdoor", None, "10.0.0.10")


def _state(**states):
    return {"plan": {"shards": [{"name": n, "state": s, "reason": "" if s == "ready" else "why"}
                                for n, s in states.items()]}}


def test_shard_states_and_ever_read():
    assert shard_states(_state(a="ready", b="draining")) == {"a": ("ready", ""), "b": ("draining", "why")}
    assert shard_states({}) == {} and shard_states({"plan": "junk"}) == {}
    memory = {"memory": {"shards": {"a": {"last_ok": 17.0}, "b": {"last_ok": None}}}}
    assert ever_read(memory, "a") and not ever_read(memory, "b") and not ever_read(memory, "c")


def test_wait_until_ready_refreshes_until_the_front_door_reads_ready():
    views = iter([_state(a="unhealthy"), _state(a="unhealthy"), _state(a="ready")])
    lines = []
    missing = wait_until_ready(DOOR, ["a"], attempts=5, interval=0, progress=lines.append,
                               refresh=lambda door: next(views), sleep=lambda s: None)
    assert missing == {} and len(lines) == 2 and "a: unhealthy (why)" in lines[0]


def test_wait_until_ready_names_what_is_still_not_ready():
    missing = wait_until_ready(DOOR, ["a", "b"], attempts=3, interval=0, refresh=lambda door: _state(a="ready"),
                               sleep=lambda s: None)
    assert missing == {"b": ("unknown", "not in the front door's maps")}


def test_a_failing_refresh_is_retried_then_reported():
    calls = []

    def refresh(door):
        calls.append(1)
        raise EnsembleError("front door door.test: refresh failed")

    with pytest.raises(EnsembleError, match="refresh failed"):
        wait_until_ready(DOOR, ["a"], attempts=3, interval=0, refresh=refresh, sleep=lambda s: None)
    assert len(calls) == 3
