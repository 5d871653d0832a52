"""Etherpad on a shard: a pinned source, built once, its own user, a real database, a unit.

What the deploy does on the host (the shard composition calls `etherpad(...)`):

1. Debian's nodejs + npm (+ node-sqlite3 for sqlite, or postgresql with a role and a
   database named etherpad, reached over the local socket), user `etherpad`.
2. /opt/etherpad from the pinned source (see ensemble.etherpad_source), unless the
   marker /opt/etherpad/.ensemble-installed already names this source: either the built
   tree cached on the deploying machine (<cache_dir>/etherpad/<key>.tar.zst, uploaded
   and unpacked in seconds) or a real build (`npm pack`, `npm install --omit=dev
   --legacy-peer-deps` inside src, node_modules/ep_etherpad-lite -> ../src), whose
   result is then saved into that cache. Hosts of one run that need the same tree take
   turns: the first builds, the others unpack its cached copy. The new tree is built
   beside the old one and swapped in, so a failed build breaks nothing.
3. The rendered files of component "etherpad" (ensemble.render.shard_files: settings.json,
   APIKEY.txt/SESSIONKEY.txt from the host's secrets, the systemd unit).
4. Restart only when the tree, a file (settings, keys, unit) or the database setup
   changed; then wait until it answers on 127.0.0.1:<etherpad.port>.

Example::

    etherpad(spec=spec, rendered_files=shard_files(spec, 1, store),
             secrets=store["demo-1.meet.test"], http_proxy="http://10.214.4.1:8888/",
             npm_cafile=deploying_machine_npm_cafile())
"""

from __future__ import annotations

import io
import logging
import os
import shlex
import subprocess
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, postgres, python, server, systemd
from pyinfra.operations.util import any_changed

from ensemble import paths
from ensemble.errors import EnsembleError
from ensemble.etherpad_source import (
    DownloadError,
    EtherpadSource,
    built_tree_path,
    default_cache_dir,
    fetch_release,
    node_major,
    parse_source,
    prune_stale_trees,
)

logger = logging.getLogger(__name__)

HOME = paths.ETHERPAD_HOME
BUILD = "/opt/etherpad.build"
DATA = paths.ETHERPAD_STATE_DIR
MARKER = f"{HOME}/.ensemble-installed"
REMOTE_TREE = "/var/tmp/ensemble-etherpad-tree.tar.zst"
REMOTE_RELEASE = "/var/tmp/ensemble-etherpad-release.tar.gz"
REMOTE_NPMRC = "/root/.ensemble-etherpad-npmrc"
REMOTE_CAFILE = "/usr/local/share/ensemble/npm-ca-bundle.pem"
SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
APT_CACHE_SECONDS = 3600  # as the base deploy: a shard deploy updates apt lists once


def deploying_machine_npm_cafile() -> str | None:
    """The CA bundle this machine's npm trusts (`npm config get cafile`), else the system's.

    A host that reaches the registry through the local provider's CONNECT proxy sees the
    same TLS chain as this machine, so it must trust the same CAs. None when neither exists.

    Example::

        deploying_machine_npm_cafile()   # "/etc/ssl/certs/ca-certificates.crt"
    """
    try:
        out = subprocess.run(["npm", "config", "get", "cafile"], capture_output=True, text=True, timeout=30)
        path = out.stdout.strip() if out.returncode == 0 else ""
    except (OSError, subprocess.TimeoutExpired):
        path = ""
    for candidate in (path, SYSTEM_CA_BUNDLE):
        if candidate not in ("", "null", "undefined") and Path(candidate).is_file():
            return candidate
    return None


def npmrc_text(registry: str, http_proxy: str = "", cafile: str | None = None) -> str:
    """The npm user config the build runs with.

    Example::

        npmrc_text("https://registry.npmjs.org/", "http://10.0.0.1:8888/")
    """
    lines = [f"registry={registry}", "audit=false", "fund=false", "update-notifier=false", "nodedir=/usr"]
    if http_proxy:
        lines += [f"proxy={http_proxy}", f"https-proxy={http_proxy}"]
    if cafile:
        lines.append(f"cafile={REMOTE_CAFILE}")
    return "\n".join(lines) + "\n"


