"""The Scaleway provider: a fleet's hosts as Scaleway instances, found again by their tags.

With scalewayclient.py (credentials, timeouts, retries, errors) the only modules that import the
`scaleway` SDK; the facts (tags, names, firewall rules) are in scalewaytags.py. Every resource is
tagged (see scalewaytags): hosts are found again by tag, there is no local state. SSH keys of new
servers are pinned on first contact (hostkeys.py).

Example::

    provider = ScalewayProvider(spec)
    hosts = provider.ensure_hosts(spec, progress=print)   # creates what is missing, waits for SSH
    provider.destroy(spec, [h for h in hosts if h.shard == 3])
    ScalewayProvider(spec, throwaway=True)                # smoke runs: tagged ensemble-smoke, shards only
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

from scaleway import Client
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

from ensemble.cloudinit import read_public_key, user_data
from ensemble.errors import EnsembleError, UsageError
from ensemble.providers import hostkeys
from ensemble.providers.base import DeployEnv, Host, Progress
from ensemble.providers.retry import RetryPolicy
from ensemble.providers.scalewayclient import Api, ProviderError, load_client
from ensemble.providers.scalewaytags import (
    SMOKE_TAG,
    TAG,
    WantedHost,
    firewall_rules,
    fleet_tag,
    group_tags,
    host_tags,
    image_kind,
    now_iso,
    old_enough,
    security_group_name,
    tag_values,
    wanted_hosts,
)
from ensemble.spec import FleetSpec

__all__ = ["ProviderError", "ScalewayProvider"]


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
        self.api = Api(client or load_client(spec), self.settings, self.retry, say=self._say)
        self.progress: Progress = None
        self.labels: dict[str, str] = {}  # identity tags of the hosts ensure_hosts creates

    @property
    def account(self) -> str:
        """The project the fleet lives in (part of its identity)."""
        return f"scaleway project {self.api.project}"

    def _say(self, message: str) -> None:
        if self.progress:
            self.progress(message)

    # ---- discovery ----
    def _servers(self, tags: list[str]):
        return self.api.call("list servers", lambda: self.api.instance.list_servers_all(zone=self.zone, tags=tags))

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
        """What the spec asks for and is not there yet (shards by number; the front door unless throwaway)."""
        return wanted_hosts(spec, existing, self.throwaway)

    def ensure_hosts(self, spec: FleetSpec, progress: Progress = None,
                     labels: dict[str, str] | None = None) -> list[Host]:
        """Create what is missing (in parallel), start what is stopped, wait for SSH on all. Hosts created
        are tagged `key=value` for each of `labels` (the fleet's identity)."""
        self.progress = progress
        self.labels = dict(labels or {})
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
        wanted_kind = image_kind(commercial_type)
        images = self.api.call(f"find image {label}", lambda: self.api.marketplace.list_local_images_all(
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
        name = security_group_name(spec.fleet.name)
        tags = group_tags(spec.fleet.name, self.throwaway)
        groups = self.api.call("list security groups", lambda: self.api.instance.list_security_groups_all(
            zone=self.zone, tags=[fleet_tag(spec.fleet.name)]))
        group = next((g for g in groups if g.name == name), None)
        if group is None:
            group = self.api.call("create security group", lambda: self.api.instance.create_security_group(
                zone=self.zone, name=name, description=f"ensemble fleet {spec.fleet.name}", stateful=True,
                inbound_default_policy=SecurityGroupPolicy.DROP, outbound_default_policy=SecurityGroupPolicy.ACCEPT,
                tags=tags, project=self.api.project)).security_group
        rules = [SetSecurityGroupRulesRequestRule(
            action=SecurityGroupRuleAction.ACCEPT, protocol=SecurityGroupRuleProtocol(protocol),
            direction=SecurityGroupRuleDirection.INBOUND, ip_range=cidr, position=i + 1, dest_port_from=port,
            dest_port_to=port, editable=True) for i, (protocol, port, cidr) in
            enumerate(firewall_rules(self.settings.ssh_allowed_cidrs))]
        self.api.call("set security group rules", lambda: self.api.instance.set_security_group_rules(
            zone=self.zone, security_group_id=group.id, rules=rules))
        return group.id

    def _create(self, spec: FleetSpec, want: WantedHost, image: str, group: str, public_key: str) -> str:
        """Create one host: IPs, server with SBS root, tags on all, user data, power on. Returns its id."""
        tags = host_tags(spec.fleet.name, want.role, want.shard, now_iso(), self.throwaway, self.labels)
        ip_kinds = [IpType.ROUTED_IPV4] + ([IpType.ROUTED_IPV6] if self.settings.ipv6 else [])
        ips: list[str] = []
        try:
            for kind in ip_kinds:
                ip = self.api.call(f"create {kind} for {want.name}", lambda k=kind: self.api.instance.create_ip(
                    zone=self.zone, type_=k, tags=tags, project=self.api.project)).ip
                ips.append(ip.id)
            server = self._create_server(want, image, group, ips, tags)
        except EnsembleError:
            self._delete_ips(ips)  # nothing of a host that does not exist may stay behind
            raise
        for index, volume in (server.volumes or {}).items():
            self.api.call(f"tag volume {index} of {want.name}", lambda v=volume: self.api.block.update_volume(
                zone=self.zone, volume_id=v.id, tags=tags))
        self._boot(server.id, want.name, public_key)
        return server.id

    def _create_server(self, want: WantedHost, image: str, group: str, ips: list[str], tags: list[str]):
        """POST the server; if a retried POST had in fact succeeded, adopt that server (no duplicate)."""

        def create():
            found = [s for s in self.api.instance.list_servers_all(zone=self.zone, tags=tags) if s.name == want.name]
            if found:
                return found[0]
            return self.api.instance.create_server(
                zone=self.zone, commercial_type=want.commercial_type, name=want.name, image=image,
                volumes={"0": VolumeServerTemplate(volume_type=VolumeVolumeType.SBS_VOLUME, boot=True,
                                                   size=self.settings.root_volume_gb * 1_000_000_000)},
                dynamic_ip_required=False, routed_ip_enabled=True, public_ips=ips, tags=tags,
                security_group=group, project=self.api.project).server

        return self.api.call(f"create server {want.name}", create)

    def _boot(self, server_id: str, name: str, public_key: str) -> None:
        # Bytes, not str: the SDK JSON-quotes a str and cloud-init then ignores the document.
        self.api.call(f"set user data of {name}", lambda: self.api.instance.set_server_user_data(
            zone=self.zone, server_id=server_id, key="cloud-init", content=user_data(public_key, name)))
        self.api.call(f"power on {name}", lambda: self.api.instance.server_action(
            zone=self.zone, server_id=server_id, action=ServerAction.POWERON))

    def _ready(self, host: Host, first_contact: bool) -> None:
        """Wait for state running, then for SSH (pinning the key on a new host's first contact)."""
        deadline = time.monotonic() + self.settings.ssh_timeout
        while True:
            server = self.api.call(f"get server {host.name}", lambda: self.api.instance.get_server(
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
        found = self.api.get_or_none(f"get server {host.name}", lambda: self.api.instance.get_server(
            zone=self.zone, server_id=host.provider_id))
        if found is None:
            return
        server = found.server
        ip_ids = [ip.id for ip in server.public_ips or []]
        volume_ids = [v.id for v in (server.volumes or {}).values()]
        self._say(f"{host.name}: terminating")
        if server.state == "stopped":
            self.api.call(f"delete server {host.name}", lambda: self.api.instance.delete_server(
                zone=self.zone, server_id=server.id))
        elif server.state != "stopping":
            self.api.call(f"terminate {host.name}", lambda: self.api.instance.server_action(
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
            if self.api.get_or_none(f"get server {host.name}", lambda: self.api.instance.get_server(
                    zone=self.zone, server_id=host.provider_id)) is None:
                return
            time.sleep(self.poll_interval)
        raise ProviderError(f"{host.name}: server still there {self.settings.ssh_timeout}s after terminate")

    def _delete_ips(self, ip_ids: list[str]) -> None:
        for ip_id in ip_ids:
            self.api.ignore_404(f"delete IP {ip_id}", lambda i=ip_id: self.api.instance.delete_ip(zone=self.zone, ip=i))

    def _delete_volume(self, volume_id: str) -> None:
        deadline = time.monotonic() + self.settings.api_timeout * 4
        while True:
            volume = self.api.get_or_none(f"get volume {volume_id}", lambda: self.api.block.get_volume(
                zone=self.zone, volume_id=volume_id))
            if volume is None:
                return
            if str(volume.status) == "available":
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"volume {volume_id} still {volume.status}; delete it by hand")
            time.sleep(self.poll_interval)
        self.api.ignore_404(f"delete volume {volume_id}", lambda: self.api.block.delete_volume(
            zone=self.zone, volume_id=volume_id))

    # ---- leftovers (failed runs, janitor) ----
    def sweep(self, tags: list[str], with_groups: bool, older_than: datetime | None = None) -> list[str]:
        """Delete detached IPs, available volumes and (if asked) unused groups carrying all these tags."""
        removed = []
        ips = self.api.call("list IPs", lambda: self.api.instance.list_ips_all(zone=self.zone, tags=tags))
        for ip in ips:
            if ip.server is None and old_enough(ip.tags, older_than):
                self._delete_ips([ip.id])
                removed.append(f"ip {ip.address or ip.prefix}")
        volumes = self.api.call("list volumes", lambda: self.api.block.list_volumes_all(
            zone=self.zone, tags=tags, include_deleted=False))
        for volume in volumes:
            if all(t in (volume.tags or []) for t in tags) and str(volume.status) == "available" \
                    and old_enough(volume.tags, older_than):
                self._delete_volume(volume.id)
                removed.append(f"volume {volume.id}")
        if with_groups:
            groups = self.api.call("list security groups", lambda: self.api.instance.list_security_groups_all(
                zone=self.zone, tags=tags))
            for group in groups:
                if not self._servers_using(group.id):
                    self.api.ignore_404(f"delete security group {group.name}", lambda g=group.id: (
                        self.api.instance.delete_security_group(zone=self.zone, security_group_id=g)))
                    removed.append(f"security group {group.name}")
        return removed

    def _servers_using(self, group_id: str) -> list[str]:
        servers = self._servers([TAG])
        return [s.name for s in servers if s.security_group and s.security_group.id == group_id]

    def janitor(self, older_than_seconds: float, tags: list[str], *, dry_run: bool = False,
                progress: Progress = None) -> list[str]:
        """Delete smoke resources older than the threshold (servers, then their leftovers); nothing else.

        Only resources tagged ensemble-smoke (and every extra tag in `tags`) are considered, whatever the
        fleet. `dry_run` lists the servers and detached IPs it would delete, deleting nothing.

        Example::

            provider.janitor(7200, ["ci-run-42"], dry_run=True)   # ["server demo-smoke-1f2e3d-1...", "ip 51.15..."]
        """
        extra_tags = tags
        self.progress = progress
        tags = [SMOKE_TAG, *extra_tags]
        cutoff = datetime.fromtimestamp(datetime.now(UTC).timestamp() - older_than_seconds, UTC)
        old_servers = [s for s in self._servers(tags) if old_enough(s.tags, cutoff, s.creation_date)]
        found = [f"server {s.name}" for s in old_servers]
        if dry_run:
            ips = self.api.call("list IPs", lambda: self.api.instance.list_ips_all(zone=self.zone, tags=tags))
            return found + [f"ip {ip.address or ip.prefix}" for ip in ips
                            if ip.server is None and old_enough(ip.tags, cutoff)]
        if old_servers:
            self.destroy_hosts([self._host(s, self.spec) for s in old_servers])
        found += self.sweep(tags, with_groups=False, older_than=cutoff)
        groups = self.api.call("list security groups", lambda: self.api.instance.list_security_groups_all(
            zone=self.zone, tags=tags))
        for group in groups:  # smoke fleets' groups, once no server uses them
            if (group.creation_date is None or group.creation_date < cutoff) and not self._servers_using(group.id):
                self.api.ignore_404(f"delete security group {group.name}", lambda g=group.id: (
                    self.api.instance.delete_security_group(zone=self.zone, security_group_id=g)))
                found.append(f"security group {group.name}")
        for line in found:
            self._say(f"janitor: deleted {line}")
        return found

    def deploy_environment(self, spec: FleetSpec) -> DeployEnv:
        """Nothing to add: Scaleway hosts reach the real repositories and resolve each other by DNS.

        Example::

            ScalewayProvider(spec).deploy_environment(spec) == DeployEnv(spec=spec)   # True
        """
        return DeployEnv(spec=spec)

    def destroy_all(self, spec: FleetSpec, progress: Progress = None) -> None:
        """Every host of the fleet, then whatever else carries its tag (IPs, volumes, security group)."""
        self.destroy(spec, self.list_hosts(spec), progress=progress)

    def destroy_hosts(self, hosts: list[Host]) -> None:
        """Destroy these hosts (with their IPs and volumes), whatever fleet they belong to."""
        self._raise_any(self._parallel(hosts, self._destroy_one), "could not destroy")
