"""The retry wrapper around Scaleway SDK calls: what is retried, how long it waits."""

from __future__ import annotations

import pytest
import requests

from ensemble.errors import EnsembleError
from ensemble.providers.retry import RetryPolicy, backoff_delay, call_with_retry, is_transient

pytest_plugins = ("standins.scaleway_env",)  # the scw fixture


class FakeHTTPError(Exception):
    """Carries status_code and response like scaleway.ScalewayException."""

    def __init__(self, status: int, headers: dict | None = None):
        super().__init__(f"HTTP {status}")
        self.status_code = status
        self.response = type("R", (), {"status_code": status, "headers": headers or {}})()


def test_what_is_transient():
    assert is_transient(FakeHTTPError(429)) and is_transient(FakeHTTPError(502)) and is_transient(FakeHTTPError(500))
    assert is_transient(requests.ConnectionError()) and is_transient(requests.Timeout())
    assert is_transient(requests.exceptions.JSONDecodeError("Expecting value", "<html>", 0))
    for status in (400, 401, 403, 404, 409, 412):
        assert not is_transient(FakeHTTPError(status))


def test_backoff_honours_retry_after_and_grows_with_a_cap():
    policy = RetryPolicy(base=0.5, cap=4, retry_after_cap=30)
    assert 7 <= backoff_delay(1, policy, FakeHTTPError(429, {"Retry-After": "7"})) <= 7.25
    assert 30 <= backoff_delay(1, policy, FakeHTTPError(429, {"Retry-After": "600"})) <= 30.25
    delays = [backoff_delay(attempt, policy, FakeHTTPError(500)) for attempt in range(1, 9) for _ in range(50)]
    assert max(delays) <= 4 and min(delays) >= 0
    assert max(backoff_delay(1, policy, None) for _ in range(50)) <= 0.5


def test_retries_until_success_but_not_a_validation_error():
    attempts = []

    def flaky():
        attempts.append(1)
        if len(attempts) < 3:
            raise FakeHTTPError(503)
        return "ok"

    assert call_with_retry(flaky, RetryPolicy(attempts=5, base=0.01)) == "ok" and len(attempts) == 3
    attempts.clear()

    def invalid():
        attempts.append(1)
        raise FakeHTTPError(400)

    with pytest.raises(FakeHTTPError):
        call_with_retry(invalid, RetryPolicy(attempts=5, base=0.01))
    assert len(attempts) == 1


def test_dropped_connections_and_html_pages_are_retried_against_the_standin(scw):
    scw.api.inject("GET", r"/servers$", status=0, drop=True, times=2)
    scw.api.inject("GET", r"/servers$", status=502, html=True, times=1)
    assert scw.provider().list_hosts(scw.spec) == []
    scw.api.inject("GET", r"/servers$", status=0, drop=True, times=None)
    with pytest.raises(EnsembleError, match="list servers: connection failed"):
        scw.provider().list_hosts(scw.spec)
