"""The shared rendering toolkit: `RenderedFile` and the jinja2 templates of templates/<component>/.

Used by the fleet composer (`ensemble.render`) and by the front door's own renderer; it imports
nothing of ensemble's, so both can use it without importing each other.

Example::

    text = render_template("jvb/jvb.conf.j2", context)
    RenderedFile("/etc/jitsi/videobridge/jvb.conf", text, 0o640, group="jitsi", service="jitsi-videobridge2")
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from importlib.resources import files as package_files
from pathlib import Path

import jinja2


@dataclass(frozen=True)
class RenderedFile:
    """One file for one host: where it goes, its content, mode, owner, and what it belongs to.

    `service` is the systemd unit to restart (or, for nginx, reload) when the file changes.
    `content` is text (UTF-8 on the host) or bytes (a binary file such as an apt keyring).

    Example::

        RenderedFile(path="/etc/jitsi/jicofo/jicofo.conf", content="jicofo {...}\\n", mode=0o640,
                     group="jitsi", component="jicofo", service="jicofo")
    """

    path: str
    content: str | bytes
    mode: int = 0o644
    owner: str = "root"
    group: str = "root"
    component: str = "base"
    service: str | None = None

    @property
    def data(self) -> bytes:
        """The bytes the host gets."""
        return self.content if isinstance(self.content, bytes) else self.content.encode("utf-8")


@functools.cache
def template_env() -> jinja2.Environment:
    """The jinja2 environment over the packaged templates (strict: a missing value is an error).

    Example::

        template_env().get_template("jvb/jvb.conf.j2")
    """
    root = Path(str(package_files("ensemble._templates")))
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(root)),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )


def render_template(name: str, context: dict) -> str:
    """Render one template of templates/ with a context of plain values.

    Example::

        render_template("web/config.js.j2", render.shard_context(spec, 1, secrets))
    """
    return template_env().get_template(name).render(**context)
