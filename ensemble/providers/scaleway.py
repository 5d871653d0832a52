"""The Scaleway provider: a fleet's hosts as Scaleway instances, found again by their tags.

The only module that imports the `scaleway` SDK. Credentials and settings come exactly as for
the `scw` CLI (config profile, then SCW_* environment, SCW_API_URL included). Every SDK call
goes through `ensemble.providers.retry` (the SDK has no retry and no timeout) with a per-call
HTTP timeout. Every resource carries the tags `ensemble`, `ensemble-fleet=<name>` and, for a
host's server/IPs/volume, `ensemble-role=...`, `ensemble-shard=<n>` and `ensemble-created=...`;
throwaway (smoke) resources also carry `ensemble-smoke`.

Example::

    provider = ScalewayProvider(spec)
    hosts = provider.ensure_hosts(spec, progress=print)   # creates what is missing, waits for SSH
    provider.destroy(spec, [h for h in hosts if h.shard == 3])
"""

from __future__ import annotations

import contextvars
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import requests
from scaleway import Client, ScalewayException
from scaleway.block.v1 import BlockV1API
from scaleway.instance.v1 import (
    IpType,
    SecurityGroupPolicy,
    SecurityGroupRuleAction,
    SecurityGroupRuleDirection,
    SecurityGroupRuleProtocol,
    ServerAction,
    SetSecurityGroupRulesRequestRule,
    VolumeServerTemplate,
    VolumeVolumeType,
)
from scaleway.instance.v1.custom_api import InstanceUtilsV1API
from scaleway.marketplace.v2 import MarketplaceV2API
from scaleway_core import api as _sdk_http

from ensemble.cloudinit import read_public_key, user_data
from ensemble.errors import EnsembleError, UsageError
from ensemble.providers import hostkeys
from ensemble.providers.base import Host
from ensemble.providers.retry import RetryPolicy, call_with_retry, describe, is_transient, status_of
from ensemble.spec import FleetSpec

Progress = Callable[[str], None] | None

