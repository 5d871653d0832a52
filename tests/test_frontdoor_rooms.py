"""Room keys: the front door's key of a room page equals the MUC node jitsi-meet joins, for every spelling.

Three implementations must agree on a table of names (accents, accented capitals, NFKC-equivalent
spellings, emoji, typed or percent-encoded in any case) and on thousands of random ones:
- upstream's algorithm, re-stated here in JavaScript and run by node (V8, the engine of Chromium):
  jitsi-meet's parseURIString drops ``:?#[]@!$&'()*+,;=></"`` from the path segment, then
  getBackendSafeRoomName decodes (if it decodes), NFKC-normalises, lower-cases, encodeURIComponent's
  and lower-cases (react/features/base/util/uri.ts);
- the front door's canonicalising page (templates/frontdoor/webroot/_ensemble/room.js), run in node
  with a stand-in `window`;
- Python's `ensemble.frontdoor.rooms.room_key` (pins, tests, the refresher).
"""

from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import unicodedata
from pathlib import Path
from urllib.parse import quote

import pytest

from ensemble.frontdoor.rooms import (
    PAGE_SEGMENT_PATTERN,
    backend_safe_room_name,
    is_room_key,
    key_from_census,
    room_key,
)

NODE = shutil.which("node") or "/usr/bin/node"
ROOM_JS = Path(__file__).resolve().parents[1] / "templates/frontdoor/webroot/_ensemble/room.js"
pytestmark = pytest.mark.needs_tool("node")

# Upstream's algorithm (re-stated, not copied) and room.js, each applied to raw path segments.
NODE_SCRIPT = r"""
const fs = require('fs');
const vm = require('vm');
const segments = JSON.parse(fs.readFileSync(0, 'utf8'));
function upstream(segment) {
    let room = segment.replace(/[:?#[\]@!$&'()*+,;=></"]/g, '');
    if (!room) { return ''; }
    try { room = decodeURIComponent(room); } catch (e) { /* kept as it is */ }
    return encodeURIComponent(room.normalize('NFKC').toLowerCase()).toLowerCase();
}
const roomJs = fs.readFileSync(process.argv[1], 'utf8');
function canonicalised(segment) {
    let target = null;
    const location = { pathname: '/' + segment, search: '', hash: '',
                       replace: url => { target = url; } };
    vm.runInNewContext(roomJs, { window: { location } });
    if (target === '/') { return ''; }
    const match = /^\/([^?\/]*)\?(?:.*&)?ensemble_room=([^&#]*)$/.exec(target);
    if (!match) { return 'REFUSED ' + target; }
    if (/[:@!$&'()*+,;=]/.test(match[1])) { return 'NOT CLEANED ' + target; }
    return match[2];
}
const out = segments.map(s => { let u; try { u = upstream(s); } catch (e) { u = 'THROWS'; }
                                 return [u, canonicalised(s)]; });
process.stdout.write(JSON.stringify(out));
"""

TYPED = [
    "Réunion d'équipe", "RÉUNION D'ÉQUIPE", "réunion d'équipe", "Re\u0301union d'e\u0301quipe",
    "Équipe", "équipe", "ÉQUIPE", "E\u0301quipe", "Ça va", "À la Une", "Œuvre", "cœur", "Noël", "Ä Ö Ü ẞ straße",
    "ﬁnance", "finance", "Ｒéunion", "x²", "①②", "ℌello", "ΟΔΟΣ", "İstanbul", "ǅemal", "Ⅻ",
    "🎉 fête", "👍🏽", "👨‍👩‍👧", "日本語の会議", "Встреча", "اجتماع", "한국어", "100%", "50% off", "a+b=c",
    "MyRoom", "ImpossibleCrimesRefuseAlright", "team_4-q", "a~b", "semi;colon", "at@sign", "paren(s)",
]


def spellings(name: str) -> list[str]:
    """How a browser may send a typed name as a path segment: encoded in any case, NFC or NFD, or with
    only non-ASCII encoded (the address bar keeps ASCII punctuation such as the apostrophe)."""
    encoded = quote(name, safe="")
    forms = {encoded, encoded.lower(), quote(unicodedata.normalize("NFD", name), safe=""),
             quote(name, safe="'()!*~")}
    return sorted(forms)


