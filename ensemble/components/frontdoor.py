"""The front door's deploy: base, nginx, TLS and the front door's files (landing page, routing maps).

Its files come from `ensemble.frontdoor.render.frontdoor_files` (the front door's own module);
this deploy installs nginx, disables Debian's default site and reloads nginx when a file changed.

Example::

    frontdoor(frontdoor_context(spec, store, door, hosts))
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from ensemble.components.base import BASE_PACKAGES_FRONTDOOR, DeployContext, base, put_files
from ensemble.components.tls import tls_files
from ensemble.providers.base import Host
from ensemble.secrets import FLEET_KEY, Secrets
from ensemble.spec import FleetSpec


def frontdoor_context(spec: FleetSpec, store: Secrets, me: Host, hosts: list[Host],
                      admin_cidrs: list[str] | None = None) -> DeployContext:
    """Everything the front door needs, computed before any operation runs (pure).

    Example::

        frontdoor_context(spec, store, door, hosts).packages     # [..., "nginx"]
    """
    from ensemble.components.shard import ssh_cidrs
    from ensemble.frontdoor.render import frontdoor_files

    shards = sorted((h for h in hosts if h.role == "shard"), key=lambda h: h.shard or 0)
    return DeployContext(spec=spec, host=me, files=list(frontdoor_files(spec, store, shards)),
                         host_secrets={FLEET_KEY: store[FLEET_KEY]}, packages=BASE_PACKAGES_FRONTDOOR,
                         ssh_cidrs=ssh_cidrs(spec, admin_cidrs))


@deploy("Front door")
def frontdoor(ctx: DeployContext) -> None:
    """nginx with the front door's configuration; reloaded only when a file changed."""
    base(ctx)
    tls_files(ctx)
    disable_default = files.link(name="nginx default site disabled", path="/etc/nginx/sites-enabled/default",
                                 present=False)
    put_files(ctx.files, also_changed={"nginx": [disable_default]})
