"""The shard deploy (base -> prosody -> jicofo -> jvb -> TLS -> web+nginx -> ACME -> Etherpad),
and `fleet_host`, the one deploy the runner gives every host of a fleet (it picks the role's).

Everything a host needs is computed before its first operation (`shard_context`): the files
from `ensemble.render`, the packages for one batched apt install, the debconf preseed, and
the secrets the host keeps. One State runs shards and front door side by side: operation
identity in pyinfra 3 is the call site, so the roles' different operation lists do not clash.

Example::

    run_deploy(targets_for(hosts), fleet_host, {"spec": spec, "store": store, "hosts": hosts})
"""

from __future__ import annotations

import threading

from pyinfra import host as current_host
from pyinfra.api import deploy

from ensemble.components.base import DeployContext, base
from ensemble.components.jicofo import jicofo
from ensemble.components.jvb import jvb
from ensemble.components.prosody import prosody, prosody_source
from ensemble.components.tls import acme, cert_paths, tls_files
from ensemble.components.web import web
from ensemble.inventory import host_from_data
from ensemble.providers.base import Host
from ensemble.secrets import FLEET_KEY, Secrets
from ensemble.spec import FleetSpec

BASE_PACKAGES = ["nftables", "unattended-upgrades", "ca-certificates", "openssl", "curl"]


def shard_packages(spec: FleetSpec) -> list[str]:
    """Every package a shard needs, for one batched install (nginx before jitsi-meet-web-config).

    Example::

        shard_packages(spec)[-1]     # "jitsi-meet" (or "jitsi-meet=<version>" when pinned)
    """
    packages = [*BASE_PACKAGES, "nginx", "prosody"]
    if spec.tls.mode == "letsencrypt":
        packages.append("certbot")
    version = spec.jitsi_version
    packages.append(f"jitsi-meet={version}" if version else "jitsi-meet")
    return packages


def debconf_preseed(domain: str) -> str:
    """Answers for Jitsi's packages: our hostname, our certificate paths, no JaaS.

    Example::

        "jvb-hostname string a.test" in debconf_preseed("a.test")    # True
    """
    chain, key = cert_paths(domain)
    return "".join(f"{line}\n" for line in (
        f"jitsi-videobridge2 jitsi-videobridge/jvb-hostname string {domain}",
        f"jitsi-meet-prosody jitsi-videobridge/jvb-hostname string {domain}",
        "jitsi-meet-web-config jitsi-meet/cert-choice select I want to use my own certificate",
        f"jitsi-meet-web-config jitsi-meet/cert-path-crt string {chain}",
        f"jitsi-meet-web-config jitsi-meet/cert-path-key string {key}",
        "jitsi-meet-web-config jitsi-meet/jaas-choice boolean false",
    ))


def ssh_cidrs(spec: FleetSpec, admin_cidrs: list[str] | None) -> list[str]:
    """Who may reach port 22: the provider's admin network (local: the bridge) or the spec's CIDRs."""
    if admin_cidrs:
        return list(admin_cidrs)
    return list(spec.provider.scaleway.ssh_allowed_cidrs)


def shard_context(spec: FleetSpec, store: Secrets, me: Host, hosts: list[Host], *, keyring: bytes | None,
                  http_proxy: str = "", admin_cidrs: list[str] | None = None,
                  apt_direct: list[str] | None = None, peers: dict[str, str] | None = None) -> DeployContext:
    """Everything shard `me` needs, computed before any operation runs (pure).

    Example::

        shard_context(spec, store, hosts[0], hosts, keyring=b"...").packages
    """
    from ensemble.render import shard_files

    frontdoor = next((h for h in hosts if h.role == "frontdoor"), None)
    return DeployContext(
        spec=spec, host=me, frontdoor=frontdoor,
        files=shard_files(spec, me.shard, store, me, frontdoor),
        host_secrets={me.name: store[me.name], FLEET_KEY: store[FLEET_KEY]},
        packages=shard_packages(spec), debconf=debconf_preseed(me.name), jitsi_keyring=keyring,
        ssh_cidrs=ssh_cidrs(spec, admin_cidrs), http_proxy=http_proxy, apt_direct=list(apt_direct or []),
        peers=dict(peers or {}),
    )


