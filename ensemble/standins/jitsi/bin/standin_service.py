#!/usr/bin/python3
"""TEST STAND-IN for Jitsi Videobridge and Jicofo (ensemble); not Jitsi's software.

One small program plays either service so a real Debian guest has something package-shaped to run
where the real Java services cannot be downloaded (download.jitsi.org is out of reach in tests).
It reads the HOCON file the deploy writes (refusing to start when it does not parse, like the real
services), logs which XMPP account it would use, answers the loopback REST endpoints ensemble reads,
and takes its occupancy numbers from prosody's room census so they agree with prosody.

Example:
    standin-jvb.py jvb --config /etc/jitsi/videobridge/jvb.conf --log /var/log/jitsi/jvb.log
    curl -s http://127.0.0.1:8080/colibri/stats
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import ssl
import sys
import threading
import time
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from xml.sax.saxutils import quoteattr

STANDIN_NOTICE = "TEST STAND-IN (ensemble), not Jitsi's software"
DEFAULT_CENSUS_URL = "http://127.0.0.1:5280/room-census"
log = logging.getLogger("standin")


# ---------------------------------------------------------------- HOCON (the subset Jitsi's files use)

class HoconError(ValueError):
    """The configuration file does not parse."""


_TOKEN = re.compile(r'''
    (?P<ws>[ \t\r]+|//[^\n]*|\#[^\n]*)
  | (?P<nl>\n)
  | (?P<punct>[{}\[\],=:])
  | (?P<plus>\+=)
  | (?P<string>"(?:[^"\\\n]|\\.)*")
  | (?P<unquoted>[^\s{}\[\],=:"#]+(?:[ \t]+[^\s{}\[\],=:"#/]+)*)
''', re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    """Split HOCON text into (kind, value) tokens; raise HoconError on stray characters.

    Example: _tokens('a { b = "x" }') -> [('unquoted','a'), ('punct','{'), ...]
    """
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            line = text.count("\n", 0, pos) + 1
            raise HoconError(f"line {line}: unexpected {text[pos:pos + 10]!r}")
        kind = m.lastgroup
        if kind == "string":
            out.append((kind, json.loads(m.group())))
        elif kind != "ws":
            out.append((kind, m.group()))
        pos = m.end()
    return out


class _Parser:
    """Recursive-descent reader for objects, arrays, quoted/unquoted values and dotted keys."""

    def __init__(self, tokens: list[tuple[str, str]]):
        self.toks, self.i = tokens, 0

    def peek(self) -> tuple[str, str]:
        while self.i < len(self.toks) and self.toks[self.i][0] == "nl":
            self.i += 1
        return self.toks[self.i] if self.i < len(self.toks) else ("eof", "")

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        self.i += 1
        return tok

    def parse_object_body(self, closing: str) -> dict:
        obj: dict = {}
        while True:
            kind, value = self.peek()
            if (kind, value) == ("punct", closing) or (closing == "" and kind == "eof"):
                self.i += 1
                return obj
            if kind == "punct" and value == ",":
                self.i += 1
                continue
            if kind not in ("string", "unquoted"):
                raise HoconError(f"expected a key, found {value or kind!r}")
            self.i += 1
            path = [value] if kind == "string" else value.split(".")
            nxt = self.peek()
            if nxt == ("punct", "{"):
                self.i += 1
                val = self.parse_object_body("}")
            elif nxt in (("punct", "="), ("punct", ":"), ("plus", "+=")):
                self.i += 1
                val = self.parse_value()
            else:
                raise HoconError(f"expected '=' or '{{' after key {'.'.join(path)!r}")
            _merge(obj, path, val)

    def parse_value(self):
        kind, value = self.take()
        if (kind, value) == ("punct", "{"):
            return self.parse_object_body("}")
        if (kind, value) == ("punct", "["):
            items = []
            while self.peek() != ("punct", "]"):
                if self.peek() == ("punct", ","):
                    self.i += 1
                    continue
                if self.peek()[0] == "eof":
                    raise HoconError("unterminated array")
                items.append(self.parse_value())
            self.i += 1
            return items
        if kind == "string":
            return value
        if kind == "unquoted":
            return {"true": True, "false": False, "null": None}.get(value, _number_or_text(value))
        raise HoconError(f"expected a value, found {value or kind!r}")


def _number_or_text(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def _merge(obj: dict, path: list[str], val) -> None:
    for key in path[:-1]:
        obj = obj.setdefault(key, {})
        if not isinstance(obj, dict):
            raise HoconError(f"key {key!r} is both a value and an object")
    last = path[-1]
    if isinstance(val, dict) and isinstance(obj.get(last), dict):
        for k, v in val.items():
            _merge(obj[last], [k], v)
    else:
        obj[last] = val


def parse_hocon(text: str) -> dict:
    """Parse the HOCON subset of Jitsi's jvb.conf / jicofo.conf into nested dicts.

    Example: parse_hocon('videobridge { ice.udp.port = 10000 }') -> {'videobridge': {'ice': {'udp': {'port': 10000}}}}
    """
    tokens = _tokens(text)
    parser = _Parser(tokens)
    if parser.peek() == ("punct", "{"):
        parser.take()
        result = parser.parse_object_body("}")
        if parser.peek()[0] != "eof":
            raise HoconError("text after the closing brace")
        return result
    return parser.parse_object_body("")


def lookup(conf: dict, dotted: str, default=None):
    """Value at a dotted path, or default. Example: lookup({'a': {'b': 1}}, 'a.b') -> 1"""
    node = conf
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return default
        node = node[key]
    return node


def load_config(path: str) -> dict:
    """Read and parse a HOCON file; a missing file is an empty config (the services use defaults)."""
    try:
        with open(path, encoding="utf-8") as f:
            return parse_hocon(f.read())
    except FileNotFoundError:
        log.warning("%s is missing: using defaults", path)
        return {}


# ---------------------------------------------------------------- facts derived from the configuration

def jvb_xmpp_accounts(conf: dict) -> list[dict]:
    """The XMPP client configs of a jvb.conf. Example: [{'name': 'shard', 'USERNAME': 'jvb', ...}]"""
    configs = lookup(conf, "videobridge.apis.xmpp-client.configs", {}) or {}
    return [dict(v, name=k) for k, v in configs.items() if isinstance(v, dict)]


def jvb_domain(conf: dict) -> str | None:
    """The shard's public domain, from the XMPP DOMAIN ('auth.D' -> 'D') or the brewery MUC JID."""
    for account in jvb_xmpp_accounts(conf):
        domain = str(account.get("DOMAIN", ""))
        if domain.startswith("auth."):
            return domain[len("auth."):]
        muc = str(account.get("MUC_JIDS", ""))
        if "@internal.auth." in muc:
            return muc.split("@internal.auth.", 1)[1].split(",")[0]
    return None


