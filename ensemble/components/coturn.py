"""The shard's TURN relay: Debian's coturn with ensemble's /etc/turnserver.conf and its own copy of
the shard's certificate; restarted only when one of them changed.

nginx's 443 multiplexer (templates/coturn/nginx-stream.conf.j2) is an nginx file, put with the
web site; prosody announces the relay (external_services). Runs after the TLS and ACME steps, so the
copied certificate is the final one (the certbot renewal hook copies it again and restarts coturn).

Example::

    coturn(ctx)      # inside the shard deploy, after acme(ctx)
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import server

from ensemble.components.base import DeployContext, put_files
from ensemble.hostfiles import cert_paths
from ensemble.turn import coturn_cert_copy_command, coturn_cert_paths


def cert_state_command(domain: str) -> str:
    """One remote command: "same" when coturn's copies match the shard's certificate and key.

    Example::

        cert_state_command("a.test").endswith("|| echo differ")    # True
    """
    (chain, key), (cert, pkey) = cert_paths(domain), coturn_cert_paths(domain)
    return f"cmp -s {chain} {cert} && cmp -s {key} {pkey} && echo same || echo differ"


@deploy("TURN relay")
def coturn(ctx: DeployContext) -> None:
    """Certificate copy (when it differs) and turnserver.conf (component "coturn"); coturn kept running."""
    if not ctx.spec.turn.enabled:
        return
    domain = ctx.host.name
    copied = []
    if host.get_fact(Command, command=cert_state_command(domain)) != "same":
        copied.append(server.shell(name="coturn certificate copy", commands=[coturn_cert_copy_command(domain)]))
    put_files(ctx.files_of("coturn"), also_changed={"coturn": copied})
