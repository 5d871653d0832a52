"""jicofo, the conference focus: ensemble's jicofo.conf; restarted only when it changed.

Example::

    jicofo(ctx)      # inside the shard deploy, after prosody(ctx)
"""

from __future__ import annotations

from pyinfra.api import deploy

from ensemble.components.base import DeployContext, put_files


@deploy("Jicofo")
def jicofo(ctx: DeployContext) -> None:
    """Put jicofo's configuration (component "jicofo") and keep the service running."""
    put_files(ctx.files_of("jicofo"))
