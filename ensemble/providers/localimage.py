"""The cached root filesystem of local hosts: debootstrap once per Debian suite, reuse as a zstd tarball.

Facts (which suites, which mirror, which packages) are apart from the one action (`ensure_image`).
The build is atomic (work folder + tarball renamed into place) and locked, so a crash leaves no half
tarball and two concurrent runs build once.

Example::

    tarball = ensure_image("bookworm", Path("/var/cache/ensemble"), mirror_for_suite("bookworm"))
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from ensemble.errors import EnsembleError, SpecError

# Suites Debian's mirror still carries here; buster is archived, Ubuntu is not reachable.
SUPPORTED_SUITES = ("bullseye", "bookworm", "trixie")

# minbase + what a real server boots with + what every deploy installs first (gnupg for keyrings).
IMAGE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "openssh-server", "python3", "iproute2",
                  "ca-certificates", "gnupg", "curl")

IMAGE_FORMAT = 1  # bump when the image content changes: old tarballs are then ignored


def check_suite(suite: str, os_profile: str) -> None:
    """Refuse a suite the mirror does not carry, naming the spec key.

    Example::

        check_suite("buster", "debian-buster")   # raises SpecError("fleet.os: ...")
    """
    if suite not in SUPPORTED_SUITES:
        raise SpecError("fleet.os", f"{os_profile} ({suite}) cannot run on the local provider: its "
                        f"packages are not on this machine's mirror; use debian-bullseye, debian-bookworm "
                        f"or debian-trixie (or set provider.local.suite)")


def machine_sources(root: Path = Path("/")) -> list[dict[str, str]]:
    """The apt sources of this machine as [{"uri":..., "suite":..., "components":...}] (deb only).

    Example::

        machine_sources()[0]["uri"]   # "http://deb.debian.org/debian"
    """
    entries: list[dict[str, str]] = []
    for path in sorted((root / "etc/apt/sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, flags=re.M))
            if "deb" not in fields.get("Types", "").split() or fields.get("Enabled", "yes") == "no":
                continue
            for uri in fields.get("URIs", "").split():
                for suite in fields.get("Suites", "").split():
                    entries.append({"uri": uri, "suite": suite, "components": fields.get("Components", "main")})
    legacy = root / "etc/apt/sources.list"
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 3 and parts[0] == "deb" and not parts[1].startswith("["):
                entries.append({"uri": parts[1], "suite": parts[2], "components": " ".join(parts[3:]) or "main"})
    return entries


def mirror_for_suite(configured: str = "", root: Path = Path("/")) -> str:
    """The Debian mirror to debootstrap from: the spec's, else this machine's main (non-security) one.

    Example::

        mirror_for_suite("")   # "http://deb.debian.org/debian"
    """
    if configured:
        return configured
    for entry in machine_sources(root):
        if "security" not in entry["suite"] and "security" not in entry["uri"]:
            return entry["uri"]
    raise EnsembleError("no Debian mirror found in /etc/apt/sources.list*: set provider.local.mirror")


def security_mirror(root: Path = Path("/")) -> str | None:
    """This machine's debian-security mirror, if it uses one.

    Example::

        security_mirror()   # "http://deb.debian.org/debian-security"
    """
    for entry in machine_sources(root):
        if entry["suite"].endswith("-security"):
            return entry["uri"]
    return None


def guest_sources(suite: str, mirror: str, security: str | None) -> str:
    """deb822 sources for a guest of `suite` (main, updates, security).

    Example::

        guest_sources("bookworm", "http://deb.debian.org/debian", None)
    """
    text = (f"Types: deb\nURIs: {mirror}\nSuites: {suite} {suite}-updates\nComponents: main\n"
            "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    if security:
        text += (f"\nTypes: deb\nURIs: {security}\nSuites: {suite}-security\nComponents: main\n"
                 "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n")
    return text


def image_path(cache_dir: Path, suite: str) -> Path:
    """Where the tarball of `suite` lives. Example: image_path(Path("/var/cache/ensemble"), "bookworm")."""
    return cache_dir / f"rootfs-{suite}-v{IMAGE_FORMAT}.tar.zst"


@contextmanager
def file_lock(path: Path):
    """An exclusive flock on `path` (created if needed), released on exit.

    Example::

        with file_lock(Path("/var/cache/ensemble/rootfs.lock")):
            ...
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        # Poll instead of a blocking flock: once the runner has imported pyinfra (gevent's monkey patch),
        # "threads" are greenlets of one OS thread, and a blocking flock would stop the greenlet holding
        # the lock from ever releasing it (a deadlock seen in the full test suite). time.sleep yields.
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def mounts_under(path: Path) -> list[str]:
    """Mount points at or below `path`, deepest first. Example: mounts_under(Path("/var/cache/ensemble"))."""
    prefix = str(path.resolve())
    with open("/proc/self/mounts") as mounts:
        points = [line.split()[1].replace("\\040", " ") for line in mounts]
    return sorted((p for p in points if p == prefix or p.startswith(prefix + "/")), key=len, reverse=True)