def node_keys(segments: list[str]) -> list[tuple[str, str]]:
    result = subprocess.run([NODE, "-e", NODE_SCRIPT, str(ROOM_JS)], input=json.dumps(segments),
                            capture_output=True, text=True, check=True, timeout=120)
    return [tuple(pair) for pair in json.loads(result.stdout)]


def python_key(segment: str) -> str:
    key = room_key(segment)
    return "" if key is None else key


def test_table_of_names_upstream_room_js_and_python_agree():
    segments = [s for name in TYPED for s in spellings(name)]
    for segment, (upstream, from_page) in zip(segments, node_keys(segments), strict=True):
        if not is_room_key(upstream):  # nothing left, or a node prosody refuses (an apostrophe from %27)
            assert room_key(segment) is None or room_key(segment) == upstream, segment
            continue
        assert from_page == upstream == python_key(segment), segment


def test_every_spelling_of_a_room_has_one_key():
    groups = [
        ["Réunion d'équipe", "RÉUNION D'ÉQUIPE", "réunion d'équipe", "Re\u0301union d'E\u0301QUIPE"],
        ["Équipe", "équipe", "ÉQUIPE", "E\u0301quipe", "e\u0301QUIPE"],
        ["ﬁnance", "finance", "FINANCE", "Ｆｉｎａｎｃｅ"],
        ["Straße", "STRASSE".lower().replace("ss", "ß")],
    ]
    for group in groups:
        # an apostrophe sent as %27 survives into the node, which prosody refuses: browsers send it raw
        keys = {python_key(s) for name in group for s in spellings(name) if "%27" not in s}
        assert len(keys) == 1, (group, keys)
    assert python_key("R%C3%A9union%20d'%C3%A9quipe") == "r%c3%a9union%20d%c3%a9quipe"  # the apostrophe goes
    assert python_key("%C3%89quipe") == python_key("%c3%a9quipe") == "%c3%a9quipe"
    assert python_key("%F0%9F%8E%89") == "%f0%9f%8e%89"


def test_random_names_agree_with_upstream():
    rng = random.Random(9)
    pool = ("abcXYZ019-_~ '()!*%é" "ÉàÀçÇœŒßẞﬁ²①ΣσςİıǅＲ\u0301\u0308" "🎉👍🏽日本" "\u200d")
    names = ["".join(rng.choice(pool) for _ in range(rng.randint(1, 14))) for _ in range(1000)]
    segments = [rng.choice(spellings(name)) for name in names]
    segments += ["%E9", "%C3", "%zz", "%", "a%2", "%25C3%25A9", "%41%42", "%ED%A0%80"]  # broken or odd escapes
    for segment, (upstream, from_page) in zip(segments, node_keys(segments), strict=True):
        if re.search(r"%(?![0-9A-Fa-f]{2})", segment):
            assert room_key(segment) is None, segment  # nginx answers 400 to a broken escape in a path
        elif is_room_key(upstream):
            assert from_page == upstream == python_key(segment), segment
        else:
            assert room_key(segment) is None, segment


def test_census_nodes_are_keys_as_reported():
    for name in TYPED:
        node = backend_safe_room_name(name)
        if is_room_key(node):
            assert key_from_census(f"{node}@conference.demo-1.meet.example.org") == node
    assert key_from_census("r%c3%a9union%20d%c3%a9quipe@conference.s") == "r%c3%a9union%20d%c3%a9quipe"
    for junk in ("Réunion@conference.s", "R%C3%A9union@conference.s", "a b@conference.s", "@conference.s",
                 "~x@conference.s", "a'b@conference.s"):
        assert key_from_census(junk) is None, junk


NEAR_MISSES = ("a" * 40 + "+", "a" * 40 + "[", "%aa" * 30 + "%", "a" * 1000 + "A")  # valid but the last char


@pytest.mark.parametrize("near_miss", NEAR_MISSES)
def test_a_name_that_almost_matches_is_refused_at_once(near_miss):
    """The key and page patterns take one character or one escape per repetition: with `(?:[...]+|%xx)+`,
    "a" * 40 + "+" backtracked for hours (the refresher reads such names from every census). A hang is
    turned into a failure by an alarm; no time is measured."""
    import signal

    def hung(*_):
        raise AssertionError(f"the room patterns backtrack on {near_miss[:20]}...")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        assert key_from_census(f"{near_miss}@conference.demo-1.meet.example.org") is None
        assert not is_room_key(near_miss)
        assert not re.fullmatch(PAGE_SEGMENT_PATTERN, near_miss[:-1] + "[")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
