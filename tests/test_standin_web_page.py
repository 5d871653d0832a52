"""The stand-in web page's room names, run in Node: the MUC node it joins for a page's path is jitsi-meet's
(excluded characters dropped, then getBackendSafeRoomName), the same as the test participant's reference
(tests/standins/xmpp_participant.py) and the front door's key. Its joining itself runs in real browsers
against real hosts: tests/test_browser_e2e.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from standins.xmpp_participant import page_room_node

from ensemble.frontdoor.rooms import room_key

BUNDLE = Path(__file__).parent.parent / "ensemble/standins/jitsi/web/libs/app.bundle.min.js"
# the bundle in a page that is still loading (it waits for DOMContentLoaded), then its room function
RUN = """
const vm = require('vm');
const page = {document: {readyState: 'loading', addEventListener() {}}};
page.window = page;
vm.runInNewContext(require('fs').readFileSync(process.argv[1], 'utf8'), page);
process.stdout.write(JSON.stringify(JSON.parse(process.argv[2]).map(p => page.standinRoomNode(p))));
"""
PATHS = ["/R%C3%A9union%20d'%C3%A9quipe", "/RE%CC%81UNION-D-%C3%89QUIPE", "/R%C3%A9union-d-%C3%A9quipe",
         "/a/b/Planning", "/100%25", "/bad%zz", "/%F0%9F%98%80Caf%C3%A9", "/x%E9y", "/%EF%BC%A1bc", "/"]


@pytest.mark.needs_tool("node")
def test_the_page_joins_the_node_jitsi_meet_joins():
    out = subprocess.run(["node", "-e", RUN, str(BUNDLE), json.dumps(PATHS)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    nodes = json.loads(out)
    assert nodes == [page_room_node(p.rsplit("/", 1)[1]) for p in PATHS]
    assert nodes[:3] == ["r%c3%a9union%20d%c3%a9quipe", "r%c3%a9union-d-%c3%a9quipe", "r%c3%a9union-d-%c3%a9quipe"]
    assert nodes[8] == "abc"  # NFKC: the full-width capital A
    # the front door's key of a path the landing page makes is the node the page joins
    assert room_key("R%C3%A9union-d-%C3%A9quipe") == nodes[2]