def jicofo_domain(conf: dict) -> str | None:
    """The shard's public domain from jicofo.conf (jicofo.xmpp.client.xmpp-domain)."""
    return lookup(conf, "jicofo.xmpp.client.xmpp-domain")


def domain_from_env_file(path: str) -> str | None:
    """JVB_HOSTNAME=... from the packages' shell-style /etc/jitsi/*/config file, when present."""
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                m = re.match(r'\s*(?:JVB_HOSTNAME|JICOFO_HOSTNAME)\s*=\s*"?([^"\s]+)"?', line)
                if m:
                    return m.group(1)
    except FileNotFoundError:
        pass
    return None


# ---------------------------------------------------------------- occupancy from prosody's census

def read_census(url: str, host: str | None, timeout: float = 2.0) -> list[dict] | None:
    """Rooms from prosody's /room-census (Host header = shard domain); None when unreachable."""
    request = urllib.request.Request(url, headers={"Host": host} if host else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return list(json.load(response).get("room_census", []))
    except (OSError, ValueError) as exc:
        log.warning("room census at %s (Host %s) unreadable: %s", url, host, exc)
        return None


def occupancy(rooms: list[dict] | None) -> dict:
    """Conference numbers from census rooms. Example: occupancy([{'participants': 3}]) -> conferences 1, ..."""
    sizes = [int(r.get("participants", 0)) for r in rooms or []]
    live = [n for n in sizes if n > 0]
    return {"conferences": len(live), "participants": sum(live), "largest_conference": max(live, default=0)}



# ---------------------------------------------------------------- XMPP login (like the real services)

NS_STREAM = "http://etherx.jabber.org/streams"
NS_TLS = "urn:ietf:params:xml:ns:xmpp-tls"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"


class XmppError(Exception):
    """The XMPP server refused or broke the session."""


class XmppStream:
    """One c2s connection: STARTTLS when offered, SASL SCRAM-SHA-1, resource binding, stanzas in and out.

    Example:
        stream = XmppStream("127.0.0.1", 5222, "auth.meet.example.org", verify_tls=True)
        stream.login("jvb", "secret")   # raises XmppError when prosody refuses the account
    """

    def __init__(self, host: str, port: int, domain: str, verify_tls: bool, timeout: float = 10.0):
        self.domain, self.verify_tls = domain, verify_tls
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection((host, port), timeout=timeout)
        self.jid = ""
        self.pending: list[ET.Element] = []
        self.send_lock = threading.Lock()

    def send(self, text: str) -> None:
        with self.send_lock:
            self.sock.sendall(text.encode())

    def open_stream(self) -> ET.Element:
        """(Re)start the stream and return its features."""
        self.parser = ET.XMLPullParser(events=("start", "end"))
        self.depth = 0
        self.send(f"<?xml version='1.0'?><stream:stream to={quoteattr(self.domain)} xmlns='jabber:client' "
                  f"xmlns:stream='{NS_STREAM}' version='1.0'>")
        features = self.next_stanza()
        if features.tag != f"{{{NS_STREAM}}}features":
            raise XmppError(f"expected stream features, got {features.tag}")
        return features

    def next_stanza(self) -> ET.Element:
        """The next complete top-level element of the stream (blocking; socket timeout applies)."""
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise XmppError("the server closed the stream")
            self.parser.feed(data)
            for event, elem in self.parser.read_events():
                if event == "start":
                    self.depth += 1
                else:
                    self.depth -= 1
                    if self.depth == 1:
                        self.pending.append(elem)
                    elif self.depth == 0:
                        raise XmppError("the server ended the stream")
        stanza = self.pending.pop(0)
        if stanza.tag == f"{{{NS_STREAM}}}error":
            raise XmppError("stream error: " + ", ".join(child.tag.split("}")[-1] for child in stanza))
        return stanza

    def starttls(self) -> None:
        self.send(f"<starttls xmlns='{NS_TLS}'/>")
        if self.next_stanza().tag != f"{{{NS_TLS}}}proceed":
            raise XmppError("STARTTLS refused")
        context = ssl.create_default_context()
        if not self.verify_tls:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        self.sock = context.wrap_socket(self.sock, server_hostname=self.domain)

    def login(self, username: str, password: str) -> str:
        """STARTTLS (if offered), SCRAM-SHA-1, bind; returns the full JID."""
        features = self.open_stream()
        if features.find(f"{{{NS_TLS}}}starttls") is not None:
            self.starttls()
            features = self.open_stream()
        mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        if "SCRAM-SHA-1" not in mechanisms:
            raise XmppError(f"SCRAM-SHA-1 not offered (offered: {', '.join(mechanisms) or 'none'})")
        scram_sha1(self, username, password)
        self.open_stream()
        self.send(f"<iq type='set' id='bind'><bind xmlns='{NS_BIND}'><resource>{uuid.uuid4().hex[:12]}</resource>"
                  "</bind></iq>")
        result = self.next_stanza()
        jid = result.find(f".//{{{NS_BIND}}}jid")
        if result.get("type") != "result" or jid is None:
            raise XmppError("resource binding failed")
        self.jid = jid.text or ""
        self.send("<presence/>")
        return self.jid

    def join_muc(self, room_jid: str, nick: str) -> None:
        """Join (or create, for an admin) a MUC room; raises XmppError when the room refuses."""
        self.send(f"<presence to={quoteattr(f'{room_jid}/{nick}')}><x xmlns='{NS_MUC}'/></presence>")
        while True:
            stanza = self.next_stanza()
            # prosody normalises the room's node and domain to lower case
            if not stanza.tag.endswith("presence") or \
                    not (stanza.get("from") or "").lower().startswith(room_jid.lower() + "/"):
                continue
            if stanza.get("type") == "error":
                raise XmppError(f"joining {room_jid} refused")
            if any(s.get("code") == "110" for s in stanza.iter(f"{{{NS_MUC_USER}}}status")):
                return

    def close(self) -> None:
        try:
            self.send("</stream:stream>")
        except OSError:
            pass
        self.sock.close()


def scram_sha1(stream: XmppStream, username: str, password: str) -> None:
    """SASL SCRAM-SHA-1 (RFC 5802) over an open stream; verifies the server's signature too."""
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    name = username.replace("=", "=3D").replace(",", "=2C")
    nonce = b64(os.urandom(18))
    client_first_bare = f"n={name},r={nonce}"
    stream.send(f"<auth xmlns='{NS_SASL}' mechanism='SCRAM-SHA-1'>{b64(b'n,,' + client_first_bare.encode())}</auth>")
    challenge = stream.next_stanza()
    if challenge.tag != f"{{{NS_SASL}}}challenge":
        raise XmppError("authentication refused")
    server_first = base64.b64decode(challenge.text or "").decode()
    fields = dict(item.split("=", 1) for item in server_first.split(","))
    if not fields.get("r", "").startswith(nonce):
        raise XmppError("SCRAM: bad server nonce")
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha1).digest()
    final_bare = f"c={b64(b'n,,')},r={fields['r']}"
    auth_message = f"{client_first_bare},{server_first},{final_bare}".encode()
    signature = hmac.new(hashlib.sha1(client_key).digest(), auth_message, hashlib.sha1).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))  # noqa: B905 (no strict= in Python 3.9)
    stream.send(f"<response xmlns='{NS_SASL}'>{b64(f'{final_bare},p={b64(proof)}'.encode())}</response>")
    outcome = stream.next_stanza()
    if outcome.tag != f"{{{NS_SASL}}}success":
        reason = next((child.tag.split("}")[-1] for child in outcome), "failure")
        raise XmppError(f"authentication failed ({reason})")
    server_key = hmac.new(salted, b"Server Key", hashlib.sha1).digest()
    expected = b64(hmac.new(server_key, auth_message, hashlib.sha1).digest())
    if base64.b64decode(outcome.text or "").decode() != f"v={expected}":
        raise XmppError("SCRAM: the server's signature does not match")