def build_script(source: EtherpadSource, marker: str) -> str:
    """Shell script that builds a fresh tree in BUILD and swaps it in as HOME.

    1.8.x (npm package, or a 1.8 release tarball): Etherpad finds its base dir as the
    parent of `src` and serves client libraries from src/node_modules, so dependencies
    go there (else a browser shows "The module at security does not exist").
    2.x release tarballs are pnpm workspaces: pnpm installs them at the top.

    Example::

        build_script(parse_source("npm:ep_etherpad-lite@1.8.14"), "key label")
    """
    fetch = _npm_fetch(source) if source.kind == "npm" else f"tar -xzf {REMOTE_RELEASE} --strip-components=1"
    return "\n".join([
        "set -eu",
        "umask 022",
        f"export NPM_CONFIG_USERCONFIG={REMOTE_NPMRC}",
        f"rm -rf {BUILD} && mkdir -p {BUILD} && cd {BUILD}",
        fetch,
        _node_version_check(),
        "if [ -f pnpm-workspace.yaml ]; then",
        "  npm install --global --prefix .ensemble-tools --loglevel=error pnpm@9 >/dev/null",
        "  .ensemble-tools/bin/pnpm install --frozen-lockfile >npm-install.log 2>&1"
        " || { tail -30 npm-install.log; exit 1; }",
        "else",
        "  mkdir -p node_modules && ln -sfn ../src node_modules/ep_etherpad-lite",
        # --ignore-scripts: the build runs as root, and no 1.8 dependency needs an install script
        "  (cd src && npm install --omit=dev --legacy-peer-deps --ignore-scripts --loglevel=error)"
        " >npm-install.log 2>&1"
        " || { tail -30 npm-install.log; exit 1; }",
        "fi",
        _ts_entry_shim(),
        "test -f src/node/server.js",
        f"printf '%s\\n' {shlex.quote(marker)} >{BUILD}/.ensemble-installed",
        _swap_in(),
    ])


def _node_version_check() -> str:
    # e.g. 2.x on bullseye (Node 12): say so plainly instead of failing deep inside pnpm.
    script = ("const need=(require('./src/package.json').engines||{}).node||'';"
              "const m=need.match(/>=\\s*v?(\\d+)(?:\\.(\\d+))?/);"
              "const [a,b]=process.versions.node.split('.').map(Number);"
              "if(m&&(a<+m[1]||(a==+m[1]&&b<+(m[2]||0)))){console.error('etherpad: this release needs Node '+need"
              "+', the host has '+process.version);process.exit(1)}")
    return f"node -e {shlex.quote(script)}"


def _ts_entry_shim() -> str:
    # 2.x ships TypeScript (upstream runs `node --require tsx/cjs node/server.ts`); the unit
    # starts src/node/server.js for every version, so 2.x gets this small entry point.
    shim = ("// written by ensemble: start Etherpad 2.x's TypeScript server through tsx\n"
            "require('tsx/cjs');\nconst server = require('./server.ts');\n"
            "if (require.main === module) server.start();\n")
    return (f"if [ ! -f src/node/server.js ] && [ -f src/node/server.ts ]; then "
            f"printf %s {shlex.quote(shim)} >src/node/server.js; fi")


def _npm_fetch(source: EtherpadSource) -> str:
    # npm pack checks the archive against the registry's integrity hash; ours comes on top.
    check = f"echo {source.sha256}' '\"$archive\" | sha256sum -c --quiet -" if source.sha256 else "true"
    return "\n".join([
        f"archive=$(npm pack --silent {shlex.quote(source.package + '@' + source.version)} | tail -1)",
        f"{check} || {{ echo 'etherpad.sha256: checksum mismatch for {source.label}' >&2; exit 1; }}",
        'mkdir src && tar -xzf "$archive" -C src --strip-components=1 && rm -f "$archive"',
    ])


def _swap_in() -> str:
    return f"rm -rf {HOME}.old; if [ -d {HOME} ]; then mv {HOME} {HOME}.old; fi; mv {BUILD} {HOME}; rm -rf {HOME}.old"


def restore_script(marker: str) -> str:
    """Shell script that unpacks the uploaded cached tree and swaps it in as HOME."""
    return "\n".join([
        "set -eu",
        f"rm -rf {BUILD} && mkdir -p {BUILD}",
        f"zstd -dcq {REMOTE_TREE} | tar -C {BUILD} -xf -",
        f'test "$(cat {BUILD}/.ensemble-installed)" = {shlex.quote(marker)}',
        f"rm -f {REMOTE_TREE}",
        _swap_in(),
    ])


def _remote(command: str, what: str) -> str:
    """Run a command on the current host; raise EnsembleError with its last lines if it fails."""
    ok, output = host.run_shell_command(command)
    if not ok:
        tail = "; ".join((output.stderr_lines or output.stdout_lines)[-5:])
        raise EnsembleError(f"etherpad: {what} failed on {host.name}: {tail}")
    return output.stdout


def _upload(local: str, remote: str) -> None:
    if not host.put_file(local, remote):
        raise EnsembleError(f"etherpad: uploading {local} to {host.name}:{remote} failed")