@deploy("Shard")
def shard(ctx: DeployContext) -> None:
    """One complete Jitsi Meet shard on the current host."""
    prosody_source(ctx)
    base(ctx)
    prosody(ctx)
    jicofo(ctx)
    jvb(ctx)
    tls_files(ctx)
    web(ctx)
    acme(ctx)
    if ctx.spec.jitsi.etherpad:
        from ensemble.components.etherpad import etherpad

        etherpad(ctx.spec, rendered_files=ctx.files_of("etherpad"), secrets=ctx.host_secrets[ctx.host.name],
                 http_proxy=ctx.http_proxy)


def current(hosts: list[Host]) -> Host:
    """The ensemble Host the current pyinfra host stands for (from the list, else from its data)."""
    for candidate in hosts:
        if candidate.name == current_host.name:
            return candidate
    return host_from_data(current_host.name, current_host.data.dict())


@deploy("Fleet host")
def fleet_host(spec: FleetSpec, store: Secrets, hosts: list[Host], keyring: bytes | None = None,
               http_proxy: str = "", admin_cidrs: list[str] | None = None, apt_direct: list[str] | None = None,
               peers: dict[str, str] | None = None) -> None:
    """The deploy of whatever role the current host has (shard or front door)."""
    me = current(hosts)
    if me.role == "frontdoor":
        from ensemble.components.frontdoor import frontdoor, frontdoor_context

        frontdoor(frontdoor_context(spec, store, me, hosts, admin_cidrs=admin_cidrs, peers=peers))
    else:
        shard(shard_context(spec, store, me, hosts, keyring=keyring, http_proxy=http_proxy,
                            admin_cidrs=admin_cidrs, apt_direct=apt_direct, peers=peers))


_CLI_KWARGS: dict[str, dict] = {}
_CLI_LOCK = threading.Lock()  # gevent's cooperative lock once pyinfra's CLI has patched threading


def cli_kwargs(spec_path: str) -> dict:
    """fleet_host's arguments when the plain `pyinfra` CLI runs deploys/*.py against an inventory.

    Computed once per process (the CLI executes a deploy file once per host): the spec, the
    provider's deploy environment, the checked Jitsi keyring, and the secrets every host of the
    inventory keeps (read over SSH through pyinfra facts), completed with what is missing.

    Example::

        fleet_host(**cli_kwargs(host.data.get("ensemble_spec")))      # in deploys/shard.py
    """
    # The CLI prepares hosts in parallel greenlets: one computes, the others wait for its result
    # (the local provider's blocking file locks must never be taken by two greenlets at once).
    with _CLI_LOCK:
        if spec_path not in _CLI_KWARGS:
            _CLI_KWARGS[spec_path] = _compute_cli_kwargs(spec_path)
    return _CLI_KWARGS[spec_path]


def _compute_cli_kwargs(spec_path: str) -> dict:
    from pyinfra import inventory
    from pyinfra.facts.server import Command

    from ensemble.fleet import SECRETS_FILE, deploy_environment, jitsi_keyring, merge_secrets
    from ensemble.providers import get_provider
    from ensemble.spec import load_spec

    spec = load_spec(spec_path)
    env = deploy_environment(spec, get_provider(spec))
    hosts = [host_from_data(h.name, h.data.dict()) for h in inventory]
    remote = {h.name: h.get_fact(Command, command=f"cat {SECRETS_FILE} 2>/dev/null || true") for h in inventory}
    store, _ = merge_secrets(env.spec, remote, hosts)
    return {"spec": env.spec, "store": store, "hosts": hosts, "keyring": jitsi_keyring(env.spec),
            "http_proxy": env.http_proxy, "admin_cidrs": env.admin_cidrs, "apt_direct": env.apt_direct,
            "peers": env.peers_of(hosts)}
