"""Room names as the front door sees them, and nginx's `split_clients` choice, in plain Python.

A room key is the MUC node jitsi-meet joins for a room (its `getBackendSafeRoomName`, in
react/features/base/util/uri.ts): the name percent-decoded (if it decodes), NFKC-normalised,
lower-cased, `encodeURIComponent`-encoded and lower-cased again. "Réunion", "RÉUNION",
"R%C3%A9union" and "Re\u0301union" are all the node `r%c3%a9union`, the name prosody's census
reports. A page `/<segment>` is first cleaned as jitsi-meet cleans a path segment (it drops
``:?#[]@!$&'()*+,;=<>/"``).

nginx cannot lower-case or normalise UTF-8, so the generated config computes keys itself only for
*simple* segments (1-80 ASCII letters, digits, `-`, `_`: the key is the segment lower-cased); for
any other segment the browser computes the key with the same JavaScript as jitsi-meet (the front
door's one-hop canonicalising page, `/_ensemble/room.js`) and sends it as `?ensemble_room=<key>`.
Signalling requests carry the key already (`?room=`, added by jitsi-meet). Keys are 1-1023
characters (an XMPP node's limit) of `a-z 0-9 . _ ~ ! ( ) * -` and lower-case escapes `%xx`, not
starting with `~` (nginx would read a map key starting with `~` as a regex).

Example::

    room_key("ImpossibleCrimes")          # "impossiblecrimes"
    room_key("R%C3%89union%20d'%C3%A9quipe")   # "r%c3%a9union%20d%c3%a9quipe"
    room_key("../etc")                    # None (malformed)
    key_from_census("r%c3%a9union@conference.demo-1.meet.example.org")   # "r%c3%a9union"
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import quote, unquote_to_bytes

MAX_RAW_LENGTH = 80  # simple (ASCII) names: nginx keys them itself (up to 12 capitals; more: the browser)
MAX_KEY_LENGTH = 1023  # an XMPP node's limit; also the longest page segment the front door accepts
# Simple segments: the key is the segment lower-cased (nginx does it with maps).
SIMPLE_ROOM_PATTERN = r"[A-Za-z0-9_-]{1,LEN}".replace("LEN", str(MAX_RAW_LENGTH))
# What getBackendSafeRoomName can produce (encodeURIComponent's output, lower-cased). One character or one
# escape per repetition, never `(?:[...]+|...)+`: nested repetitions backtrack exponentially on a near miss
# ("a" * 30 + "+" held an nginx worker 0.2 s and the refresher for hours), in PCRE and in Python alike.
KEY_PATTERN = (r"(?=.{1,LEN}$)(?!~)(?:[a-z0-9._~!()*-]|%[0-9a-f][0-9a-f])+"
               .replace("LEN", str(MAX_KEY_LENGTH)))
# A page's path segment as browsers send it: RFC 3986 path characters except `.`, also encoded (nginx
# decodes the path before choosing a location: a dot is a static file, a slash not a room page).
PAGE_SEGMENT_PATTERN = (r"(?=.{1,LEN}$)(?:[A-Za-z0-9_~!$&'()*+,;=:@-]|%(?![2][EeFf])[0-9A-Fa-f][0-9A-Fa-f])+"
                        .replace("LEN", str(MAX_KEY_LENGTH)))
_SIMPLE = re.compile(r"^" + SIMPLE_ROOM_PATTERN + r"$")
_KEY = re.compile(r"^" + KEY_PATTERN + r"$")
_PAGE_SEGMENT = re.compile(r"^" + PAGE_SEGMENT_PATTERN + r"$")
# jitsi-meet's _ROOM_EXCLUDE_PATTERN: characters removed from a path segment before it is a room name
_JITSI_EXCLUDED = re.compile(r"[:?#\[\]@!$&'()*+,;=></\"]")
_MALFORMED_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
# encodeURIComponent leaves these unescaped (besides ASCII letters and digits)
_URI_COMPONENT_SAFE = "-_.!~*'()"


def _decode_uri_component(text: str) -> str:
    """JavaScript's decodeURIComponent, or the text unchanged where that would throw (as upstream does).

    Example::

        _decode_uri_component("r%C3%A9union"), _decode_uri_component("100%")   # ("réunion", "100%")
    """
    if _MALFORMED_ESCAPE.search(text):
        return text
    try:
        return unquote_to_bytes(text).decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return text


def backend_safe_room_name(name: str) -> str:
    """jitsi-meet's getBackendSafeRoomName: the MUC node of a room name (typed or percent-encoded).

    Example::

        backend_safe_room_name("Réunion d'équipe")    # "r%c3%a9union%20d'%c3%a9quipe"
    """
    decoded = unicodedata.normalize("NFKC", _decode_uri_component(name)).lower()
    try:
        encoded = quote(decoded, safe=_URI_COMPONENT_SAFE, encoding="utf-8", errors="strict")
    except UnicodeEncodeError:  # a lone surrogate: encodeURIComponent throws
        return ""
    return encoded.lower()


def is_room_key(key: str) -> bool:
    """Whether `key` has the form of a room key (what nginx accepts as a key from a client or a census).

    Example::

        is_room_key("r%c3%a9union"), is_room_key("R%C3%A9union")     # (True, False)
    """
    return bool(_KEY.match(key))


def room_key(segment: str) -> str | None:
    """The key of a room page's path segment (as sent, percent-encoded), or None when it is malformed
    or names no room jitsi-meet can join (nothing left, or a node prosody would refuse).

    Example::

        room_key("MyRoom"), room_key("my room"), room_key("%C3%89quipe")   # ("myroom", None, "%c3%a9quipe")
    """
    if _SIMPLE.match(segment):
        return segment.lower()
    if not _PAGE_SEGMENT.match(segment):
        return None
    key = backend_safe_room_name(_JITSI_EXCLUDED.sub("", segment))
    return key if _KEY.match(key) else None


def key_from_census(room_name: str) -> str | None:
    """The routing key of a prosody census entry ("node@conference.domain"), None if unroutable.

    The census reports the node as jitsi-meet joined it, which is the key already.

    Example::

        key_from_census("r%c3%a9union@conference.demo-1.meet.example.org")   # "r%c3%a9union"
    """
    node = room_name.split("@", 1)[0]
    return node if _KEY.match(node) else None


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