def save_tree_to_cache(local_path: Path) -> None:
    """Pack HOME on the current host and download it into the local cache.

    Written to a private temporary name, then renamed: a reader never sees half a file.
    """
    _remote(f"tar -C {HOME} -cf - . | zstd -T0 -3 -q -f -o {REMOTE_TREE}", "packing the built tree")
    local_path.parent.mkdir(parents=True, exist_ok=True)
    partial = local_path.with_name(f".{local_path.name}.{os.getpid()}.{host.name}.part")
    try:
        if not host.get_file(REMOTE_TREE, str(partial)):
            raise EnsembleError(f"etherpad: downloading the built tree from {host.name} failed")
        os.replace(partial, local_path)
        prune_stale_trees(local_path.parent.parent, local_path.name.removesuffix(".tar.zst"))
    finally:
        partial.unlink(missing_ok=True)
        host.run_shell_command(f"rm -f {REMOTE_TREE}")


_build_locks: dict[str, threading.Lock] = {}


def install_tree(source: EtherpadSource, marker: str, cached: Path, npmrc: str, cafile: str | None,
                 release: str | None) -> None:
    """python.call target: put the pinned tree in HOME, from the cache when it is there.

    Decided at execution time under a per-cache lock (gevent-aware once pyinfra patched
    threading): when several hosts of one run need the same tree, the first builds it and
    saves it in the cache, the others wait and unpack that copy (one npm install per run).
    A cached copy that does not unpack is dropped and the tree is built instead.
    """
    lock = _build_locks.setdefault(str(cached), threading.Lock())
    with lock:
        if cached.exists():
            try:
                _upload(str(cached), REMOTE_TREE)
                _remote(restore_script(marker), "unpacking the cached tree")
                return
            except EnsembleError as exc:
                logger.warning("etherpad: cached tree %s unusable (%s); building instead", cached, exc)
                cached.unlink(missing_ok=True)
        if source.kind == "tarball" and not release:
            release = str(fetch_release(source, cached.parent.parent))
        _build(source, marker, npmrc, cafile, release)
        try:
            save_tree_to_cache(cached)
        except (OSError, EnsembleError) as exc:  # the host is fine; only the next runs are slower
            logger.warning("etherpad: could not cache the built tree in %s: %s", cached, exc)


def _build(source: EtherpadSource, marker: str, npmrc: str, cafile: str | None, release: str | None) -> None:
    if release:
        _upload(release, REMOTE_RELEASE)
    if cafile:
        _remote(f"mkdir -p {shlex.quote(str(Path(REMOTE_CAFILE).parent))}", "making the CA folder")
        _upload(cafile, REMOTE_CAFILE)
    _upload_text(npmrc, REMOTE_NPMRC)
    try:
        _remote(build_script(source, marker), f"building {source.label}")
    finally:
        host.run_shell_command(f"rm -f {REMOTE_NPMRC} {REMOTE_RELEASE} {REMOTE_TREE}")


def _upload_text(text: str, remote: str) -> None:
    _remote(f"umask 077 && : >{remote}", f"creating {remote}")
    if not host.put_file(io.BytesIO(text.encode()), remote):
        raise EnsembleError(f"etherpad: uploading {remote} to {host.name} failed")


def wait_listening_command(port: int, seconds: int = 120) -> str:
    """A command that succeeds once Etherpad answers HTTP on 127.0.0.1:port (node: always there)."""
    script = (f"const h=require('http');const end=Date.now()+{seconds * 1000};"
              f"(function t(){{h.get('http://127.0.0.1:{port}/',()=>process.exit(0)).on('error',()=>"
              f"{{if(Date.now()>end){{console.error('etherpad not answering on {port}');process.exit(1)}}"
              "setTimeout(t,250)})})()")
    return f"node -e {shlex.quote(script)}"


def _packages(database: str) -> list[str]:
    db_packages = ["node-sqlite3"] if database == "sqlite" else ["postgresql"]
    return ["nodejs", "npm", "zstd", "ca-certificates", *db_packages]


def _put_rendered(rendered: Iterable[Any]) -> list[Any]:
    ops = []
    for item in rendered:
        ops.append(files.put(
            name=f"Etherpad file {item.path}",
            src=io.BytesIO(item.data),
            dest=item.path,
            user=getattr(item, "owner", "root"),
            group=getattr(item, "group", "root"),
            mode=f"{getattr(item, 'mode', 0o644):o}",
        ))
    return ops


