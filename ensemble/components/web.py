"""The Jitsi Meet web app behind nginx: config.js and the shard's nginx site (reloaded on change).

The package's own site and Debian's default site are disabled: ensemble's site is the only one
listening, so two sites never clash over upstream names or default_server.

Example::

    web(ctx)      # after tls_files(ctx): the site needs the certificate paths to exist
"""

from __future__ import annotations

from pyinfra.api import deploy
from pyinfra.operations import files

from ensemble.components.base import DeployContext, put_files
from ensemble.paths import ACME_WEBROOT


def site_link(domain: str) -> tuple[str, str]:
    """(enabled path, available path) of a domain's nginx site.

    Example::

        site_link("a.test")   # ("/etc/nginx/sites-enabled/a.test.conf", "/etc/nginx/sites-available/a.test.conf")
    """
    return f"/etc/nginx/sites-enabled/{domain}.conf", f"/etc/nginx/sites-available/{domain}.conf"


def enable_site(domain: str) -> list:
    """Link ensemble's site, remove Debian's default one; returns the ops (they trigger a reload)."""
    enabled, available = site_link(domain)
    return [
        files.link(name="nginx default site disabled", path="/etc/nginx/sites-enabled/default", present=False),
        files.link(name="nginx site enabled", path=enabled, target=available),
    ]


@deploy("Web")
def web(ctx: DeployContext) -> None:
    """config.js (component "web") and the nginx site (component "nginx"), nginx reloaded on change."""
    put_files(ctx.files_of("web"))
    files.directory(name="ACME webroot", path=ACME_WEBROOT, mode="755")
    put_files(ctx.files_of("nginx"), also_changed={"nginx": enable_site(ctx.host.name)})