class XmppPresence:
    """Keep the service logged in (and in its MUC) like the real one, reconnecting after failures.

    Example:
        XmppPresence(account).start(stopping)   # account: host, port, domain, username, password, muc, nick
    """

    def __init__(self, account: dict, retry_seconds: float = 5.0, empty_room_seconds: float = 60.0):
        self.account, self.retry_seconds, self.empty_room_seconds = account, retry_seconds, empty_room_seconds
        self.connected = False
        self.error = "not tried yet"
        self.stream: XmppStream | None = None
        self.rooms: dict[str, dict] = {}  # conference rooms the focus sits in: joined event, occupants, since

    def request_room(self, room_jid: str, timeout: float = 5.0) -> bool:
        """Like jicofo on a conference request: the focus joins (so creates) the room; True once it is in."""
        if not self.connected or not re.fullmatch(r"[^@/\s]+@[^@/\s]+", room_jid):
            return False
        room_jid = room_jid.lower()  # prosody normalises room JIDs to lower case
        room = self.rooms.get(room_jid)
        if room is None:
            room = self.rooms[room_jid] = {"joined": threading.Event(), "occupants": set(), "since": time.time(),
                                           "seen": False}
            self.stream.send(f"<presence to={quoteattr(room_jid + '/focus')}><x xmlns='{NS_MUC}'/></presence>")
        return room["joined"].wait(timeout)

    def _on_room_presence(self, stanza: ET.Element) -> None:
        """Track who is in the focus's rooms; leave a room once its last participant left (as jicofo does)."""
        room_jid, _, nick = (stanza.get("from") or "").partition("/")
        room_jid = room_jid.lower()
        room = self.rooms.get(room_jid)
        if room is None:
            return
        if any(st.get("code") == "110" for st in stanza.iter(f"{{{NS_MUC_USER}}}status")):
            room["joined"].set()
        elif stanza.get("type") == "unavailable":
            room["occupants"].discard(nick)
        elif stanza.get("type") != "error":
            room["occupants"].add(nick)
            room["seen"] = True
        if stanza.get("type") == "error" or (room["seen"] and not room["occupants"]):
            self._leave(room_jid)

    def _leave_idle_rooms(self) -> None:
        for room_jid, room in list(self.rooms.items()):
            if not room["occupants"] and time.time() - room["since"] > self.empty_room_seconds:
                self._leave(room_jid)

    def _leave(self, room_jid: str) -> None:
        self.rooms.pop(room_jid, None)
        self.stream.send(f"<presence type='unavailable' to={quoteattr(room_jid + '/focus')}/>")
        log.info("focus left %s", room_jid)

    def status(self) -> dict:
        return {"connected": self.connected, "jid": self.stream.jid if self.connected and self.stream else None,
                "error": None if self.connected else self.error}

    def start(self, stopping: threading.Event) -> None:
        threading.Thread(target=self._run, args=(stopping,), daemon=True).start()

    def _run(self, stopping: threading.Event) -> None:
        a = self.account
        while not stopping.is_set():
            try:
                self.stream = XmppStream(a["host"], a["port"], a["domain"], a["verify_tls"])
                jid = self.stream.login(a["username"], a["password"])
                if a.get("muc"):
                    self.stream.join_muc(a["muc"], a["nick"])
                self.connected, self.error = True, None
                log.info("XMPP: logged in as %s%s", jid, f", joined {a['muc']} as {a['nick']}" if a.get("muc") else "")
                self._hold(stopping)
            except (OSError, XmppError, ET.ParseError, ValueError, KeyError) as exc:
                if self.connected or self.error != str(exc):
                    log.warning("XMPP %s@%s via %s:%s: %s", a["username"], a["domain"], a["host"], a["port"], exc)
                self.connected, self.error = False, str(exc) or type(exc).__name__
                self.rooms.clear()
                if self.stream:
                    self.stream.close()
            stopping.wait(self.retry_seconds)

    def _hold(self, stopping: threading.Event) -> None:
        """Stay connected: answer pings, send a keepalive space when idle."""
        self.stream.sock.settimeout(10.0)
        while not stopping.is_set():
            try:
                stanza = self.stream.next_stanza()
            except (TimeoutError, socket.timeout):  # noqa: UP041 (distinct before Python 3.10: Debian 11)
                self.stream.send(" ")
                self._leave_idle_rooms()
                continue
            if stanza.tag.endswith("presence"):
                self._on_room_presence(stanza)
            elif stanza.tag.endswith("iq") and stanza.get("type") == "get":
                self.stream.send(f"<iq type='result' id={quoteattr(stanza.get('id') or '')} "
                                 f"to={quoteattr(stanza.get('from') or self.account['domain'])}/>")