def _database(database: str, secrets: dict[str, str]) -> list[Any]:
    """postgres: a login role and a database, both named etherpad, owned by it.

    settings.json connects over the local socket with peer authentication (OS user
    etherpad = role etherpad), so no password is needed; a host secret
    `etherpad_db_password`, when present, is set on the role for TCP clients.
    """
    if database != "postgres":
        return []
    running = systemd.service(name="PostgreSQL running", service="postgresql", running=True, enabled=True)
    role = postgres.role(name="Etherpad database role", role="etherpad", login=True,
                         password=secrets.get("etherpad_db_password") or None, _su_user="postgres")
    db = postgres.database(name="Etherpad database", database="etherpad", owner="etherpad", encoding="UTF8",
                           _su_user="postgres")
    return [running, role, db]


def _install_tree(source: EtherpadSource, marker: str, installed: str, cached: Path, npmrc: str,
                  cafile: str | None, local_fleet: bool) -> list[Any]:
    """The operation that puts the pinned tree in place (none when the marker matches).

    A plain `if` on a fact read before any operation (pyinfra 3 identifies operations by
    call site, so hosts may differ), which also makes `ensemble plan` show the install.
    """
    if installed == marker:
        return []
    release = None
    if source.kind == "tarball" and not cached.exists():
        try:  # verified here, before any host is touched
            release = str(fetch_release(source, cached.parent.parent))
        except DownloadError as exc:
            hint = " (local fleets reach npm only: use npm:ep_etherpad-lite@1.8.14)" if local_fleet else ""
            raise DownloadError(f"{exc}{hint}") from None
    how = "from the cached build" if cached.exists() else "(npm install, ~100 s, or the cache another host makes)"
    return [python.call(name=f"Etherpad: install {source.label} {how}", function=install_tree, source=source,
                        marker=marker, cached=cached, npmrc=npmrc, cafile=cafile, release=release)]


def node_suite(spec) -> str:
    """The distribution release whose nodejs the host gets (local fleets may override the suite)."""
    if spec.provider.kind == "local" and spec.provider.local.suite:
        return spec.provider.local.suite
    return spec.profile.codename


@deploy("Etherpad")
def etherpad(spec, rendered_files: Iterable[Any] = (), secrets: dict[str, str] | None = None, http_proxy: str = "",
             npm_cafile: str | None = None, cache_dir: str | None = None, npm_only: bool = False) -> None:
    """Install, configure and run Etherpad on the current host (see the module doc).

    http_proxy: how the host reaches the npm registry (local provider: its tinyproxy).
    npm_cafile: CA bundle (a path on this machine) the host's npm must trust; by default,
    when a proxy is given, the one this machine's npm trusts (same TLS view through it).
    cache_dir: where built trees are cached on this machine (default_cache_dir()).
    """
    ep = spec.etherpad
    cache_dir = cache_dir or default_cache_dir()
    if npm_cafile is None and http_proxy:
        npm_cafile = deploying_machine_npm_cafile()
    secrets = secrets or {}
    rendered = [f for f in rendered_files if getattr(f, "component", "etherpad") == "etherpad"]
    source = parse_source(ep.source_url, ep.sha256)
    marker = source.marker(node_major(node_suite(spec)))
    cached = built_tree_path(cache_dir, source.cache_key(node_major(node_suite(spec))))
    installed = (host.get_fact(Command, command=f"cat {MARKER} 2>/dev/null || true") or "").strip()

    apt.update(name="apt lists (Etherpad)", cache_time=APT_CACHE_SECONDS)
    apt.packages(name="Etherpad packages", packages=_packages(ep.database), no_recommends=True)
    server.group(name="Etherpad group", group="etherpad", system=True)
    server.user(name="Etherpad user", user="etherpad", group="etherpad", home=DATA, shell="/usr/sbin/nologin",
                system=True)
    files.directory(name="Etherpad data folder", path=DATA, user="etherpad", group="etherpad", mode="750")
    db_ops = _database(ep.database, secrets)
    tree = _install_tree(source, marker, installed, cached, npmrc_text(ep.npm_registry, http_proxy, npm_cafile),
                         npm_cafile, npm_only)
    config = _put_rendered(rendered)
    units = [op for op, f in zip(config, rendered, strict=True) if f.path.endswith(".service")]
    if units:
        systemd.daemon_reload(name="systemd reload (etherpad unit)", _if=any_changed(*units))
    restart = systemd.service(name="Etherpad restarted", service="etherpad", restarted=True,
                              _if=any_changed(*tree, *config, *db_ops))
    systemd.service(name="Etherpad enabled and running", service="etherpad", running=True, enabled=True)
    server.shell(name="Etherpad answers", commands=[wait_listening_command(ep.port)], _if=restart.did_change)
