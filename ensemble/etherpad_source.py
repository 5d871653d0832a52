"""Where Etherpad comes from: a pinned source, verified, and the cache of built trees.

`etherpad.source_url` takes one of two forms:

- an ``https://`` release tarball (production default: the upstream 2.x release on
  GitHub). The deploying machine downloads it once, checks it against
  `etherpad.sha256` (when set; a mismatch is refused before any host is touched) and
  uploads it to the host.
- ``npm:<package>@<version>`` (e.g. ``npm:ep_etherpad-lite@1.8.14``): the host runs
  ``npm pack`` through its npm registry (and proxy), and npm checks the archive against
  the registry's integrity hash; `etherpad.sha256`, when set, is checked on top.

A built /opt/etherpad tree is cached on the deploying machine as
``<cache_dir>/etherpad/<key>.tar.zst``, keyed by source, checksum and Node major version
(database drivers are not in it: node-sqlite3 is Debian's, pg comes with ueberdb2),
so later hosts and later runs skip the ~100 s npm install.

Example::

    src = parse_source("npm:ep_etherpad-lite@1.8.14", "")
    src.kind, src.package, src.version   # ("npm", "ep_etherpad-lite", "1.8.14")
    src.cache_key(18)                    # "npm-ep_etherpad-lite-1.8.14-node18-3f2a..."
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ensemble.errors import EnsembleError, SpecError
from ensemble.grammar import url_problem

DEFAULT_CACHE_DIR = "/var/cache/ensemble"

# Node major version of each distribution's `nodejs` package: it is fixed per release, so
# the cache key is known before Node is even installed on the host.
DEBIAN_NODE_MAJOR = {"bullseye": 12, "bookworm": 18, "trixie": 20, "buster": 10,
                     "jammy": 12, "noble": 18, "bionic": 8}

# Bumped whenever the way a tree is built changes, so that older cached trees are not reused.
BUILD_RECIPE = 2

# npm package names are lower-case URL-safe words (optionally @scope/); versions are semver.
_NPM_SOURCE = re.compile(r"npm:(?P<package>(@[a-z0-9][a-z0-9_.-]*/)?[a-z0-9][a-z0-9_.-]{0,213})"
                         r"@(?P<version>[0-9]+\.[0-9]+\.[0-9]+(?:[-+][0-9A-Za-z.-]+)?)")


@dataclass(frozen=True)
class EtherpadSource:
    """A pinned Etherpad source.

    Example::

        EtherpadSource("tarball", "https://example.org/etherpad-2.2.7.tar.gz", "", "", "")
    """

    kind: str  # "npm" | "tarball"
    url: str  # as written in the spec
    package: str  # npm package name ("" for tarballs)
    version: str  # npm version ("" for tarballs)
    sha256: str  # expected sha256 of the archive ("" = not checked by ensemble)

    @property
    def label(self) -> str:
        """What the installed-marker and logs call this source."""
        return f"{self.package}@{self.version}" if self.kind == "npm" else self.url

    def cache_key(self, node_major: int) -> str:
        """File-name-safe key of a built tree from this source on this Node major.

        Example::

            parse_source("npm:ep_etherpad-lite@1.8.14", "").cache_key(18)
        """
        digest = hashlib.sha256(f"{self.url}\n{self.sha256}\n{node_major}\n{BUILD_RECIPE}".encode()).hexdigest()
        readable = f"{self.package}-{self.version}" if self.kind == "npm" else "release"
        return f"{self.kind}-{readable}-node{node_major}-{digest[:16]}"

    def marker(self, node_major: int) -> str:
        """The one line kept in /opt/etherpad/.ensemble-installed: a re-run compares it."""
        return f"{self.cache_key(node_major)} {self.label}"


def parse_source(source_url: str, sha256: str = "") -> EtherpadSource:
    """Read `etherpad.source_url`; raise SpecError naming the key when it is neither form.

    Example::

        parse_source("https://github.com/ether/etherpad-lite/archive/refs/tags/v2.2.7.tar.gz", "")
    """
    match = _NPM_SOURCE.fullmatch(source_url)
    if match:
        return EtherpadSource("npm", source_url, match["package"], match["version"], sha256)
    if url_problem(source_url) is None and "/" in source_url.split("://", 1)[1].rstrip("/"):
        return EtherpadSource("tarball", source_url, "", "", sha256)
    raise SpecError("etherpad.source_url", "must be an http(s) URL of a release tarball or "
                    f"npm:<package>@<version> (e.g. npm:ep_etherpad-lite@1.8.14), got {source_url!r}")


def check_source_url(value: str) -> str | None:
    """Spec validator for `etherpad.source_url`: an error message, or None when valid."""
    try:
        parse_source(value)
    except SpecError as exc:
        return str(exc).split(": ", 1)[1]
    return None


def node_major(codename: str) -> int:
    """Node major of the distribution's nodejs package, e.g. node_major("bookworm") == 18."""
    try:
        return DEBIAN_NODE_MAJOR[codename]
    except KeyError:
        raise SpecError("fleet.os", f"no known Node version for {codename!r}") from None


