"""The Scaleway SDK client: credentials, a timeout on every HTTP request, retries, one-line errors.

Credentials and settings come exactly as for the `scw` CLI (config profile, then SCW_* environment,
SCW_API_URL included). The SDK has no retry and no timeout: every call goes through `Api.call`, which
adds both (`ensemble.providers.retry`) and turns any failure into one line naming what failed.

Example::

    api = Api(load_client(spec), spec.provider.scaleway, RetryPolicy())
    servers = api.call("list servers", lambda: api.instance.list_servers_all(zone=api.zone))
"""

from __future__ import annotations

import contextvars
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import requests
from scaleway import Client, ScalewayException
from scaleway.block.v1 import BlockV1API
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway.marketplace.v2 import MarketplaceV2API
from scaleway_core import api as _sdk_http

from ensemble.errors import EnsembleError, UsageError
from ensemble.providers.retry import RetryPolicy, call_with_retry, describe, is_transient, status_of

if TYPE_CHECKING:
    from ensemble.spec import FleetSpec

# ---- HTTP timeout: the SDK calls requests.request() without one, so a hung API hangs us ----
_TIMEOUT: contextvars.ContextVar[float] = contextvars.ContextVar("scaleway_timeout", default=30.0)


class _RequestsWithTimeout:
    """Stands in for the `requests` module inside scaleway_core.api, adding our timeout."""

    def __getattr__(self, name: str):
        return getattr(requests, name)

    @staticmethod
    def request(*args, **kwargs):
        kwargs.setdefault("timeout", _TIMEOUT.get())
        return requests.request(*args, **kwargs)


_sdk_http.requests = _RequestsWithTimeout()


class ProviderError(EnsembleError):
    """An API call failed for good (one line: what, and why); `status` is the HTTP status if any.

    Example::

        ProviderError("Scaleway API: get server demo-1: HTTP 404: not found", status=404)
    """

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class QuotaExceeded(ProviderError):
    """Scaleway refused to create something because an organisation quota is reached: `quotas` names each
    (e.g. "instances_servers (limit 10, in use 10)"). Never retried; running again does not help until the
    quota is raised.

    Example::

        QuotaExceeded("Scaleway quota reached: instances_ip (limit 10, in use 10) ...", ["instances_ip (...)"])
    """

    def __init__(self, message: str, quotas: list[str]):
        super().__init__(message, status=403)
        self.quotas = quotas


PERMISSION_SETS = "InstancesFullAccess and BlockStorageFullAccess"  # what ensemble's calls need, per project


# ---- credentials ----

def _config_path() -> Path:
    explicit = os.environ.get("SCW_CONFIG_PATH")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "scw" / "config.yaml"


def load_client(spec: FleetSpec) -> Client:
    """A validated SDK client from the scw config profile + SCW_* env; UsageError naming what is wrong.

    Example::

        client = load_client(spec)
        client.default_zone        # "fr-par-1"
    """
    import yaml

    settings = spec.provider.scaleway
    profile = settings.profile or os.environ.get("SCW_PROFILE") or "default"
    path = _config_path()
    where = f"{path} (profile {profile!r})"
    if settings.profile:
        try:
            config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except OSError:
            raise UsageError(f"provider.scaleway.profile: {profile!r} set but {path} cannot be read "
                             "(run `scw init`, or set SCW_CONFIG_PATH)") from None
        except yaml.YAMLError:
            raise UsageError(f"{path}: not valid YAML") from None
        if profile != "default" and profile not in (config.get("profiles") or {}):
            known = ", ".join(sorted(config.get("profiles") or {})) or "none"
            raise UsageError(f"provider.scaleway.profile: no profile {profile!r} in {path} (profiles: {known})")
    sdk_log = logging.getLogger("scaleway")
    level = sdk_log.level
    sdk_log.setLevel(logging.ERROR)  # "no config file" is normal when the SCW_* environment is used
    try:
        client = Client.from_config_file_and_env(profile_name=profile)
    finally:
        sdk_log.setLevel(level)
    _check_credentials(client, where)
    if settings.project_id:
        client.default_project_id = settings.project_id
    if not client.default_project_id:
        raise UsageError(f"provider.scaleway.project_id: empty, and no default project: set SCW_DEFAULT_PROJECT_ID "
                         f"or default_project_id in {where}")
    client.default_zone = settings.zone
    client.default_region = settings.zone.rsplit("-", 1)[0]
    return client


def _check_credentials(client: Client, where: str) -> None:
    from scaleway_core.validations.string_validation import is_access_key, is_project_id, is_secret_key

    checks = [
        ("SCW_ACCESS_KEY", "access_key", client.access_key, is_access_key, "SCW followed by 17 capitals/digits"),
        ("SCW_SECRET_KEY", "secret_key", client.secret_key, is_secret_key, "a UUID"),
    ]
    for env, key, value, valid, shape in checks:
        if not value:
            raise UsageError(f"{env}: Scaleway credentials missing: set {env} or {key} in {where}")
        if not valid(value):  # never echo the value: it may be a secret pasted in the wrong place
            raise UsageError(f"{env} / {key} in {where}: malformed, expected {shape}")
    project = client.default_project_id
    if project and not is_project_id(project):
        raise UsageError(f"SCW_DEFAULT_PROJECT_ID / default_project_id in {where}: malformed, expected a UUID")
    url = client.api_url or ""
    if not url.startswith(("http://", "https://")) or url.endswith("/"):
        raise UsageError(f"SCW_API_URL / api_url in {where}: must be an http(s) URL without trailing slash")


