"""Reading files a user names (the spec, --secrets, --state, keys, certificates): bounded and safe.

Any path from a spec value or a CLI argument may be hostile: a FIFO (a plain open() blocks
forever), /dev/zero (read() never ends), a directory, a 2 GB file, bytes that are not UTF-8, or
TOML/JSON nested deep enough to blow Python's recursion limit. Everything here ends in a
`UsageError` of one line that names the key or argument (`what`) and what would be valid.

Regular files only: the file is opened with O_NONBLOCK (so a FIFO does not block the open),
then checked with fstat on that same descriptor (no race between check and read), then read
up to `limit` bytes.

Example::

    text = read_user_text(Path("ensemble.toml"), "--config")
    data = parse_toml(text, "ensemble.toml")
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # python < 3.11 (bullseye's front door): the refresher reads the spec as JSON
    tomllib = None  # type: ignore[assignment]

from ensemble.errors import UsageError

MAX_USER_FILE_BYTES = 1 << 20  # 1 MiB: a spec, a secrets file, a state file, a PEM chain are far smaller
MAX_NESTING = 32  # tables/arrays/objects inside each other; real specs and state files use <= 4

_REASONS = {errno.ENOENT: "no such file", errno.EACCES: "permission denied", errno.EPERM: "permission denied",
            errno.EISDIR: "is a directory, not a file", errno.ELOOP: "too many symbolic links",
            errno.ENOTDIR: "a component of the path is not a directory", errno.ENAMETOOLONG: "path too long"}


def read_user_file(path: Path | str, what: str, *, limit: int = MAX_USER_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `limit` bytes; UsageError naming `what` otherwise.

    Example::

        read_user_file("/dev/zero", "--config")   # UsageError: --config: /dev/zero is not a regular file ...
    """
    p = Path(path)
    if "\0" in str(p):
        raise UsageError(f"{what}: the path contains a NUL byte")
    try:
        fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise UsageError(f"{what}: no such file: {p}") from None
    except OSError as exc:
        reason = _REASONS.get(exc.errno or 0, exc.strerror or "cannot open")
        raise UsageError(f"{what}: cannot read {p}: {reason}") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise UsageError(f"{what}: {p} is a directory, not a file")
        if not stat.S_ISREG(info.st_mode):
            raise UsageError(f"{what}: {p} is not a regular file (a FIFO, device or socket is refused)")
        if info.st_size > limit:
            raise UsageError(f"{what}: {p} is {info.st_size} bytes, more than the {limit} allowed")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:  # the file may grow after fstat: never read more than limit + 1
            chunk = os.read(fd, min(65536, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise UsageError(f"{what}: {p} is more than the {limit} bytes allowed")
        return b"".join(chunks)
    except OSError as exc:
        raise UsageError(f"{what}: cannot read {p}: {exc.strerror or 'read error'}") from None
    finally:
        os.close(fd)


def read_user_text(path: Path | str, what: str, *, limit: int = MAX_USER_FILE_BYTES) -> str:
    """read_user_file decoded as strict UTF-8 (a byte-order mark is refused too).

    Example::

        read_user_text("ensemble.toml", "--config")
    """
    data = read_user_file(path, what, limit=limit)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{what}: {path} is not UTF-8 text (bad byte at offset {exc.start})") from None


def _nesting_depth(text: str) -> int:
    """An upper bound of how deep brackets nest (brackets inside strings counted too: only safer)."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth = max(0, depth - 1)
    return deepest


def _check_nesting(text: str, what: str) -> None:
    if _nesting_depth(text) > MAX_NESTING:
        raise UsageError(f"{what}: nested more than {MAX_NESTING} levels deep")


def parse_toml(text: str, what: str) -> dict[str, Any]:
    """tomllib.loads with one-line errors and a nesting bound (no RecursionError).

    Example::

        parse_toml('[fleet]\\nname = "demo"\\n', "ensemble.toml")   # {"fleet": {"name": "demo"}}
    """
    if tomllib is None:
        raise UsageError(f"{what}: reading TOML needs python >= 3.11; give the spec as JSON (spec_json)")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{what}: not valid TOML: {exc}") from None
    except (RecursionError, MemoryError):
        raise UsageError(f"{what}: nested too deep or too large to be a spec") from None


def parse_json(text: str, what: str) -> Any:
    """json.loads with one-line errors and a nesting bound (no RecursionError).

    Example::

        parse_json('{"fleet": {}}', "--secrets")   # {"fleet": {}}
    """
    _check_nesting(text, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(f"{what}: not valid JSON: {exc}") from None
    except (RecursionError, MemoryError):
        raise UsageError(f"{what}: nested too deep or too large") from None