class DownloadError(EnsembleError):
    """The release could not be fetched at all (as opposed to fetched and refused)."""


def default_cache_dir() -> str:
    """/var/cache/ensemble when this user may write there (root, CI), else ~/.cache/ensemble.

    Example::

        default_cache_dir()   # "/var/cache/ensemble" as root
    """
    system = Path(DEFAULT_CACHE_DIR)
    if os.access(system if system.exists() else system.parent, os.W_OK):
        return DEFAULT_CACHE_DIR
    return str(Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ensemble")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def built_tree_path(cache_dir: str | Path, key: str) -> Path:
    """Where the built /opt/etherpad tree of `key` is cached on the deploying machine."""
    return Path(cache_dir) / "etherpad" / f"{key}.tar.zst"


def prune_stale_trees(cache_dir: str | Path, key: str) -> list[Path]:
    """Remove cached trees of the same source and Node major built by older recipes; return them.

    Example::

        prune_stale_trees("/var/cache/ensemble", src.cache_key(18))   # [.../npm-...-node18-<old>.tar.zst]
    """
    keep = built_tree_path(cache_dir, key)
    family = key.rsplit("-", 1)[0] + "-"
    stale = [p for p in keep.parent.glob(f"{family}*.tar.zst") if p != keep and len(p.name) == len(keep.name)]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def fetch_release(source: EtherpadSource, cache_dir: str | Path = DEFAULT_CACHE_DIR, timeout: float = 60) -> Path:
    """Download a release tarball once into the cache and verify it; return its path.

    A cached copy is re-verified (never trusted blindly). A checksum mismatch raises
    EnsembleError and leaves nothing in the cache.

    Example::

        fetch_release(parse_source(url, sha), "/var/cache/ensemble")  # .../etherpad/src-<sha>.tar.gz
    """
    if source.kind != "tarball":
        raise ValueError("fetch_release only handles tarball sources")
    folder = Path(cache_dir) / "etherpad"
    url_key = hashlib.sha256(source.url.encode()).hexdigest()[:16]
    target = folder / f"release-{url_key}.tar.gz"
    if target.exists() and _matches(source, target):
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.{os.getpid()}.part")
    try:
        with urllib.request.urlopen(source.url, timeout=timeout) as response, partial.open("wb") as out:
            while block := response.read(1 << 20):
                out.write(block)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"etherpad.source_url: cannot download {source.url}: {exc}") from None
    got = file_sha256(partial)
    if source.sha256 and got != source.sha256:
        partial.unlink(missing_ok=True)
        raise EnsembleError(f"etherpad.sha256: checksum mismatch for {source.url}: expected {source.sha256}, "
                            f"got {got}; refusing to install it")
    os.replace(partial, target)
    return target


def _matches(source: EtherpadSource, path: Path) -> bool:
    return not source.sha256 or file_sha256(path) == source.sha256
