"""The one interface every provider implements, and the Host it hands back.

Providers find their hosts again by tags (scaleway) or names (local): there is no
local state file to lose. Everything downstream (inventory, runner, front door)
only sees `Host` values.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional, Protocol

if TYPE_CHECKING:
    from ensemble.spec import FleetSpec

# called with one line of text per step, if given (Optional: evaluated at import by the front door's python 3.9)
Progress = Optional[Callable[[str], None]]  # noqa: UP045


@dataclass(frozen=True)
class Host:
    """One machine of a fleet, as a provider reports it.

    Example::

        Host(name="demo-1.meet.test", role="shard", shard=1,
             address="10.213.0.11", ssh_user="root", ssh_key="/tmp/k",
             known_hosts="/root/.local/state/ensemble/demo/known_hosts")
    """

    name: str  # public DNS name (shard domain, or front door domain)
    role: str  # "shard" | "frontdoor"
    shard: int | None  # shard number (1-based), None for the front door
    address: str  # where SSH reaches it (public IPv4, or bridge address for local)
    ssh_user: str = "root"
    ssh_port: int = 22
    ssh_key: str | None = None  # private key path
    known_hosts: str | None = None  # per-fleet known_hosts file, strict checking
    public_ipv4: str | None = None  # the address users reach (JVB NAT mapping)
    private_ipv4: str | None = None  # the address the host sees on its own interface
    ipv6: str | None = None
    provider_id: str | None = None  # server id at the provider
    labels: dict[str, str] = field(default_factory=dict)  # tags / provider metadata


@dataclass(frozen=True)
class DeployEnv:
    """What a provider adds to a deploy: the spec as deployed (a provider may point sources at
    stand-ins it serves), proxies, who may SSH, and whether hosts need each other in /etc/hosts.

    Example::

        env = provider.deploy_environment(spec)
        env.spec.jitsi.apt_repo, env.admin_cidrs         # ("https://download.jitsi.org", [])
    """

    spec: FleetSpec
    http_proxy: str = ""  # proxy hosts use for npm/HTTPS downloads ("" = direct)
    admin_cidrs: list[str] = field(default_factory=list)  # who may reach SSH ([] = the spec's CIDRs)
    apt_direct: list[str] = field(default_factory=list)  # repository hosts apt reaches without its proxy
    hosts_file: bool = False  # no DNS for the fleet's names: every host gets the others in /etc/hosts
    npm_only: bool = False  # only the npm registry is reachable (no GitHub tarballs)

    def peers_of(self, hosts: list[Host]) -> dict[str, str]:
        """{host name: address} to write into /etc/hosts ({} where DNS has the names)."""
        return {h.name: h.address for h in hosts} if self.hosts_file else {}


class Provider(Protocol):
    """Creates, finds and destroys the hosts of one fleet, and says what a deploy on them needs.

    Both providers (local, scaleway) implement every method: callers never probe for one.

    Example::

        provider = get_provider(spec)
        hosts = provider.ensure_hosts(spec)     # creates what is missing
        env = provider.deploy_environment(spec)
        provider.destroy(spec, [h for h in hosts if h.shard == 3])
        provider.janitor(7200, [], dry_run=True)
    """

    name: str
    account: str  # the account the fleet lives in ("local", "scaleway project <uuid>"): part of its identity

    def list_hosts(self, spec: FleetSpec) -> list[Host]:
        """The fleet's hosts that exist now (shards and front door)."""
        ...

    def ensure_hosts(self, spec: FleetSpec, progress: Progress = None,
                     labels: dict[str, str] | None = None) -> list[Host]:
        """Create whatever the spec asks for and is missing; return all hosts, ready for SSH. Hosts created
        carry `labels` (the fleet's identity, ensemble.identity.stamp_labels) where the provider finds them
        again, and hand them back in Host.labels."""
        ...

    def destroy(self, spec: FleetSpec, hosts: list[Host], progress: Progress = None) -> None:
        """Destroy these hosts and everything they own (addresses, volumes)."""
        ...

    def destroy_all(self, spec: FleetSpec, progress: Progress = None) -> None:
        """Destroy every host of the fleet and the fleet-wide resources (security group, bridge...)."""
        ...

    def janitor(self, older_than_seconds: float, tags: list[str], *, dry_run: bool = False,
                progress: Progress = None) -> list[str]:
        """Delete throwaway resources leaked by dead or interrupted runs (older than older_than_seconds where
        the provider cannot tell a dead run's from a live one's), carrying every tag in `tags`; one line per
        resource deleted, or that would be with `dry_run`."""
        ...

    def deploy_environment(self, spec: FleetSpec) -> DeployEnv:
        """The provider's deploy settings for this spec (see DeployEnv)."""
        ...