def jvb_xmpp_login(conf: dict) -> dict | None:
    """The first XMPP client config of a jvb.conf as a login (host, port, domain, user, password, MUC, nick)."""
    for account in jvb_xmpp_accounts(conf):
        if account.get("USERNAME") and account.get("PASSWORD"):
            return {"host": str(account.get("HOSTNAME", "localhost")), "port": int(account.get("PORT", 5222)),
                    "domain": str(account.get("DOMAIN", "")), "username": str(account["USERNAME"]),
                    "password": str(account["PASSWORD"]),
                    "muc": str(account.get("MUC_JIDS", "")).split(",")[0].strip(),
                    "nick": str(account.get("MUC_NICKNAME") or uuid.uuid4()),
                    "verify_tls": not account.get("DISABLE_CERTIFICATE_VERIFICATION", False)}
    return None


def jicofo_xmpp_login(conf: dict) -> dict | None:
    """jicofo.xmpp.client as a login; jicofo also watches the bridges' brewery MUC."""
    client = lookup(conf, "jicofo.xmpp.client", {}) or {}
    if not client.get("username") or not client.get("password") or client.get("enabled") is False:
        return None
    return {"host": str(client.get("hostname", "localhost")), "port": int(client.get("port", 5222)),
            "domain": str(client.get("domain", "")), "username": str(client["username"]),
            "password": str(client["password"]), "muc": lookup(conf, "jicofo.bridge.brewery-jid"), "nick": "focus",
            "verify_tls": not client.get("disable-certificate-verification", False)}


