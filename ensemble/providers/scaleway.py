"""The Scaleway provider: a fleet's hosts as Scaleway instances, found again by their tags.

With scalewayclient.py (credentials, timeouts, retries, errors) the only modules that import the
`scaleway` SDK; the facts (tags, names, firewall rules) are in scalewaytags.py. Every resource is
tagged (see scalewaytags): hosts are found again by tag, there is no local state. A new server's SSH
host key is made here before the server exists, installed by cloud-init and carried in a tag, so every
runner pins it from the API before its first connection (no trust on first use; hostkeys.py). Two runs
creating the same host at once both check for duplicates after creating: the first created is kept and
each run deletes its own duplicate (see `_keep_first`).

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
from ensemble.providers.scalewayclient import Api, ProviderError, QuotaExceeded, load_client, quota_advice
from ensemble.providers.scalewaytags import (
    HOSTKEY_TAG,
    SMOKE_TAG,
    WantedHost,
    creation_order,
    firewall_rules,
    fleet_tag,
    group_tags,
    host_tags,
    hostkey_tag,
    image_kind,
    now_iso,
    old_enough,
    parse_time,
    security_group_name,
    slot_tags,
    tag_values,
    wanted_hosts,
)
from ensemble.spec import FleetSpec

__all__ = ["ProviderError", "ScalewayProvider"]


def _named(name: str, error: BaseException) -> str:
    """One failure as "<name>: <why>", without saying the name twice when the error already starts with it.

    Example::

        _named("demo-1", SSHError("demo-1", "SSH ... not ready"))   # "demo-1: SSH ... not ready"
    """
    text = str(error)
    return text if text.startswith(f"{name}:") else f"{name}: {text}"


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
        self._made: set[str] = set()  # ids of the servers this provider object created (and kept so far)
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
        # the API (authenticated, over TLS) is where host keys are trusted from: pinned before any connection
        hostkeys.pin_keys(hostkeys.known_hosts_path(spec.fleet.name), {
            hostkeys.host_pattern(h.address, h.ssh_port): f"ssh-ed25519 {h.labels[HOSTKEY_TAG]}"
            for h in hosts if h.address and h.labels.get(HOSTKEY_TAG)})
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
                    "commercial_type": server.commercial_type or "", "zone": self.zone,
                    "created": creation_order(server.creation_date, server.id)[0]},
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
        public_key = read_public_key(self.settings.ssh_public_key, "provider.scaleway.ssh_public_key")
        existing = self._drop_unbootable(spec, self.list_hosts(spec))
        if existing:
            self._tag_untagged_volumes(spec)
        wanted = self.wanted_hosts(spec, existing)
        if wanted:
            self._say(f"creating {len(wanted)} host(s): {', '.join(w.name for w in wanted)}")
            images = {t: self.resolve_image(spec, t) for t in sorted({w.commercial_type for w in wanted})}
            group = self.ensure_security_group(spec)
            created = self._parallel(wanted, lambda w: self._create(spec, w, images[w.commercial_type], group,
                                                                    public_key))
            if any(isinstance(r, BaseException) for _, r in created):
                self._settle(spec, {r for _, r in created if isinstance(r, str)}, public_key)
                self._raise_partial(wanted, created)
        restarted = [h for h in existing if h.labels.get("state") == "stopped" and not self._young(h)]
        for host in restarted:  # stopped: by an operator, or a run died between user data and power on
            self._power_on(host.provider_id, host.name)
        hosts = self._keep_first(spec, self.list_hosts(spec), mine=set())
        self._raise_any(self._parallel(hosts, lambda h: self._ready(h, public_key)), "not ready")
        # a run that created a duplicate at the same moment may only see it now: the later one goes
        return self._keep_first(spec, self.list_hosts(spec), mine=self._made)

    def _young(self, host: Host) -> bool:
        """Created less than ssh_timeout ago: a stopped one may be another run's, about to boot it (left alone:
        powering it on before its user data is set would boot it without its host key)."""
        created = parse_time(host.labels.get("created"))
        return created is not None and (datetime.now(UTC) - created).total_seconds() < self.settings.ssh_timeout

    def _drop_unbootable(self, spec: FleetSpec, hosts: list[Host]) -> list[Host]:
        """A stopped server without cloud-init user data never booted (its run died right after creating it):
        its host key was only in that run's memory, so it is deleted and made again. Others are kept."""
        kept = []
        for host in hosts:
            if host.labels.get("state") == "stopped" and host.labels.get(HOSTKEY_TAG) and not self._young(host) \
                    and not self._user_data(host):
                self._say(f"{host.name}: created by a run that died before booting it; making it again")
                self._destroy_one(host)
                continue
            kept.append(host)
        return kept

    def _user_data(self, host: Host) -> bytes:
        """The server's cloud-init user data (b"" if it has none)."""
        found = self.api.get_or_none(f"get user data of {host.name}", lambda: self.api.instance.get_server_user_data(
            zone=self.zone, server_id=host.provider_id, key="cloud-init"))
        return found.content if found is not None else b""

    def _keep_first(self, spec: FleetSpec, hosts: list[Host], mine: set[str]) -> list[Host]:
        """One host per place (front door, shard n): when two runs created the same host at once, the first
        created is the one every run keeps (creation_order); this run deletes the duplicates it made itself
        (`mine`), and leaves another run's to that run."""
        places: dict[tuple, list[Host]] = {}
        for host in hosts:
            places.setdefault((host.role, host.shard), []).append(host)
        kept = []
        for place in places.values():
            place.sort(key=lambda h: (h.labels.get("created", ""), h.provider_id or ""))
            kept.append(place[0])
            for duplicate in place[1:]:
                if duplicate.provider_id in mine:
                    self._say(f"{duplicate.name}: another run created it first; deleting this run's duplicate")
                    self._destroy_one(duplicate)
        return sorted(kept, key=lambda h: (h.role != "frontdoor", h.shard or 0))

    def _settle(self, spec: FleetSpec, new_ids: set[str], public_key: str) -> None:
        """After a partial failure: bring the hosts that were made up (pinning their keys) before reporting."""
        made = [h for h in self.list_hosts(spec) if h.provider_id in new_ids]
        self._parallel(made, lambda h: self._ready(h, public_key))

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
            raise ProviderError(f"{what}: " + "; ".join(_named(item.name, r) for item, r in failed))

    def _raise_partial(self, wanted: list[WantedHost], results: list[tuple]) -> None:
        failed = {w: r for w, r in results if isinstance(r, BaseException)}
        if not failed:
            return
        made = [w.name for w in wanted if w not in failed]
        first = next(iter(failed.values()))
        kept = f"created and kept (tagged): {', '.join(made)}; " if made else ""
        quotas = sorted({q for r in failed.values() if isinstance(r, QuotaExceeded) for q in r.quotas})
        if quotas and all(isinstance(r, QuotaExceeded) for r in failed.values()):  # again would fail the same way
            names = ", ".join(w.name for w in failed)
            raise ProviderError(f"{len(failed)} of {len(wanted)} host(s) not created ({names}): {kept}"
                                f"{quota_advice(quotas)}")
        if len(failed) == len(wanted) and isinstance(first, EnsembleError) and (
                len(failed) == 1 or all(isinstance(r, UsageError) for r in failed.values())):
            raise first  # one host, or a setting every host trips on (credentials, permissions): said once
        lines = "; ".join(_named(w.name, r) for w, r in failed.items() if not isinstance(r, QuotaExceeded))
        quota = f"; {', '.join(w.name for w, r in failed.items() if isinstance(r, QuotaExceeded))}: " \
            f"{quota_advice(quotas)}" if quotas else ""
        raise ProviderError(f"{len(failed)} of {len(wanted)} host(s) failed ({lines}{quota}); {kept}"
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
        def first_group():
            groups = self.api.call("list security groups", lambda: self.api.instance.list_security_groups_all(
                zone=self.zone, tags=[fleet_tag(spec.fleet.name)]))
            return min((g for g in groups if g.name == name), key=lambda g: creation_order(g.creation_date, g.id),
                       default=None)

        group = first_group()
        if group is None:
            mine = self.api.call("create security group", lambda: self.api.instance.create_security_group(
                zone=self.zone, name=name, description=f"ensemble fleet {spec.fleet.name}", stateful=True,
                inbound_default_policy=SecurityGroupPolicy.DROP, outbound_default_policy=SecurityGroupPolicy.ACCEPT,
                tags=tags, project=self.api.project)).security_group
            group = first_group() or mine
            if group.id != mine.id:  # another run created it at the same moment, first: use that one
                self.api.ignore_404(f"delete security group {name}", lambda: self.api.instance.delete_security_group(
                    zone=self.zone, security_group_id=mine.id))
        t = spec.turn
        turn_ports = (t.port, t.relay_min_port, t.relay_max_port) if t.enabled else None
        rules = [SetSecurityGroupRulesRequestRule(
            action=SecurityGroupRuleAction.ACCEPT, protocol=SecurityGroupRuleProtocol(protocol),
            direction=SecurityGroupRuleDirection.INBOUND, ip_range=cidr, position=i + 1, dest_port_from=first,
            dest_port_to=last, editable=True) for i, (protocol, first, last, cidr) in
            enumerate(firewall_rules(self.settings.ssh_allowed_cidrs, turn_ports))]
        self.api.call("set security group rules", lambda: self.api.instance.set_security_group_rules(
            zone=self.zone, security_group_id=group.id, rules=rules))
        return group.id

    def _create(self, spec: FleetSpec, want: WantedHost, image: str, group: str, public_key: str) -> str:
        """Create one host: IPs, server with SBS root and its host key, tags on all, user data, power on.

        Returns the id of the server that fills the place: this run's, or (when another run created the same
        host first) that one, after deleting this run's duplicate."""
        tags = host_tags(spec.fleet.name, want.role, want.shard, now_iso(), self.throwaway, self.labels)
        host_key = hostkeys.generate_host_key()
        ip_kinds = [IpType.ROUTED_IPV4] + ([IpType.ROUTED_IPV6] if self.settings.ipv6 else [])
        ips: list[str] = []
        try:
            for kind in ip_kinds:
                ip = self.api.call(f"create {kind} for {want.name}", lambda k=kind: self.api.instance.create_ip(
                    zone=self.zone, type_=k, tags=tags, project=self.api.project)).ip
                ips.append(ip.id)
            server = self._create_server(want, image, group, ips, tags + [hostkey_tag(host_key.blob)])
        except EnsembleError:
            self._delete_ips(ips)  # nothing of a host that does not exist may stay behind
            raise
        first = self._first_in_place(spec, want)
        if first is not None and first.id != server.id:
            self._say(f"{want.name}: another run created it first; deleting this run's duplicate")
            self._destroy_one(self._host(server, spec))
            return first.id
        self._made.add(server.id)
        try:  # the server template cannot tag its volume: tagged right away, or the host is undone
            self._tag_volumes(want.name, server, tags)
        except EnsembleError as exc:
            try:  # its volume goes with it (found through the server)
                self._destroy_one(self._host(server, spec), tag_volumes=False)
            except EnsembleError as undo:
                raise ProviderError(f"{exc}; undoing the half-made server failed too ({_named(want.name, undo)}); "
                                    "`ensemble fleet destroy` removes it") from None
            raise
        self._boot(server.id, want.name, public_key, host_key)
        return server.id

    def _tag_volumes(self, name: str, server, tags: list[str], tagged: set[str] | None = None) -> None:
        """Give the server's volumes the host's tags (all but the host key), so that whatever happens to the
        server later (a failed create, a destroy cut short) destroy and janitor find them by tag. Volumes in
        `tagged` (ids) already carry them."""
        tags = [t for t in tags if not t.startswith(f"{HOSTKEY_TAG}=")]
        for index, volume in (server.volumes or {}).items():
            if tagged is None or volume.id not in tagged:
                self.api.call(f"tag volume {index} of {name}", lambda v=volume: self.api.block.update_volume(
                    zone=self.zone, volume_id=v.id, tags=tags))

    def _tag_untagged_volumes(self, spec: FleetSpec) -> None:
        """Volumes of the fleet's servers that lack the fleet's tag (a run died between creating a server and
        tagging its volume) get the host's tags now."""
        servers = self._servers([fleet_tag(spec.fleet.name)])
        volumes = self.api.call("list volumes", lambda: self.api.block.list_volumes_all(
            zone=self.zone, tags=[fleet_tag(spec.fleet.name)], include_deleted=False))
        tagged = {v.id for v in volumes if fleet_tag(spec.fleet.name) in (v.tags or [])}
        for server in servers:
            self._tag_volumes(server.name, server, list(server.tags or []), tagged)

    def _first_in_place(self, spec: FleetSpec, want: WantedHost):
        """The first created server holding this host's place (role, shard), as the API lists it now."""
        servers = self._servers(slot_tags(spec.fleet.name, want.role, want.shard))
        return min(servers, key=lambda s: creation_order(s.creation_date, s.id), default=None)

    def _create_server(self, want: WantedHost, image: str, group: str, ips: list[str], tags: list[str]):
        """POST the server; if a retried POST had in fact succeeded, adopt that server (no duplicate)."""

        def create():  # a server carrying this run's own new IP can only be this run's
            found = [s for s in self.api.instance.list_servers_all(zone=self.zone, tags=tags[:3])
                     if ips[0] in {ip.id for ip in s.public_ips or []}]
            if found:
                return found[0]
            return self.api.instance.create_server(
                zone=self.zone, commercial_type=want.commercial_type, name=want.name, image=image,
                volumes={"0": VolumeServerTemplate(volume_type=VolumeVolumeType.SBS_VOLUME, boot=True,
                                                   size=self.settings.root_volume_gb * 1_000_000_000)},
                dynamic_ip_required=False, routed_ip_enabled=True, public_ips=ips, tags=tags,
                security_group=group, project=self.api.project).server

        return self.api.call(f"create server {want.name}", create)

    def _boot(self, server_id: str, name: str, public_key: str, host_key: hostkeys.HostKey) -> None:
        # Bytes, not str: the SDK JSON-quotes a str and cloud-init then ignores the document.
        content = user_data(public_key, name, host_key.public, host_key.private)
        self.api.call(f"set user data of {name}", lambda: self.api.instance.set_server_user_data(
            zone=self.zone, server_id=server_id, key="cloud-init", content=content))
        self._power_on(server_id, name)

    def _power_on(self, server_id: str, name: str) -> None:
        self.api.call(f"power on {name}", lambda: self.api.instance.server_action(
            zone=self.zone, server_id=server_id, action=ServerAction.POWERON))

    def _ready(self, host: Host, public_key: str) -> None:
        """Wait for state running, then for SSH with the host key its tag pins (hosts made before host-key
        tags: the key shown on first contact is pinned); then drop the private key from the user data."""
        deadline = time.monotonic() + self.settings.ssh_timeout
        while True:
            server = self.api.call(f"get server {host.name}", lambda: self.api.instance.get_server(
                zone=self.zone, server_id=host.provider_id)).server
            if server.state == "running":
                break
            if time.monotonic() > deadline:
                raise ProviderError(f"{host.name}: still {server.state} after {self.settings.ssh_timeout}s")
            time.sleep(self.poll_interval)
        tagged = bool(host.labels.get(HOSTKEY_TAG))
        hostkeys.wait_for_ssh(host, max(1.0, deadline - time.monotonic()), pin_unknown=not tagged)
        if tagged and b"ssh_keys:" in self._user_data(host):  # the host has its key: the API copy goes
            self.api.call(f"set user data of {host.name}", lambda: self.api.instance.set_server_user_data(
                zone=self.zone, server_id=host.provider_id, key="cloud-init", content=user_data(public_key, host.name)))
        self._say(f"{host.name}: SSH ready on {host.address}")

    # ---- destroy ----
    def destroy(self, spec: FleetSpec, hosts: list[Host], progress: Progress = None) -> None:
        """Destroy hosts with their IPs and volumes; with the last host, the fleet's security group too."""
        self.progress = progress
        self._raise_any(self._parallel(hosts, self._destroy_one), "could not destroy")
        if not self._servers([fleet_tag(spec.fleet.name)]):
            self.sweep([fleet_tag(spec.fleet.name)], with_groups=True)

    def _destroy_one(self, host: Host, tag_volumes: bool = True) -> None:
        found = self.api.get_or_none(f"get server {host.name}", lambda: self.api.instance.get_server(
            zone=self.zone, server_id=host.provider_id))
        if found is None:
            return
        server = found.server
        ip_ids = [ip.id for ip in server.public_ips or []]
        volume_ids = [v.id for v in (server.volumes or {}).values()]
        if tag_volumes and any(t.startswith("ensemble-fleet=") for t in server.tags or []):
            # tagged before the server goes: if deleting a volume fails below, destroy/janitor still find it
            self._tag_volumes(host.name, server, list(server.tags or []), self._tagged_volumes(volume_ids))
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

    def _tagged_volumes(self, volume_ids: list[str]) -> set[str]:
        """Which of these volumes already carry a fleet tag."""
        tagged = set()
        for volume_id in volume_ids:
            volume = self.api.get_or_none(f"get volume {volume_id}", lambda v=volume_id: self.api.block.get_volume(
                zone=self.zone, volume_id=v))
            if volume is not None and any(t.startswith("ensemble-fleet=") for t in volume.tags or []):
                tagged.add(volume_id)
        return tagged

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
        """Ids of the servers (any, ensemble's or not) that use this security group."""
        servers = self._servers([])
        return [s.id for s in servers if s.security_group and s.security_group.id == group_id]

    def janitor(self, older_than_seconds: float, tags: list[str], *, dry_run: bool = False,
                progress: Progress = None) -> list[str]:
        """Delete smoke resources older than the threshold; nothing else. One line per resource, and the
        lines `dry_run` shows are exactly what a real run deletes (the same plan, see `_janitor_plan`).

        Only resources tagged ensemble-smoke (and every extra tag in `tags`) are considered, whatever the
        fleet: old servers with every IP and volume they hold, detached IPs, available volumes, and security
        groups no server will use any more.

        Example::

            provider.janitor(7200, ["ci-run-42"], dry_run=True)
            # ["server demo-smoke-1f2e3d-1...", "ip 51.15.1.2 (of demo-smoke-1f2e3d-1...)", "volume 3f2e... (of ...)"]
        """
        self.progress = progress
        cutoff = datetime.fromtimestamp(datetime.now(UTC).timestamp() - older_than_seconds, UTC)
        plan = self._janitor_plan([SMOKE_TAG, *tags], cutoff)
        lines = [line for line, _ in plan]
        if dry_run:
            return lines
        for line, delete in plan:
            delete()
            self._say(f"janitor: deleted {line}")
        return lines

    def _janitor_plan(self, tags: list[str], cutoff: datetime) -> list[tuple[str, Callable[[], None]]]:
        """[(line, how to delete it)] for every resource the janitor removes, in a safe order: servers (their
        IPs and volumes go with them), then detached IPs, available volumes, unused security groups."""
        plan: list[tuple[str, Callable[[], None]]] = []
        servers = [s for s in self._servers(tags) if old_enough(s.tags, cutoff, s.creation_date)]
        ip_ids, volume_ids = set(), set()
        for server in servers:
            host = self._host(server, self.spec)
            plan.append((f"server {server.name}", lambda h=host: self._destroy_one(h)))
            for ip in server.public_ips or []:
                ip_ids.add(ip.id)
                plan.append((f"ip {ip.address or ip.id} (of {server.name})", lambda i=ip.id: self._delete_ips([i])))
            for volume in (server.volumes or {}).values():
                volume_ids.add(volume.id)
                plan.append((f"volume {volume.id} (of {server.name})", lambda v=volume.id: self._delete_volume(v)))
        ips = self.api.call("list IPs", lambda: self.api.instance.list_ips_all(zone=self.zone, tags=tags))
        for ip in ips:
            if ip.id not in ip_ids and ip.server is None and old_enough(ip.tags, cutoff):
                plan.append((f"ip {ip.address or ip.prefix}", lambda i=ip.id: self._delete_ips([i])))
        volumes = self.api.call("list volumes", lambda: self.api.block.list_volumes_all(
            zone=self.zone, tags=tags, include_deleted=False))
        for volume in volumes:
            if volume.id not in volume_ids and all(t in (volume.tags or []) for t in tags) \
                    and str(volume.status) == "available" and old_enough(volume.tags, cutoff):
                plan.append((f"volume {volume.id}", lambda v=volume.id: self._delete_volume(v)))
        groups = self.api.call("list security groups", lambda: self.api.instance.list_security_groups_all(
            zone=self.zone, tags=tags))
        leaving = {s.id for s in servers}
        for group in groups:  # smoke fleets' groups, once no server (but those deleted above) uses them
            users = set(self._servers_using(group.id))
            if (group.creation_date is None or group.creation_date < cutoff) and users <= leaving:
                plan.append((f"security group {group.name}", lambda g=group: self.api.ignore_404(
                    f"delete security group {g.name}", lambda: self.api.instance.delete_security_group(
                        zone=self.zone, security_group_id=g.id))))
        return plan

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