# ---- calls ----

class Api:
    """The SDK's instance, marketplace and block APIs of one zone, and the one way to call them.

    `say` receives a line on each retry (the provider points it at its progress).

    Example::

        api = Api(load_client(spec), spec.provider.scaleway, RetryPolicy())
        api.call("get server demo-1", lambda: api.instance.get_server(zone=api.zone, server_id=sid))
    """

    def __init__(self, client: Client, settings: Any, retry: RetryPolicy, say: Callable[[str], None] | None = None):
        self.client = client
        self.zone: str = settings.zone
        self.timeout = float(settings.api_timeout)
        self.retry = retry
        self.say = say or (lambda _line: None)
        self.instance = InstanceUtilsV1API(client)
        self.marketplace = MarketplaceV2API(client)
        self.block = BlockV1API(client)
        # The SDK logs whole request and response bodies at DEBUG ("scaleway" logger): user data carries a new
        # host's private SSH key, so that logger never goes below INFO, whatever the root logger says.
        sdk_log = logging.getLogger("scaleway")
        sdk_log.setLevel(max(sdk_log.getEffectiveLevel(), logging.INFO))

    @property
    def project(self) -> str:
        return self.client.default_project_id

    def call(self, what: str, fn: Callable):
        """One SDK call with timeout + retries; a failure becomes one line naming what failed."""
        token = _TIMEOUT.set(self.timeout)
        try:
            return call_with_retry(fn, self.retry, what, on_retry=self.say)
        except ScalewayException as exc:
            raise _error(what, exc, self.project) from None
        except (requests.RequestException, ValueError) as exc:
            if isinstance(exc, ValueError) and not is_transient(exc):
                raise
            raise ProviderError(f"Scaleway API: {what}: {describe(exc)} (gave up after "
                                f"{self.retry.attempts} attempts)") from None
        finally:
            _TIMEOUT.reset(token)

    def ignore_404(self, what: str, fn: Callable) -> None:
        """`call`, where "not found" means done (deleting what is already gone)."""
        try:
            self.call(what, fn)
        except ProviderError as exc:
            if exc.status != 404:
                raise

    def get_or_none(self, what: str, fn: Callable):
        """`call`, returning None on "not found"."""
        try:
            return self.call(what, fn)
        except ProviderError as exc:
            if exc.status == 404:
                return None
            raise


def quota_advice(quotas: list[str]) -> str:
    """What to do about reached quotas (one line, shared by one failed call and a failed batch).

    Example::

        quota_advice(["instances_ip (limit 10, in use 10)"])
    """
    return (f"Scaleway quota reached: {', '.join(quotas)}; running again will not help until it is raised: "
            "ask for more in the Scaleway console (Organization > Quotas, https://console.scaleway.com/organization"
            "/quotas; some quotas grow only after identity verification or through support), or ask for fewer "
            "hosts (fleet.shards) or a type with room left (provider.scaleway.commercial_type)")


def _error(what: str, exc: ScalewayException, project: str = "") -> EnsembleError:
    body = _json_body(exc)
    status = status_of(exc)
    if status == 401 or body.get("type") in ("denied_authentication", "authentication"):
        return UsageError("SCW_SECRET_KEY / SCW_ACCESS_KEY: Scaleway rejected the credentials "
                          f"({what}: HTTP {status}); check the key pair and its project")
    if status == 403 and body.get("type") == "quotas_exceeded":
        details = [d for d in body.get("details") or [] if isinstance(d, dict)] or [{}]
        quotas = [f"{d.get('resource', 'unnamed')} (limit {d.get('quota', '?')}, in use {d.get('current', '?')})"
                  for d in details]
        return QuotaExceeded(f"{what}: {quota_advice(quotas)}", quotas)
    if status == 403:  # permissions_denied: the key works, its IAM policy does not allow this
        denied = [f"{d.get('action', '?')} {d.get('resource', '?')}" for d in body.get("details") or []
                  if isinstance(d, dict)]
        needs = f" (denied: {', '.join(denied)})" if denied else ""
        scope = f"project {project}" if project else "the fleet's project"
        return UsageError(f"SCW_ACCESS_KEY: Scaleway denied this API key the right to {what}{needs}: the IAM "
                          f"policy of the key's user or application needs the permission sets {PERMISSION_SETS} "
                          f"on {scope} (console: IAM > Policies; or use a profile/key that has them)")
    message = body.get("message") or describe(exc)
    if body.get("fields"):
        message += f" {body['fields']}"
    gave_up = " (gave up after retries)" if is_transient(exc) else ""
    return ProviderError(f"Scaleway API: {what}: HTTP {status}: {message}{gave_up}", status)


def _json_body(exc: ScalewayException) -> dict:
    try:
        body = exc.response.json()
    except (ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}