# ---------------------------------------------------------------- the two services

class Service:
    """State shared by the HTTP handler: the role, its config and what the census says."""

    def __init__(self, role: str, conf: dict, census_url: str, domain: str | None, capacity: int,
                 xmpp: XmppPresence | None = None, jvb_health_url: str = "http://127.0.0.1:8080/about/health"):
        self.role, self.conf, self.census_url, self.domain = role, conf, census_url, domain
        self.capacity, self.xmpp, self.jvb_health_url = capacity, xmpp, jvb_health_url
        self.drain = False
        self.graceful_shutdown = False
        self.server: ThreadingHTTPServer | None = None
        self.stopping = threading.Event()

    def stop(self) -> None:
        """Stop serving (once), from any thread."""
        if not self.stopping.is_set():
            self.stopping.set()
            threading.Thread(target=self.server.shutdown, daemon=True).start()

    def jvb_stats(self) -> dict:
        rooms = read_census(self.census_url, self.domain)
        numbers = occupancy(rooms)
        stress = round(numbers["participants"] / self.capacity, 3) if self.capacity else 0.0
        return dict(numbers, endpoints=numbers["participants"], stress_level=stress, drain=self.drain,
                    graceful_shutdown=self.graceful_shutdown, healthy=True, census_readable=rooms is not None,
                    standin_xmpp=self.xmpp_status(), standin=STANDIN_NOTICE)

    def xmpp_status(self) -> dict | None:
        return self.xmpp.status() if self.xmpp else None

    def healthy(self) -> bool:
        """jicofo is unhealthy without its XMPP session (as the real one); the bridge reports its own health."""
        return self.role != "jicofo" or self.xmpp is None or self.xmpp.connected

    def jicofo_stats(self) -> dict:
        numbers = occupancy(read_census(self.census_url, self.domain))
        bridge_up = _http_ok(self.jvb_health_url)
        selector = {"bridge_count": 1, "operational_bridge_count": int(bridge_up), "in_shutdown_bridge_count": 0}
        return dict(numbers, bridge_selector=selector, standin_xmpp=self.xmpp_status(), standin=STANDIN_NOTICE)

    def maybe_finish_graceful_shutdown(self) -> None:
        """A gracefully shutting down bridge exits once no participant is left."""
        if self.graceful_shutdown and occupancy(read_census(self.census_url, self.domain))["participants"] == 0:
            log.info("graceful shutdown: no participants left, exiting")
            self.stop()


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1.0) as response:
            return response.status == 200
    except OSError:
        return False


