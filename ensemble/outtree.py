"""A folder ensemble writes into (`ensemble render --out DIR`) without trusting what is inside it.

DIR may hold symbolic links planted by someone else (`DIR/host -> /etc`); following one would
chmod, delete or overwrite files anywhere. So every step goes through directory descriptors
opened with O_NOFOLLOW (a symlink anywhere under DIR is an error, never followed), files are
replaced with rename (which replaces a link, not its target), and only files listed in DIR's
manifest (`.ensemble-render`, written by an earlier render) are ever removed. A non-empty DIR
without a manifest is refused: ensemble does not own it.

The manifest is written before the files (with the old and new lists), then again after them
(the new list only), so an interrupted render converges when re-run.

Example::

    tree = OwnedTree.open(Path("/tmp/r"), "--out")
    tree.write("demo-1.test/etc/jvb.conf", b"...", 0o640, top_mode=0o700)
    tree.finish()                    # removes what the last render wrote and this one did not
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path, PurePosixPath

from ensemble.errors import UsageError

MANIFEST = ".ensemble-render"
MAX_MANIFEST_BYTES = 8 << 20

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class OwnedTree:
    """DIR opened for writing: see the module doc."""

    def __init__(self, root: Path, what: str, fd: int, previous: set[str]):
        self.root, self.what, self.fd = root, what, fd
        self.previous = previous
        self.written: set[str] = set()

    # ---------------------------------------------------------------- opening

    @classmethod
    def check(cls, root: Path, what: str) -> None:
        """Refuse DIR before anything is written anywhere (a symlink, a file, a folder not ours)."""
        cls.open(root, what, create=False).close()

    @classmethod
    def open(cls, root: Path, what: str, create: bool = True) -> OwnedTree:
        try:
            info = os.lstat(root)
        except FileNotFoundError:
            if not create:
                return cls(root, what, -1, set())
            root.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(root, 0o700)
            info = os.lstat(root)
        except OSError as exc:
            raise UsageError(f"{what}: cannot use {root}: {exc.strerror}") from None
        if stat.S_ISLNK(info.st_mode):
            raise UsageError(f"{what}: {root} is a symbolic link; give the real folder")
        if not stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{what}: {root} exists and is not a folder")
        try:
            fd = os.open(root, _DIR_FLAGS)
        except OSError as exc:
            raise UsageError(f"{what}: cannot open {root}: {exc.strerror}") from None
        try:
            previous = cls._read_manifest(fd, root, what)
            if previous is None:
                if os.listdir(fd):
                    raise UsageError(f"{what}: {root} is not empty and was not written by ensemble render "
                                     f"(no {MANIFEST}); give a new or empty folder")
                previous = set()
        except BaseException:
            os.close(fd)
            raise
        return cls(root, what, fd, previous)

    @staticmethod
    def _read_manifest(fd: int, root: Path, what: str) -> set[str] | None:
        try:
            mfd = os.open(MANIFEST, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd)
        except FileNotFoundError:
            return None
        except OSError:
            raise UsageError(f"{what}: {root}/{MANIFEST} is not a regular file; remove it or give another folder"
                             ) from None
        try:
            info = os.fstat(mfd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_MANIFEST_BYTES:
                raise UsageError(f"{what}: {root}/{MANIFEST} is not a render manifest")
            with os.fdopen(os.dup(mfd), "rb") as fh:
                data = json.loads(fh.read(MAX_MANIFEST_BYTES + 1).decode("utf-8"))
        except (ValueError, RecursionError):
            raise UsageError(f"{what}: {root}/{MANIFEST} is not a render manifest (corrupt JSON)") from None
        finally:
            os.close(mfd)
        files = data.get("files") if isinstance(data, dict) else None
        if not isinstance(files, list) or not all(isinstance(f, str) and _clean(f) for f in files):
            raise UsageError(f"{what}: {root}/{MANIFEST} is not a render manifest")
        return set(files)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    # ---------------------------------------------------------------- writing

    def announce(self, relpaths: list[str]) -> None:
        """Record what is about to be written (with the earlier list) before writing it."""
        self._write_manifest(self.previous | set(relpaths))

    def write(self, relpath: str, content: bytes, mode: int, top_mode: int | None = None) -> None:
        """Write DIR/relpath (parents created; the first component set to top_mode); unchanged
        files keep their mtime. A symlink on the way is an error, never followed."""
        parts = _clean(relpath)
        if not parts:
            raise UsageError(f"{self.what}: refusing a path that is not clean: {relpath!r}")
        try:
            self._write(parts, content, mode, top_mode)
        except OSError as exc:
            raise UsageError(f"{self.what}: cannot write {self.root / relpath}: {exc.strerror}") from None
        self.written.add("/".join(parts))

    def _write(self, parts: list[str], content: bytes, mode: int, top_mode: int | None) -> None:
        parent = self._open_dirs(parts[:-1], create=True, top_mode=top_mode)
        try:
            name = parts[-1]
            if _read_regular(parent, name) != content:
                tmp = f".{name}.tmp"
                _unlink_quiet(parent, tmp)
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=parent)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(content)
                    os.fchmod(fh.fileno(), mode)
                os.replace(tmp, name, src_dir_fd=parent, dst_dir_fd=parent)
            else:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent)
                try:
                    os.fchmod(fd, mode)
                finally:
                    os.close(fd)
        finally:
            os.close(parent)

    def finish(self) -> None:
        """Remove what the last render wrote and this one did not (then folders left empty); record the list."""
        for relpath in sorted(self.previous - self.written, reverse=True):
            parts = _clean(relpath)
            try:
                parent = self._open_dirs(parts[:-1], create=False)
            except (FileNotFoundError, UsageError):
                continue  # gone, or a symlink on the way: nothing of ours to remove
            try:
                _unlink_quiet(parent, parts[-1])
            finally:
                os.close(parent)
            for depth in range(len(parts) - 1, 0, -1):  # now-empty folders, deepest first
                try:
                    parent = self._open_dirs(parts[:depth - 1], create=False)
                except (FileNotFoundError, UsageError):
                    break
                try:
                    os.rmdir(parts[depth - 1], dir_fd=parent)
                except OSError:
                    break
                finally:
                    os.close(parent)
        self._write_manifest(self.written)
        self.close()

    # ---------------------------------------------------------------- helpers

    def _open_dirs(self, parts: list[str], create: bool, top_mode: int | None = None) -> int:
        fd = os.dup(self.fd)
        for depth, part in enumerate(parts):
            if create:
                try:
                    os.mkdir(part, 0o755 if depth else (top_mode or 0o755), dir_fd=fd)
                except FileExistsError:
                    pass
            try:
                child = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.ENOENT and not create:
                    raise FileNotFoundError(part) from None
                where = self.root.joinpath(*parts[:depth + 1])
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise UsageError(f"{self.what}: {where} is a symbolic link or a file, not a folder; "
                                     "refusing to write through it") from None
                raise UsageError(f"{self.what}: cannot open {where}: {exc.strerror}") from None
            os.close(fd)
            fd = child
            if depth == 0 and top_mode is not None and create:
                os.fchmod(fd, top_mode)
        return fd

    def _write_manifest(self, files: set[str]) -> None:
        data = (json.dumps({"written_by": "ensemble render", "files": sorted(files)}, indent=1) + "\n").encode()
        tmp = f".{MANIFEST}.tmp"
        _unlink_quiet(self.fd, tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=self.fd)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, MANIFEST, src_dir_fd=self.fd, dst_dir_fd=self.fd)


def _clean(relpath: str) -> list[str]:
    """The components of a clean relative path ([] when it is absolute, empty or has . or ..)."""
    if not relpath or relpath.startswith("/") or "\0" in relpath:
        return []
    parts = relpath.split("/")
    if any(p in ("", ".", "..") for p in parts) or PurePosixPath(relpath).parts != tuple(parts):
        return []
    return parts


def _read_regular(dir_fd: int, name: str) -> bytes | None:
    """The bytes of a regular file (not followed if a link; None for anything else or missing)."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as fh:
            return fh.read()
    finally:
        os.close(fd)


def _unlink_quiet(dir_fd: int, name: str) -> None:
    """Remove a directory entry (a link itself, never its target); a folder there is left alone."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        pass
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.EPERM):
            raise
