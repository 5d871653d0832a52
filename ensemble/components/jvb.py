"""jitsi-videobridge2: ensemble's jvb.conf (+ sip-communicator.properties); restarted only when changed.

The UDP buffer sysctl lives in the base component (tolerant of containers).

Example::

    jvb(ctx)      # inside the shard deploy, after prosody(ctx)
"""

from __future__ import annotations

from pyinfra.api import deploy

from ensemble.components.base import DeployContext, put_files


@deploy("Videobridge")
def jvb(ctx: DeployContext) -> None:
    """Put the bridge's configuration (component "jvb") and keep jitsi-videobridge2 running."""
    put_files(ctx.files_of("jvb"))