class Handler(BaseHTTPRequestHandler):
    service: Service  # set on the subclass made by serve()

    def log_message(self, fmt: str, *args) -> None:
        log.info("%s %s", self.address_string(), fmt % args)

    def reply(self, status: int, body: dict | None = None) -> None:
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def read_json(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            return json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            return {}

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        svc, path = self.service, self.path.split("?", 1)[0]
        if path == "/about/health":
            return self.reply(200) if svc.healthy() else self.reply(500, {"error": "XMPP", **svc.xmpp_status()})
        if path == "/about/version":
            return self.reply(200, {"name": svc.role, "version": "standin", "os": STANDIN_NOTICE})
        if svc.role == "jvb" and path == "/colibri/stats":
            if not lookup(svc.conf, "videobridge.apis.rest.enabled", False):
                return self.reply(404, {"error": "videobridge.apis.rest.enabled is false"})
            return self.reply(200, svc.jvb_stats())
        if svc.role == "jicofo" and path == "/stats":
            return self.reply(200, svc.jicofo_stats())
        return self.reply(404, {"error": "not found"})

    def do_POST(self) -> None:  # noqa: N802
        svc, path = self.service, self.path.split("?", 1)[0]
        if svc.role == "jvb" and path in ("/colibri/drain/enable", "/colibri/drain/disable"):
            svc.drain = path.endswith("enable")
            log.info("drain %s", "enabled" if svc.drain else "disabled")
            return self.reply(200)
        if svc.role == "jvb" and path == "/colibri/shutdown":
            if not lookup(svc.conf, "videobridge.rest.shutdown.enabled", False):
                return self.reply(404, {"error": "videobridge.rest.shutdown.enabled is false"})
            graceful = str(self.read_json().get("graceful-shutdown", "false")).lower() == "true"
            self.reply(200)
            if graceful:
                svc.graceful_shutdown = True
                log.info("graceful shutdown requested")
                svc.maybe_finish_graceful_shutdown()
            else:
                log.info("shutdown requested")
                svc.stop()
            return None
        if svc.role == "jicofo" and path == "/conference-request/v1":
            room = str(self.read_json().get("room", ""))
            ready = svc.xmpp.request_room(room) if svc.xmpp else True
            proxy = lookup(svc.conf, "jicofo.xmpp.client.client-proxy") or (f"focus.{svc.domain}" if svc.domain else "")
            return self.reply(200, {"ready": ready, "focusJid": proxy, "vnode": None, "room": room,
                                    "properties": {"standin": "true"}})
        return self.reply(404, {"error": "not found"})


def bind_udp(port: int) -> socket.socket:
    """Hold the media port like the real bridge, so firewall and port checks mean something."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    return sock


def serve(service: Service, host: str, port: int, udp_port: int | None) -> None:
    """Run the REST server until shutdown (and the UDP socket for the bridge)."""
    udp = bind_udp(udp_port) if udp_port else None
    handler = type("BoundHandler", (Handler,), {"service": service})
    service.server = ThreadingHTTPServer((host, port), handler)
    service.server.daemon_threads = True
    log.info("%s listening on %s:%d%s", service.role, host, port, f", UDP {udp_port}" if udp else "")
    if service.role == "jvb":
        threading.Thread(target=_watch_graceful, args=(service,), daemon=True).start()
    try:
        service.server.serve_forever()
    finally:
        service.server.server_close()
        if udp:
            udp.close()


def _watch_graceful(service: Service) -> None:
    """Poll the census while a graceful shutdown waits for the last participant to leave."""
    while not service.stopping.wait(2.0):
        service.maybe_finish_graceful_shutdown()


# ---------------------------------------------------------------- entry point

ROLE_DEFAULTS = {
    "jvb": {"config": "/etc/jitsi/videobridge/jvb.conf", "env_file": "/etc/jitsi/videobridge/config", "port": 8080,
            "log": "/var/log/jitsi/jvb.log"},
    "jicofo": {"config": "/etc/jitsi/jicofo/jicofo.conf", "env_file": "/etc/jitsi/jicofo/config", "port": 8888,
               "log": "/var/log/jitsi/jicofo.log"},
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", choices=sorted(ROLE_DEFAULTS))
    parser.add_argument("--config", help="HOCON file (default: the package's path)")
    parser.add_argument("--env-file", help="shell-style config file with JVB_HOSTNAME (default: the package's)")
    parser.add_argument("--log", help="log file ('-' = stderr)")
    parser.add_argument("--host", default=None, help="REST address (default from the config, else 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help="REST port")
    parser.add_argument("--udp-port", type=int, default=None, help="JVB media port (0 = do not bind)")
    parser.add_argument("--census-url", default=DEFAULT_CENSUS_URL)
    parser.add_argument("--domain", default=None, help="shard domain sent as Host to the census")
    parser.add_argument("--capacity", type=int, default=200, help="participants at stress_level 1.0")
    parser.add_argument("--no-xmpp", action="store_true", help="do not log in to prosody")
    parser.add_argument("--jvb-health-url", default="http://127.0.0.1:8080/about/health",
                        help="jicofo: the bridge health it reports in /stats")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    defaults = ROLE_DEFAULTS[args.role]
    log_path = args.log or defaults["log"]
    handler = logging.StreamHandler() if log_path == "-" else logging.FileHandler(log_path)
    logging.basicConfig(level=logging.INFO, handlers=[handler],
                        format="%(asctime)s " + args.role.upper() + " %(levelname)s: %(message)s")
    log.info("starting: %s", STANDIN_NOTICE)
    config_path = args.config or defaults["config"]
    try:
        conf = load_config(config_path)
    except HoconError as exc:
        log.error("%s does not parse: %s", config_path, exc)
        return 1
    env_file = args.env_file or defaults["env_file"]
    if args.role == "jvb":
        domain = args.domain or jvb_domain(conf) or domain_from_env_file(env_file)
        for account in jvb_xmpp_accounts(conf):
            log.info("XMPP client %s: would log in as %s@%s on %s (MUC %s as %s)", account["name"],
                     account.get("USERNAME"), account.get("DOMAIN"), account.get("HOSTNAME"),
                     account.get("MUC_JIDS"), account.get("MUC_NICKNAME"))
        login = jvb_xmpp_login(conf)
        host = args.host or lookup(conf, "videobridge.http-servers.private.host", "127.0.0.1")
        port = args.port or int(lookup(conf, "videobridge.http-servers.private.port", defaults["port"]))
        udp_port = args.udp_port if args.udp_port is not None else int(lookup(conf, "videobridge.ice.udp.port", 10000))
    else:
        domain = args.domain or jicofo_domain(conf) or domain_from_env_file(env_file)
        client = lookup(conf, "jicofo.xmpp.client", {}) or {}
        log.info("XMPP client: would log in as %s@%s (client proxy %s); brewery %s", client.get("username"),
                 client.get("domain"), client.get("client-proxy"), lookup(conf, "jicofo.bridge.brewery-jid"))
        login = jicofo_xmpp_login(conf)
        host = args.host or str(lookup(conf, "jicofo.rest.host", "127.0.0.1"))
        port = args.port or int(lookup(conf, "jicofo.rest.port", defaults["port"]))
        udp_port = None
    log.info("shard domain for the census: %s", domain)
    xmpp = XmppPresence(login) if login and not args.no_xmpp else None
    service = Service(args.role, conf, args.census_url, domain, args.capacity, xmpp, args.jvb_health_url)
    if xmpp:
        xmpp.start(service.stopping)
    try:
        serve(service, host, port, udp_port or None)
    except OSError as exc:
        log.error("cannot listen: %s", exc)
        return 1
    log.info("stopped")
    return 0


if __name__ == "__main__":
    os.umask(0o027)
    sys.exit(main())
