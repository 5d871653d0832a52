"""The shard deploy (base -> prosody -> jicofo -> jvb -> TLS -> web+nginx -> ACME -> TURN -> Etherpad), and
`fleet_host`, the one deploy every host of a fleet runs (it picks its role's deploy and its context).

Contexts come from `ensemble.contexts` (one place, for `ensemble deploy` and for deploys/*.py);
one State runs shards and front door side by side: operation identity in pyinfra 3 is the call
site, so the roles' different operation lists do not clash.

Example::

    run_deploy(targets_for(hosts), fleet_host, {"contexts": fleet_contexts(env, store, hosts, keyring=key)})
"""

from __future__ import annotations

from collections.abc import Callable

from pyinfra import host as current_host
from pyinfra.api import deploy

from ensemble.components.base import base
from ensemble.components.coturn import coturn
from ensemble.components.jicofo import jicofo
from ensemble.components.jvb import jvb
from ensemble.components.prosody import prosody, prosody_source
from ensemble.components.tls import acme, tls_files
from ensemble.components.web import web
from ensemble.contexts import DeployContext


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
    coturn(ctx)
    if ctx.spec.jitsi.etherpad:
        from ensemble.components.etherpad import etherpad

        etherpad(ctx.spec, rendered_files=ctx.files_of("etherpad"), secrets=ctx.host_secrets[ctx.host.name],
                 http_proxy=ctx.http_proxy, npm_only=ctx.npm_only)


@deploy("Fleet host")
def fleet_host(contexts: dict[str, DeployContext]) -> None:
    """The deploy of whatever role the current host has, with its own context."""
    ctx = contexts[current_host.name]
    if ctx.host.role == "frontdoor":
        from ensemble.components.frontdoor import frontdoor

        frontdoor(ctx)
    else:
        shard(ctx)


def kept_reader(inventory) -> Callable[[str], str | None]:
    """For deploys/*.py: what a host keeps (secrets, the front door's size record), through a pyinfra fact."""
    from pyinfra.facts.server import Command

    from ensemble.kept import KEPT_COMMAND

    def read(name: str) -> str | None:
        return inventory.get_host(name).get_fact(Command, command=KEPT_COMMAND)

    return read
