"""Retries around cloud API calls: the Scaleway SDK has none, and no timeout either.

Transient failures are retried with exponential backoff and full jitter: HTTP 429 (honouring
Retry-After), 5xx, connection errors, timeouts and error bodies that are not JSON (an HTML 502
from a proxy). Everything else (validation errors, quota, not found, bad credentials) fails at
once: retrying would only repeat the same answer. This module knows nothing of the SDK: it
reads `status_code` / `response` attributes that SDK exceptions and `requests` share.

Example::

    policy = RetryPolicy(attempts=6, base=0.5, cap=20)
    server = call_with_retry(lambda: api.get_server(server_id=sid), policy, "get server")
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt

T = TypeVar("T")


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how patiently to retry; `retry_after_cap` bounds a server's Retry-After."""

    attempts: int = 6
    base: float = 0.5
    cap: float = 20.0
    retry_after_cap: float = 60.0


def status_of(exc: BaseException) -> int | None:
    """The HTTP status an SDK or requests exception carries, if any."""
    status = getattr(exc, "status_code", None)
    if status is None and getattr(exc, "response", None) is not None:
        status = getattr(exc.response, "status_code", None)
    return status if isinstance(status, int) else None


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (see module docstring)."""
    if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
        return True
    if isinstance(exc, requests.exceptions.JSONDecodeError):  # HTML error page, truncated body
        return True
    status = status_of(exc)
    return status is not None and (status == 429 or status >= 500)


def retry_after(exc: BaseException) -> float | None:
    """Seconds the server asked us to wait (Retry-After in seconds), if it said so."""
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None) or {}
    value = headers.get("Retry-After")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def backoff_delay(attempt: int, policy: RetryPolicy, exc: BaseException | None) -> float:
    """Delay before retry number `attempt` (1-based): Retry-After if given, else full jitter.

    Example::

        backoff_delay(3, RetryPolicy(base=0.5, cap=20), None)   # uniform in [0, 2.0]
    """
    asked = retry_after(exc) if exc is not None else None
    if asked is not None:
        # Never earlier than asked; a little jitter so parallel workers do not return in lockstep.
        return min(asked, policy.retry_after_cap) + random.uniform(0, policy.base / 2)
    return random.uniform(0, min(policy.cap, policy.base * 2 ** (attempt - 1)))


def call_with_retry(fn: Callable[[], T], policy: RetryPolicy, what: str = "",
                    on_retry: Callable[[str], None] | None = None) -> T:
    """Call fn, retrying transient failures per policy; the last error is re-raised as is."""

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        return backoff_delay(state.attempt_number, policy, exc)

    def before_sleep(state: RetryCallState) -> None:
        if on_retry and state.outcome is not None:
            exc = state.outcome.exception()
            on_retry(f"{what}: {describe(exc)}; retry {state.attempt_number}/{policy.attempts - 1}")

    retrying = Retrying(stop=stop_after_attempt(policy.attempts), wait=wait, reraise=True,
                        retry=retry_if_exception(is_transient), before_sleep=before_sleep)
    return retrying(fn)


def describe(exc: BaseException | None) -> str:
    """One line about a failed call, without bodies that could hold anything sensitive."""
    if exc is None:
        return "failed"
    status = status_of(exc)
    if isinstance(exc, requests.exceptions.JSONDecodeError):
        return "answer was not JSON (proxy error page?)"
    if isinstance(exc, requests.Timeout):
        return "timed out"
    if isinstance(exc, requests.ConnectionError):
        return "connection failed"
    return f"HTTP {status}" if status else exc.__class__.__name__
