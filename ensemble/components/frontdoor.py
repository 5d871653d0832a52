"""The front door's deploy: base, nginx, TLS, the front door's files and its refresh timer.

Its files come from `ensemble.frontdoor.render.frontdoor_files` (the front door's own module):
the nginx site, landing page, seed routing maps and the refresh service + timer. The timer runs
`ensemble frontdoor refresh` on the host, so the deploy also installs ensemble itself there: the
package's own files (a deterministic archive, unpacked only when it changed) run by Debian's
python3 with python3-click and python3-jinja2, plus the fleet spec it reads.

Example::

    frontdoor(fleet_contexts(env, store, hosts)[door.name])
"""

from __future__ import annotations

import gzip
import io
import tarfile
from importlib.resources import files as package_files
from pathlib import Path

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from ensemble.components.base import DeployContext, base, put_files
from ensemble.components.tls import acme, tls_files
from ensemble.paths import ACME_WEBROOT, ENSEMBLE_HOME, FRONTDOOR_SPEC_TOML, ROUTING_PATH
from ensemble.paths import ROUTING_SEED as SEED_PATH


def package_archive() -> bytes:
    """ensemble's own package (code + templates) as a byte-stable tar.gz (same code, same bytes).

    Example::

        tarfile.open(fileobj=io.BytesIO(package_archive())).getnames()[0]   # "ensemble/__init__.py" or so
    """
    roots = {"ensemble": Path(str(package_files("ensemble"))),
             "ensemble/_templates": Path(str(package_files("ensemble._templates")))}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for prefix, root in roots.items():
            for path in sorted(root.rglob("*")):
                rel = path.relative_to(root)
                if not path.is_file() or "__pycache__" in rel.parts or path.suffix == ".pyc":
                    continue
                if prefix == "ensemble" and rel.parts[0] == "_templates":
                    continue
                info = tarfile.TarInfo(f"{prefix}/{rel.as_posix()}")
                data = path.read_bytes()
                info.size, info.mode, info.mtime = len(data), 0o644, 0
                tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


@deploy("ensemble on the front door")
def ensemble_itself(ctx: DeployContext) -> None:
    """The code the refresh timer runs (unpacked only when the archive changed), its launcher and the
    spec it reads (rendered files: ensemble.hostfiles)."""
    archive = files.put(name="ensemble package archive", src=io.BytesIO(package_archive()),
                        dest=f"{ENSEMBLE_HOME}/ensemble.tar.gz", mode="644", create_remote_dir=True)
    server.shell(name="ensemble package unpacked", commands=[
        f"rm -rf {ENSEMBLE_HOME}/lib && mkdir -p {ENSEMBLE_HOME}/lib && tar -xzf {ENSEMBLE_HOME}/ensemble.tar.gz"
        f" -C {ENSEMBLE_HOME}/lib"], _if=archive.did_change)
    put_files(ctx.files_of("frontdoor-program"))
    # the spec is JSON now (any python >= 3.9 reads it); the TOML copy older deploys wrote is stale
    files.file(name="old TOML spec removed", path=FRONTDOOR_SPEC_TOML, present=False)


@deploy("Front door")
def frontdoor(ctx: DeployContext) -> None:
    """nginx with the front door's configuration (reloaded only on change) and the refresh timer."""
    base(ctx)
    tls_files(ctx)
    ensemble_itself(ctx)
    disable_default = files.link(name="nginx default site disabled", path="/etc/nginx/sites-enabled/default",
                                 present=False)
    seed = put_files([f for f in ctx.files_of("frontdoor") if f.path == SEED_PATH])
    seeded = []
    if host.get_fact(File, path=ROUTING_PATH) is None:
        # nginx includes the live maps; until the first refresh they are the seed (no pins, spec weights)
        seeded.append(server.shell(name="routing maps seeded", commands=[
            f"install -D -m 0644 {SEED_PATH} {ROUTING_PATH}"]))
    put_files([f for f in ctx.files_of("frontdoor") if f.path != SEED_PATH],
              also_changed={"nginx": [disable_default, *seeded, *seed.values()]})
    files.directory(name="ACME webroot", path=ACME_WEBROOT, mode="755")
    acme(ctx)