TAG = "ensemble"
SMOKE_TAG = "ensemble-smoke"
SBS_FAMILIES = ("PRO2", "POP2", "PLAY2")

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
    """An API call failed for good (one line: what, and why); `status` is the HTTP status if any."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


# ---- tags: facts about resources, kept apart from the calls that make them ----

def fleet_tag(fleet: str) -> str:
    return f"ensemble-fleet={fleet}"


def host_tags(fleet: str, role: str, shard: int | None, created: str, throwaway: bool) -> list[str]:
    """Tags of one host's server, IPs and volume.

    Example::

        host_tags("demo", "shard", 2, "2026-01-01T00:00:00Z", False)
        # ["ensemble", "ensemble-fleet=demo", "ensemble-role=shard", "ensemble-shard=2", "ensemble-created=..."]
    """
    tags = [TAG, fleet_tag(fleet), f"ensemble-role={role}"]
    if shard is not None:
        tags.append(f"ensemble-shard={shard}")
    tags.append(f"ensemble-created={created}")
    if throwaway:
        tags.append(SMOKE_TAG)
    return tags


def tag_values(tags: Iterable[str]) -> dict[str, str]:
    """{"ensemble-fleet": "demo", "ensemble-smoke": "", ...} from a tag list."""
    values = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        values[key] = value
    return values


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def firewall_rules(ssh_cidrs: list[str]) -> list[tuple[str, int, str]]:
    """(protocol, port, source range) the fleet's security group lets in; all else is dropped.

    Example::

        firewall_rules(["198.51.100.0/24"])[:2]   # [("tcp", 80, "0.0.0.0/0"), ("tcp", 80, "::/0")]
    """
    rules = []
    for protocol, port in (("tcp", 80), ("tcp", 443), ("udp", 10000)):
        rules += [(protocol, port, "0.0.0.0/0"), (protocol, port, "::/0")]
    rules += [("tcp", 22, cidr) for cidr in ssh_cidrs]
    return rules


@dataclass(frozen=True)
class WantedHost:
    """A host to create: its DNS name, role and shard number."""

    name: str
    role: str
    shard: int | None
    commercial_type: str


# ---- credentials ----

def _config_path() -> Path:
    explicit = os.environ.get("SCW_CONFIG_PATH")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config")
    return Path(base) / "scw" / "config.yaml"


def load_client(spec: FleetSpec) -> Client:
    """A validated SDK client from the scw config profile + SCW_* env; UsageError naming what is wrong."""
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


# ---- the provider ----

class ScalewayProvider:
    """See the module docstring. `throwaway=True` tags everything smoke and creates shards only."""

    name = "scaleway"

    def __init__(self, spec: FleetSpec, *, throwaway: bool = False, retry: RetryPolicy | None = None,
                 client: Client | None = None, poll_interval: float = 1.0, workers: int = 16):
        self.spec = spec
        self.settings = spec.provider.scaleway
        self.zone = self.settings.zone
        self.throwaway = throwaway
        self.retry = retry or RetryPolicy()
        self.poll_interval = poll_interval
        self.workers = workers
        self.client = client or load_client(spec)
        self.instance = InstanceUtilsV1API(self.client)
        self.marketplace = MarketplaceV2API(self.client)
        self.block = BlockV1API(self.client)
        self.progress: Progress = None

    # ---- calls ----
    def call(self, what: str, fn: Callable):
        """One SDK call with timeout + retries; a failure becomes one line naming what failed."""
        token = _TIMEOUT.set(float(self.settings.api_timeout))
        try:
            return call_with_retry(fn, self.retry, what, on_retry=self._say)
        except ScalewayException as exc:
            raise self._error(what, exc) from None
        except (requests.RequestException, ValueError) as exc:
            if isinstance(exc, ValueError) and not is_transient(exc):
                raise
            raise ProviderError(f"Scaleway API: {what}: {describe(exc)} (gave up after "
                                f"{self.retry.attempts} attempts)") from None
        finally:
            _TIMEOUT.reset(token)

    def _error(self, what: str, exc: ScalewayException) -> EnsembleError:
        body = _json_body(exc)
        status = status_of(exc)
        if status == 401 or body.get("type") in ("denied_authentication", "authentication"):
            return UsageError("SCW_SECRET_KEY / SCW_ACCESS_KEY: Scaleway rejected the credentials "
                              f"({what}: HTTP {status}); check the key pair and its project")
        if status == 403 and body.get("type") == "quotas_exceeded":
            details = body.get("details") or [{}]
            resources = ", ".join(f"{d.get('resource', '?')} (quota {d.get('quota', '?')}, "
                                  f"used {d.get('current', '?')})" for d in details)
            return ProviderError(f"Scaleway quota exceeded while trying to {what}: {resources}; "
                                 "raise it in the console (Organization > Quotas) or scale lower")
        message = body.get("message") or describe(exc)
        if body.get("fields"):
            message += f" {body['fields']}"
        gave_up = " (gave up after retries)" if is_transient(exc) else ""
        return ProviderError(f"Scaleway API: {what}: HTTP {status}: {message}{gave_up}", status)

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    # ---- discovery ----
    def _servers(self, tags: list[str]):
        return self.call("list servers", lambda: self.instance.list_servers_all(zone=self.zone, tags=tags))

    def list_hosts(self, spec: FleetSpec) -> list[Host]:
        """The fleet's servers, found by the fleet tag (no local state)."""
        servers = self._servers([fleet_tag(spec.fleet.name)])
        hosts = [self._host(server, spec) for server in servers]
        return sorted(hosts, key=lambda h: (h.role != "frontdoor", h.shard or 0))

    def _host(self, server, spec: FleetSpec) -> Host:
        tags = tag_values(server.tags or [])
        ips = server.public_ips or []
        ipv4 = next((ip.address for ip in ips if str(ip.family) == "inet" and ip.address), None)
        ipv6 = next((ip.address for ip in ips if str(ip.family) == "inet6" and ip.address), None)
        shard = tags.get("ensemble-shard")
        key = self.settings.ssh_private_key
        return Host(
            name=server.name, role=tags.get("ensemble-role", "shard"), shard=int(shard) if shard else None,
            address=ipv4 or "", ssh_user="root", ssh_port=22, ssh_key=str(Path(key).expanduser()) if key else None,
            known_hosts=str(hostkeys.known_hosts_path(spec.fleet.name)), public_ipv4=ipv4, private_ipv4=ipv4,
            ipv6=ipv6, provider_id=server.id,
            labels={**{k: v for k, v in tags.items() if k.startswith("ensemble")}, "state": str(server.state),
                    "commercial_type": server.commercial_type or "", "zone": self.zone},
        )

    # ---- create ----
    def wanted_hosts(self, spec: FleetSpec, existing: list[Host]) -> list[WantedHost]:
        """What the spec asks for and is not there yet (shards by number; the front door by role)."""
        have = {h.shard for h in existing if h.role == "shard"}
        wanted = [WantedHost(spec.shard_name(n), "shard", n, self.settings.commercial_type)
                  for n in range(1, spec.fleet.shards + 1) if n not in have]
        if not self.throwaway and not any(h.role == "frontdoor" for h in existing):
            wanted.insert(0, WantedHost(spec.fleet.domain, "frontdoor", None, self.settings.frontdoor_commercial_type))
        return wanted

    def ensure_hosts(self, spec: FleetSpec, progress: Progress = None) -> list[Host]:
        """Create what is missing (in parallel), start what is stopped, wait for SSH on all."""
        self.progress = progress
        existing = self.list_hosts(spec)
        wanted = self.wanted_hosts(spec, existing)
        public_key = read_public_key(self.settings.ssh_public_key, "provider.scaleway.ssh_public_key")
        if wanted:
            self._say(f"creating {len(wanted)} host(s): {', '.join(w.name for w in wanted)}")
            images = {t: self.resolve_image(spec, t) for t in sorted({w.commercial_type for w in wanted})}
            group = self.ensure_security_group(spec)
            created = self._parallel(wanted, lambda w: self._create(spec, w, images[w.commercial_type], group,
                                                                    public_key))
            if any(isinstance(r, BaseException) for _, r in created):
                self._settle(spec, {r for _, r in created if isinstance(r, str)})
                self._raise_partial(wanted, created)
        restarted = [h for h in existing if h.labels.get("state") == "stopped"]
        for host in restarted:  # a previous run died between create and power on
            self._boot(host.provider_id, host.name, public_key)
        hosts = self.list_hosts(spec)
        new_ids = {h.provider_id for h in restarted}
        if wanted:
            new_ids |= {h.provider_id for h in hosts if h.name in {w.name for w in wanted}}
        self._raise_any(self._parallel(hosts, lambda h: self._ready(h, first_contact=h.provider_id in new_ids)),
                        "not ready")
        return hosts

    def _settle(self, spec: FleetSpec, new_ids: set[str]) -> None:
        """After a partial failure: bring the hosts that were made up (pinning their keys) before reporting."""
        made = [h for h in self.list_hosts(spec) if h.provider_id in new_ids]
        self._parallel(made, lambda h: self._ready(h, first_contact=True))

    def _parallel(self, items: list, fn: Callable) -> list[tuple]:
        """Run fn over items on threads; [(item, result or the exception it raised)] in item order."""
        if not items:
            return []
        with ThreadPoolExecutor(max_workers=min(self.workers, len(items))) as pool:
            futures = [(item, pool.submit(contextvars.copy_context().run, fn, item)) for item in items]
            results = []
            for item, future in futures:
                try:
                    results.append((item, future.result()))
                except Exception as exc:  # noqa: BLE001 - collected and reported together by the caller
                    results.append((item, exc))
        return results

    @staticmethod
    def _raise_any(results: list[tuple], what: str) -> None:
        """Raise the only failure as is, or one line listing several."""
        failed = [(item, r) for item, r in results if isinstance(r, BaseException)]
        if len(failed) == 1 and isinstance(failed[0][1], EnsembleError):
            raise failed[0][1]
        if failed:
            raise ProviderError(f"{what}: " + "; ".join(f"{item.name}: {r}" for item, r in failed))

    def _raise_partial(self, wanted: list[WantedHost], results: list[tuple]) -> None:
        failed = {w: r for w, r in results if isinstance(r, BaseException)}
        if not failed:
            return
        made = [w.name for w in wanted if w not in failed]
        first = next(iter(failed.values()))
        if len(failed) == len(wanted) and isinstance(first, EnsembleError):
            raise first
        lines = "; ".join(f"{w.name}: {r}" for w, r in failed.items())
        kept = f"created and kept (tagged): {', '.join(made)}; " if made else ""
        raise ProviderError(f"{len(failed)} of {len(wanted)} host(s) failed ({lines}); {kept}"
                            "run the same command again to complete the fleet")

    def resolve_image(self, spec: FleetSpec, commercial_type: str) -> str:
        """The marketplace image id for the profile's label in this zone that fits the type."""
        label = self.settings.image or spec.profile.scaleway_image or ""
        wanted_kind = "instance_sbs" if commercial_type.split("-")[0] in SBS_FAMILIES else "instance_local"
        images = self.call(f"find image {label}", lambda: self.marketplace.list_local_images_all(
            zone=self.zone, image_label=label))
        fitting = [i for i in images if commercial_type in (i.compatible_commercial_types or [])
                   and str(i.type_) == wanted_kind]
        if not fitting:
            raise UsageError(f"provider.scaleway.image: no marketplace image {label!r} in zone {self.zone} for "
                             f"commercial type {commercial_type} ({len(images)} with that label, none compatible); "
                             "labels look like debian_bookworm, ubuntu_noble")
        return fitting[0].id

    def ensure_security_group(self, spec: FleetSpec) -> str:
        """The fleet's security group (created once, rules set on every run so they match the spec)."""
        name = f"ensemble-{spec.fleet.name}"
        tags = [TAG, fleet_tag(spec.fleet.name)] + ([SMOKE_TAG] if self.throwaway else [])
        groups = self.call("list security groups", lambda: self.instance.list_security_groups_all(
            zone=self.zone, tags=[fleet_tag(spec.fleet.name)]))
        group = next((g for g in groups if g.name == name), None)
        if group is None:
            group = self.call("create security group", lambda: self.instance.create_security_group(
                zone=self.zone, name=name, description=f"ensemble fleet {spec.fleet.name}", stateful=True,
                inbound_default_policy=SecurityGroupPolicy.DROP, outbound_default_policy=SecurityGroupPolicy.ACCEPT,
                tags=tags, project=self.client.default_project_id)).security_group
        rules = [SetSecurityGroupRulesRequestRule(
            action=SecurityGroupRuleAction.ACCEPT, protocol=SecurityGroupRuleProtocol(protocol),
            direction=SecurityGroupRuleDirection.INBOUND, ip_range=cidr, position=i + 1, dest_port_from=port,
            dest_port_to=port, editable=True) for i, (protocol, port, cidr) in
            enumerate(firewall_rules(self.settings.ssh_allowed_cidrs))]
        self.call("set security group rules", lambda: self.instance.set_security_group_rules(
            zone=self.zone, security_group_id=group.id, rules=rules))
        return group.id

    def _create(self, spec: FleetSpec, want: WantedHost, image: str, group: str, public_key: str) -> str:
        """Create one host: IPs, server with SBS root, tags on all, user data, power on. Returns its id."""
        tags = host_tags(spec.fleet.name, want.role, want.shard, now_iso(), self.throwaway)
        ip_kinds = [IpType.ROUTED_IPV4] + ([IpType.ROUTED_IPV6] if self.settings.ipv6 else [])
        ips: list[str] = []
        try:
            for kind in ip_kinds:
                ip = self.call(f"create {kind} for {want.name}", lambda k=kind: self.instance.create_ip(
                    zone=self.zone, type_=k, tags=tags, project=self.client.default_project_id)).ip
                ips.append(ip.id)
            server = self._create_server(want, image, group, ips, tags)
        except EnsembleError:
            self._delete_ips(ips)  # nothing of a host that does not exist may stay behind
            raise
        for index, volume in (server.volumes or {}).items():
            self.call(f"tag volume {index} of {want.name}", lambda v=volume: self.block.update_volume(
                zone=self.zone, volume_id=v.id, tags=tags))
        self._boot(server.id, want.name, public_key)
        return server.id

    def _create_server(self, want: WantedHost, image: str, group: str, ips: list[str], tags: list[str]):
        """POST the server; if a retried POST had in fact succeeded, adopt that server (no duplicate)."""

        def create():
            found = [s for s in self.instance.list_servers_all(zone=self.zone, tags=tags) if s.name == want.name]
            if found:
                return found[0]
            return self.instance.create_server(
                zone=self.zone, commercial_type=want.commercial_type, name=want.name, image=image,
                volumes={"0": VolumeServerTemplate(volume_type=VolumeVolumeType.SBS_VOLUME, boot=True,
                                                   size=self.settings.root_volume_gb * 1_000_000_000)},
                dynamic_ip_required=False, routed_ip_enabled=True, public_ips=ips, tags=tags,
                security_group=group, project=self.client.default_project_id).server

        return self.call(f"create server {want.name}", create)

    def _boot(self, server_id: str, name: str, public_key: str) -> None:
        # Bytes, not str: the SDK JSON-quotes a str and cloud-init then ignores the document.
        self.call(f"set user data of {name}", lambda: self.instance.set_server_user_data(
            zone=self.zone, server_id=server_id, key="cloud-init", content=user_data(public_key, name)))
        self.call(f"power on {name}", lambda: self.instance.server_action(
            zone=self.zone, server_id=server_id, action=ServerAction.POWERON))

    def _ready(self, host: Host, first_contact: bool) -> None:
        """Wait for state running, then for SSH (pinning the key on a new host's first contact)."""
        deadline = time.monotonic() + self.settings.ssh_timeout
        while True:
            server = self.call(f"get server {host.name}", lambda: self.instance.get_server(
                zone=self.zone, server_id=host.provider_id)).server
            if server.state == "running":
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"{host.name}: still {server.state} after {self.settings.ssh_timeout}s")
            time.sleep(self.poll_interval)
        if first_contact:
            hostkeys.forget(host)  # an earlier host may have had this address
        hostkeys.wait_for_ssh(host, max(1.0, deadline - time.monotonic()))
        self._say(f"{host.name}: SSH ready on {host.address}")

    # ---- destroy ----
    def destroy(self, spec: FleetSpec, hosts: list[Host], progress: Progress = None) -> None:
        """Destroy hosts with their IPs and volumes; with the last host, the fleet's security group too."""
        self.progress = progress
        self._raise_any(self._parallel(hosts, self._destroy_one), "could not destroy")
        if not self._servers([fleet_tag(spec.fleet.name)]):
            self.sweep([fleet_tag(spec.fleet.name)], with_groups=True)

    def _destroy_one(self, host: Host) -> None:
        try:
            server = self.call(f"get server {host.name}", lambda: self.instance.get_server(
                zone=self.zone, server_id=host.provider_id)).server
        except ProviderError as exc:
            if exc.status == 404:
                return
            raise
        ip_ids = [ip.id for ip in server.public_ips or []]
        volume_ids = [v.id for v in (server.volumes or {}).values()]
        self._say(f"{host.name}: terminating")
        if server.state == "stopped":
            self.call(f"delete server {host.name}", lambda: self.instance.delete_server(
                zone=self.zone, server_id=server.id))
        elif server.state != "stopping":
            self.call(f"terminate {host.name}", lambda: self.instance.server_action(
                zone=self.zone, server_id=server.id, action=ServerAction.TERMINATE))
        self._wait_gone(host)
        self._delete_ips(ip_ids)  # routed IPs outlive their server: delete them explicitly
        for volume_id in volume_ids:  # SBS volumes are only detached by terminate
            self._delete_volume(volume_id)
        hostkeys.forget(host)
        self._say(f"{host.name}: destroyed with {len(ip_ids)} IP(s) and {len(volume_ids)} volume(s)")

    def _wait_gone(self, host: Host) -> None:
        deadline = time.monotonic() + self.settings.ssh_timeout
        while time.monotonic() < deadline:
            try:
                self.call(f"get server {host.name}", lambda: self.instance.get_server(
                    zone=self.zone, server_id=host.provider_id))
            except ProviderError as exc:
                if exc.status == 404:
                    return
                raise
            time.sleep(self.poll_interval)
        raise ProviderError(f"{host.name}: server still there {self.settings.ssh_timeout}s after terminate")

    def _delete_ips(self, ip_ids: list[str]) -> None:
        for ip_id in ip_ids:
            self._ignore_404(f"delete IP {ip_id}", lambda i=ip_id: self.instance.delete_ip(zone=self.zone, ip=i))

    def _delete_volume(self, volume_id: str) -> None:
        deadline = time.monotonic() + self.settings.api_timeout * 4
        while True:
            try:
                volume = self.call(f"get volume {volume_id}", lambda: self.block.get_volume(
                    zone=self.zone, volume_id=volume_id))
            except ProviderError as exc:
                if exc.status == 404:
                    return
                raise
            if str(volume.status) == "available":
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"volume {volume_id} still {volume.status}; delete it by hand")
            time.sleep(self.poll_interval)
        self._ignore_404(f"delete volume {volume_id}", lambda: self.block.delete_volume(
            zone=self.zone, volume_id=volume_id))

    def _ignore_404(self, what: str, fn: Callable) -> None:
        try:
            self.call(what, fn)
        except ProviderError as exc:
            if exc.status != 404:
                raise

    # ---- leftovers (failed runs, janitor) ----
    def sweep(self, tags: list[str], with_groups: bool, older_than: datetime | None = None) -> list[str]:
        """Delete detached IPs, available volumes and (if asked) unused groups carrying all these tags."""
        removed = []
        ips = self.call("list IPs", lambda: self.instance.list_ips_all(zone=self.zone, tags=tags))
        for ip in ips:
            if ip.server is None and _old_enough(ip.tags, older_than):
                self._delete_ips([ip.id])
                removed.append(f"ip {ip.address or ip.prefix}")
        volumes = self.call("list volumes", lambda: self.block.list_volumes_all(
            zone=self.zone, tags=tags, include_deleted=False))
        for volume in volumes:
            if all(t in (volume.tags or []) for t in tags) and str(volume.status) == "available" \
                    and _old_enough(volume.tags, older_than):
                self._delete_volume(volume.id)
                removed.append(f"volume {volume.id}")
        if with_groups:
            groups = self.call("list security groups", lambda: self.instance.list_security_groups_all(
                zone=self.zone, tags=tags))
            for group in groups:
                if not self._servers_using(group.id):
                    self._ignore_404(f"delete security group {group.name}", lambda g=group.id: (
                        self.instance.delete_security_group(zone=self.zone, security_group_id=g)))
                    removed.append(f"security group {group.name}")
        return removed

    def _servers_using(self, group_id: str) -> list[str]:
        servers = self._servers([TAG])
        return [s.name for s in servers if s.security_group and s.security_group.id == group_id]

    def janitor(self, older_than_seconds: float, extra_tags: list[str], progress: Progress = None,
                dry_run: bool = False) -> list[str]:
        """Delete smoke resources older than the threshold (servers, then their leftovers); nothing else.

        Only resources tagged ensemble-smoke (and every extra tag) are considered, whatever the fleet.
        """
        self.progress = progress
        tags = [SMOKE_TAG, *extra_tags]
        cutoff = datetime.fromtimestamp(datetime.now(UTC).timestamp() - older_than_seconds, UTC)
        old_servers = [s for s in self._servers(tags) if _old_enough(s.tags, cutoff, s.creation_date)]
        found = [f"server {s.name}" for s in old_servers]
        if dry_run:
            ips = self.call("list IPs", lambda: self.instance.list_ips_all(zone=self.zone, tags=tags))
            return found + [f"ip {ip.address or ip.prefix}" for ip in ips
                            if ip.server is None and _old_enough(ip.tags, cutoff)]
        if old_servers:
            self.destroy_hosts([self._host(s, self.spec) for s in old_servers])
        found += self.sweep(tags, with_groups=False, older_than=cutoff)
        groups = self.call("list security groups", lambda: self.instance.list_security_groups_all(
            zone=self.zone, tags=tags))
        for group in groups:  # smoke fleets' groups, once no server uses them
            if (group.creation_date is None or group.creation_date < cutoff) and not self._servers_using(group.id):
                self._ignore_404(f"delete security group {group.name}", lambda g=group.id: (
                    self.instance.delete_security_group(zone=self.zone, security_group_id=g)))
                found.append(f"security group {group.name}")
        for line in found:
            self._say(f"janitor: deleted {line}")
        return found

    def destroy_all(self, spec: FleetSpec, progress: Progress = None) -> None:
        """Every host of the fleet, then whatever else carries its tag (IPs, volumes, security group)."""
        self.destroy(spec, self.list_hosts(spec), progress=progress)

    def destroy_hosts(self, hosts: list[Host]) -> None:
        self._raise_any(self._parallel(hosts, self._destroy_one), "could not destroy")


def _old_enough(tags: list[str] | None, cutoff: datetime | None, fallback: datetime | None = None) -> bool:
    """True without a cutoff; else True when the resource's ensemble-created time is before it."""
    if cutoff is None:
        return True
    created = parse_time(tag_values(tags or []).get("ensemble-created")) or fallback
    return created is not None and created < cutoff


def _json_body(exc: ScalewayException) -> dict:
    try:
        body = exc.response.json()
    except (ValueError, AttributeError):
        return {}
    return body if isinstance(body, dict) else {}
