"""Room names as the front door sees them, and nginx's `split_clients` choice, in plain Python.

A room key is the *raw* (still percent-encoded) room name, lower-cased: exactly what the generated
nginx config computes from a path `/<room>` or a `?room=` argument, so Python (pins, tests, the
benchmark) and nginx agree byte for byte. Valid raw names are 1-80 characters of ASCII letters,
digits, `-` and `_`, plus percent-escapes of non-ASCII UTF-8 bytes (`%C3%A9`). Anything else
(dots, slashes, `%25`, escapes of plain ASCII) is malformed and gets 400: it can never become a
path or a config token.

Example::

    room_key("ImpossibleCrimes")          # "impossiblecrimes"
    room_key("r%C3%A9union")              # "r%c3%a9union"
    room_key("../etc")                    # None (malformed)
    key_from_census("réunion@conference.demo-1.meet.example.org")   # "r%c3%a9union"
"""

from __future__ import annotations

import re
from urllib.parse import quote

MAX_RAW_LENGTH = 80
# Raw characters: unreserved ASCII, or escapes of bytes >= 0x80; the same regex runs in nginx (written
# as an unrolled loop: without PCRE's JIT, an alternation per character costs nginx noticeably).
RAW_ROOM_PATTERN = (r"(?=.{1,LEN}$)[A-Za-z0-9_-]*(?:%[89A-Fa-f][0-9A-Fa-f][A-Za-z0-9_-]*)*"
                    .replace("LEN", str(MAX_RAW_LENGTH)))
_RAW_ROOM = re.compile(r"^" + RAW_ROOM_PATTERN + r"$")


def room_key(raw: str) -> str | None:
    """The routing key of a raw room name, or None when it is malformed.

    Example::

        room_key("MyRoom"), room_key("my room")    # ("myroom", None)
    """
    if not _RAW_ROOM.match(raw):
        return None
    return raw.lower()


def key_from_census(room_name: str) -> str | None:
    """The routing key of a prosody census entry ("node@conference.domain"), None if unroutable.

    Prosody holds the decoded node; browsers send it percent-encoded (UTF-8), so encode it back.

    Example::

        key_from_census("myroom@conference.demo-1.meet.example.org")   # "myroom"
    """
    node = room_name.split("@", 1)[0]
    return room_key(quote(node, safe="-_", encoding="utf-8")) if node else None


def murmur2(data: bytes) -> int:
    """nginx's ngx_murmur_hash2 (MurmurHash2, seed = length), the hash behind split_clients.

    Example::

        murmur2(b"") == 0
    """
    m = 0x5BD1E995
    length = len(data)
    h = length & 0xFFFFFFFF
    i = 0
    while length - i >= 4:
        k = data[i] | data[i + 1] << 8 | data[i + 2] << 16 | data[i + 3] << 24
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> 24
        k = (k * m) & 0xFFFFFFFF
        h = ((h * m) & 0xFFFFFFFF) ^ k
        i += 4
    rest = length - i
    if rest == 3:
        h ^= data[i + 2] << 16
    if rest >= 2:
        h ^= data[i + 1] << 8
    if rest >= 1:
        h ^= data[i]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h


def split_bounds(parts: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Cumulative 32-bit bounds of split_clients parts given in 0.01% units (the last part is `*`).

    Example::

        split_bounds([("a", 5000), ("b", 5000)])[0]   # ("a", 2147483647)
    """
    bounds, last = [], 0
    for i, (name, units) in enumerate(parts):
        if i == len(parts) - 1:
            bounds.append((name, 0))  # "*": the rest
        else:
            last += units * 0xFFFFFFFF // 10000
            bounds.append((name, last))
    return bounds


def split_choice(key: str, bounds: list[tuple[str, int]]) -> str | None:
    """The part nginx's split_clients gives to key (see split_bounds); None when there are no parts.

    Example::

        split_choice("myroom", split_bounds([("a", 5000), ("b", 5000)]))   # "a" or "b", always the same
    """
    h = murmur2(key.encode("utf-8"))
    for name, bound in bounds:
        if bound == 0 or h < bound:
            return name
    return None
