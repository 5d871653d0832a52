"""One place that builds each host's deploy context: `ensemble deploy` (through the runner) and the
plain-pyinfra entry points in deploys/ both call `fleet_contexts`, so both deploy the same thing.

(the plain-pyinfra path through `ensemble.pyinfra_entry.cli_contexts`). A context holds plain values
computed before any operation runs: every file of the host (from `ensemble.render`, rendered with the
WHOLE fleet's hosts even when only some hosts are deployed), the packages for one batched install,
the secrets the host keeps, the provider's settings.

Example::

    env = provider.deploy_environment(spec)
    contexts = fleet_contexts(env, store, hosts, keyring=jitsi_keyring(env.spec))
    contexts["demo-1.meet.example.org"].packages[-1]     # "jitsi-meet"
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ensemble.errors import EnsembleError
from ensemble.providers.base import DeployEnv, Host
from ensemble.render import host_files, kept_secrets, resolve_hosts
from ensemble.secrets import Secrets
from ensemble.spec import FleetSpec
from ensemble.templating import RenderedFile

BASE_PACKAGES = ["nftables", "unattended-upgrades", "ca-certificates", "openssl", "curl"]
FRONTDOOR_PACKAGES = [*BASE_PACKAGES, "nginx", "python3", "python3-click", "python3-jinja2"]


@dataclass(frozen=True)
class DeployContext:
    """Everything one host's deploy needs, computed before any operation (plain values, picklable).

    Example::

        DeployContext(spec, host, files=render.host_files(...), packages=["nginx"])
    """

    spec: FleetSpec
    host: Host
    files: list[RenderedFile] = field(default_factory=list)
    host_secrets: dict = field(default_factory=dict)  # what /etc/ensemble/secrets.json holds
    packages: list[str] = field(default_factory=list)  # one batched apt install
    http_proxy: str = ""  # proxy the host uses for npm (local provider), "" = direct
    npm_only: bool = False  # the host reaches the npm registry only (no GitHub release tarballs)
    peers: dict[str, str] = field(default_factory=dict)  # fleet host name -> address, where no DNS has them
    upgrade_packages: bool = False  # `ensemble upgrade`: the newest packages (the shard is drained)

    def files_of(self, *components: str) -> list[RenderedFile]:
        return [f for f in self.files if f.component in components]


def shard_packages(spec: FleetSpec) -> list[str]:
    """Every package a shard needs, for one batched install (nginx before jitsi-meet-web-config).

    Example::

        shard_packages(spec)[-1]     # "jitsi-meet" (or "jitsi-meet=<version>" when pinned)
    """
    # prosody.im's "prosody" follows the newest line: legacy profiles name theirs (prosody-0.11)
    packages = [*BASE_PACKAGES, "nginx", spec.profile.prosody_package]
    if spec.turn.enabled:
        packages += ["libnginx-mod-stream", "coturn"]  # the 443 multiplexer and the relay
    if spec.tls.mode == "letsencrypt":
        packages.append("certbot")
    version = spec.jitsi_version
    packages.append(f"jitsi-meet={version}" if version else "jitsi-meet")
    return packages


def frontdoor_packages(spec: FleetSpec) -> list[str]:
    """The front door's packages, one batched install (certbot in letsencrypt mode)."""
    return [*FRONTDOOR_PACKAGES, "certbot"] if spec.tls.mode == "letsencrypt" else list(FRONTDOOR_PACKAGES)


def host_context(env: DeployEnv, store: Secrets, me: Host, hosts: list[Host], *,
                 keyring: bytes | None = None, spec_shards: int | None = None,
                 upgrade_packages: bool = False) -> DeployContext:
    """The context of one host, rendered with the whole fleet `hosts` (pure).

    Example::

        host_context(env, store, hosts[0], hosts, keyring=b"...").files_of("jvb")
    """
    spec = env.spec
    shards, frontdoor = resolve_hosts(spec, hosts)
    if me.role == "shard" and me.name not in {h.name for h in shards}:
        raise EnsembleError(f"{me.name}: shard {me.shard} is outside the fleet's {spec.fleet.shards} shard(s)")
    files = host_files(spec, store, me, shards, frontdoor, env=env, keyring=keyring if me.role == "shard" else None,
                       spec_shards=spec_shards)
    packages = shard_packages(spec) if me.role == "shard" else frontdoor_packages(spec)
    # a shard needs the front door's name (and its own), the front door every shard's: adding a shard
    # changes nothing on the running ones
    peers = [h for h in hosts if h.role == "frontdoor" or h.name == me.name] if me.role == "shard" else hosts
    return DeployContext(spec=spec, host=me, files=files, host_secrets=kept_secrets(store, me), packages=packages,
                         http_proxy=env.http_proxy, npm_only=env.npm_only, peers=env.peers_of(peers),
                         upgrade_packages=upgrade_packages)


def fleet_contexts(env: DeployEnv, store: Secrets, hosts: list[Host], *, keyring: bytes | None = None,
                   only: list[str] | None = None, spec_shards: int | None = None,
                   upgrade_packages: bool = False) -> dict[str, DeployContext]:
    """{host name: context} for the hosts named in `only` (default: all), each rendered with all `hosts`.

    Example::

        fleet_contexts(env, store, hosts, keyring=key, only=["demo-2.meet.example.org"])
    """
    wanted = set(only) if only is not None else {h.name for h in hosts}
    return {h.name: host_context(env, store, h, hosts, keyring=keyring, spec_shards=spec_shards,
                                 upgrade_packages=upgrade_packages)
            for h in hosts if h.name in wanted}
