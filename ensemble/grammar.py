"""The real grammars of the values a spec or an argument holds: checked before anything uses them.

Each check returns an error message (what is wrong and what would be valid) or None. Patterns
are matched with re.fullmatch: `$` also matches before a trailing newline, so a `$`-anchored
pattern lets "meet.example.org\\n" through; fullmatch does not.

Example::

    text_problem("stable/\\nTrusted: yes")       # "must not contain control characters (found '\\n')"
    url_problem("https://user:pw@repo.test/")   # "... no user:password@ ..."
    debian_version_problem("2.0.8719-1")        # None
"""

from __future__ import annotations

import ipaddress
import os
import re
import unicodedata

MAX_TEXT = 2048  # characters of any spec string (the longest real one, a URL, is ~100)

# Control characters (C0, DEL, C1), format characters (bidi overrides, zero-width), and the
# Unicode line/paragraph separators: each can end a line or hide text in a config file.
_FORBIDDEN_CATEGORIES = ("Cc", "Cf", "Zl", "Zp", "Cs")

_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")
# RFC 3986 characters that are harmless in every file a URL lands in (deb822 sources, .npmrc,
# nginx, JSON, a shell): no spaces, quotes, backslashes, brackets (except an IPv6 host), ';', '#',
# '$', '!', '*' or parentheses; '&' only in the query.
_URL = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)"
                  r"(?::(?P<port>[0-9]{1,5}))?(?P<path>/[A-Za-z0-9._~%/+:@=,-]*)?"
                  r"(?:\?(?P<query>[A-Za-z0-9._~%/+:@=,&-]*))?")
# Debian policy 5.6.12: [epoch:]upstream_version[-debian_revision]; the upstream part starts
# with a digit; a hyphen only when a revision follows (the revision is after the last hyphen).
_DEBIAN_VERSION = re.compile(r"(?:[0-9]+:)?[0-9][A-Za-z0-9.+~]*(?:-[A-Za-z0-9.+~-]*[A-Za-z0-9.+~])?")
# An apt suite or codename ("bookworm", "bookworm-backports") or a flat repository's directory
# ("stable/", "./", "unstable/jitsi/"): no spaces, nothing a deb822 field could split on.
_APT_SUITE = re.compile(r"(?:[A-Za-z0-9][A-Za-z0-9._+-]*|\.)(?:/[A-Za-z0-9][A-Za-z0-9._+-]*)*/?")


def text_problem(value: str, max_len: int = MAX_TEXT) -> str | None:
    """Any string value: no control/format/line-separator characters, bounded length."""
    if len(value) > max_len:
        return f"must be at most {max_len} characters, got {len(value)}"
    for char in value:
        if unicodedata.category(char) in _FORBIDDEN_CATEGORIES:
            return f"must not contain control characters (found {char!r})"
    return None


def is_domain(value: str) -> bool:
    """A lower-case DNS name with at least one dot, each label 1-63 of a-z0-9- (no edge hyphen)."""
    if len(value) > 253 or "." not in value:
        return False
    return all(_LABEL.fullmatch(label) for label in value.split("."))


def url_problem(value: str, schemes: tuple[str, ...] = ("http", "https")) -> str | None:
    """An absolute URL with one of `schemes`, a host (name, IPv4 or [IPv6]), an optional port and
    path; no user:password@, whitespace, quotes or fragment.

    Example::

        url_problem("https://registry.npmjs.org/")   # None
    """
    wanted = "/".join(schemes)
    example = f"{schemes[-1]}://host.example.org/path"
    authority = value.split("://", 1)[1].split("/", 1)[0] if "://" in value else ""
    if "@" in authority:
        return f"must be a {wanted} URL without user:password@ (put credentials elsewhere), got {value!r}"
    match = _URL.fullmatch(value)
    if not match or match["scheme"] not in schemes:
        return f"not a {wanted} URL like {example} (no spaces, quotes or #), got {value!r}"
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f"not a valid IPv6 host in {value!r}"
    elif not (_is_ipv4(host) or all(_LABEL.fullmatch(label) for label in host.lower().split("."))):
        return f"not a valid host name in {value!r}"
    if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
        return f"port must be 1-65535 in {value!r}"
    return None


def _is_ipv4(host: str) -> bool:
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        return False
    return True


def debian_version_problem(value: str) -> str | None:
    """A Debian package version ([epoch:]upstream[-revision], e.g. 2.0.9909-1 or 1:2.3~rc1-2)."""
    if _DEBIAN_VERSION.fullmatch(value):
        return None
    return f"not a Debian package version like 2.0.9909-1 ([epoch:]upstream[-revision]), got {value!r}"


def apt_suite_problem(value: str) -> str | None:
    """An apt suite/codename or a flat repository's path (e.g. bookworm, stable/)."""
    if len(value) <= 100 and _APT_SUITE.fullmatch(value) and ".." not in value.split("/"):
        return None
    return f"not an apt suite like bookworm or a flat repository path like stable/, got {value!r}"


def absolute_path_problem(value: str, home_ok: bool = False) -> str | None:
    """An absolute, normalised path (no '..', no '//'); with home_ok also ~/... .

    Example::

        absolute_path_problem("/var/cache/ensemble")   # None
    """
    path = value[1:] if home_ok and value.startswith("~/") else value
    if not path.startswith("/"):
        return f"must be an absolute path{' or ~/...' if home_ok else ''}, got {value!r}"
    if os.path.normpath(path) != path.rstrip("/") or ".." in path.split("/"):
        return f"must be a normalised path (no '..', '//' or './'), got {value!r}"
    if len(path) > 1024:
        return "must be at most 1024 characters"
    return None


def strict_cidr_problem(value: str) -> str | None:
    """A CIDR nftables takes as written: no zone index (fe80::1%eth0), no host bits set."""
    if "%" in value:
        return f"a scoped IPv6 address is not a CIDR nftables accepts: {value!r} (drop the %zone)"
    try:
        ipaddress.ip_network(value, strict=True)
    except ValueError:
        try:
            loose = ipaddress.ip_network(value, strict=False)
        except ValueError:
            return f"not a CIDR: {value!r} (e.g. 203.0.113.0/24 or 2001:db8::/32)"
        return f"host bits set in {value!r}: did you mean {loose}?"
    return None