def remove_tree(path: Path) -> None:
    """Unmount whatever is mounted below `path` (debootstrap mounts proc, sys, dev), then delete it.

    Refuses to delete while a mount remains: deleting through a bind mount of /dev would empty the machine's.

    Example::

        remove_tree(Path("/var/cache/ensemble/build-bookworm-123"))
    """
    if not path.exists():
        return
    for point in mounts_under(path):
        subprocess.run(["umount", "-l", point], capture_output=True)
    left = mounts_under(path)
    if left:
        raise EnsembleError(f"cannot remove {path}: still mounted: {', '.join(left)}")
    shutil.rmtree(path, ignore_errors=True)


def ensure_image(suite: str, cache_dir: Path, mirror: str, progress=None) -> Path:
    """Build the rootfs tarball of `suite` unless it is cached; return its path.

    Example::

        ensure_image("bookworm", Path("/var/cache/ensemble"), "http://deb.debian.org/debian")
    """
    tarball = image_path(cache_dir, suite)
    if tarball.exists():
        return tarball
    with file_lock(cache_dir / f"rootfs-{suite}.lock"):
        if tarball.exists():  # another run built it while we waited
            return tarball
        for leftover in cache_dir.glob(f"build-{suite}-*"):  # a build killed mid-way (we hold the lock)
            remove_tree(leftover)
        _build_image(suite, cache_dir, mirror, tarball, progress)
    return tarball


def _build_image(suite: str, cache_dir: Path, mirror: str, tarball: Path, progress) -> None:
    work = cache_dir / f"build-{suite}-{os.getpid()}"
    remove_tree(work)
    log = cache_dir / f"debootstrap-{suite}.log"
    started = time.monotonic()
    if progress:
        progress(f"building the {suite} image with debootstrap (about 1 min, once)")
    try:
        with open(log, "w") as out:
            result = subprocess.run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(IMAGE_PACKAGES)}",
                 suite, str(work / "rootfs"), mirror], stdout=out, stderr=subprocess.STDOUT)
        if result.returncode != 0:
            tail = log.read_text(errors="replace").strip().splitlines()[-3:]
            raise EnsembleError(f"debootstrap {suite} from {mirror} failed: {' / '.join(tail)} (log: {log})")
        _configure_image(work / "rootfs", suite, mirror)
        partial = work / "rootfs.tar.zst"
        subprocess.run(f"tar -C {work / 'rootfs'} --numeric-owner -cf - . | zstd -T0 -3 -q -o {partial}",
                       shell=True, check=True)
        os.replace(partial, tarball)  # atomic: the tarball is whole or absent
    finally:
        remove_tree(work)
    if progress:
        progress(f"image {tarball.name} built in {time.monotonic() - started:.0f} s")


def _configure_image(rootfs: Path, suite: str, mirror: str) -> None:
    """Sources, this machine's apt settings, networkd on, no stale lists."""
    (rootfs / "etc/apt/sources.list").unlink(missing_ok=True)
    (rootfs / "etc/apt/sources.list.d/debian.sources").write_text(guest_sources(suite, mirror, security_mirror()))
    # e.g. Check-Valid-Until off for a snapshot mirror: the guest must read the same repositories
    for conf in Path("/etc/apt/apt.conf.d").iterdir():
        if conf.is_file() and not conf.name.startswith("docker-"):
            shutil.copy(conf, rootfs / "etc/apt/apt.conf.d" / conf.name)
    subprocess.run(["chroot", str(rootfs), "systemctl", "enable", "systemd-networkd"],
                   check=True, capture_output=True)
    subprocess.run(["chroot", str(rootfs), "apt-get", "clean"], check=True, capture_output=True)
    for stale in (rootfs / "var/lib/apt/lists").glob("*"):
        if stale.is_file():
            stale.unlink()
    for key in (rootfs / "etc/ssh").glob("ssh_host_*"):
        key.unlink()  # every host gets fresh keys at create time
    (rootfs / "etc/machine-id").write_text("")
