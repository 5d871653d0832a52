"""A real Jitsi Meet participant for tests (a test CLIENT, no server stand-in): joins a room on a shard
the way jitsi-meet's web app does, through the shard's public nginx, and stays in it until `leave()`.

Signalling only, no media: what prosody's room census (the front door's source of occupancy) counts.
Standard library only. The sequence follows jitsi-meet + lib-jitsi-meet (checked against their sources,
2025: react/features/base/connection/actions.any.ts `constructOptions`/`_connectInternal`,
JitsiConnection.connect, modules/xmpp/moderator.ts, xmpp.ts, XmppConnection.ts, ChatRoom.ts):

1. GET the room's page `https://<host>/<room>` (redirects followed, as a browser does) and read the
   `config` the page carries (index.html includes config.js); `/config.js?room=` when it carries none.
2. The room's backend-safe name (`backend_safe_room_name`: decode, NFKC, lower-case, encodeURIComponent)
   is appended as `?room=<name>` to the service URL (config.websocket, else config.bosh; `preferBosh`
   picks BOSH) and to config.conferenceRequestUrl.
3. With a conferenceRequestUrl, the conference request comes FIRST: POST JSON
   `{"machineUid", "properties": {"rtcstatsEnabled": false, "visitors-version": 1}, "room": "<node>@<muc>"}`
   (jicofo's focus joins, so creates, the room; prosody forbids others to create it); `ready: false` is
   retried with an exponential back-off (1 s, 2 s, 4 s ...).
4. Then XMPP over the service URL: WebSocket (RFC 7395, subprotocol `xmpp`) or BOSH (XEP-0124/0206),
   SASL ANONYMOUS on config.hosts.domain, stream restart, resource bind, XEP-0198 stream management with
   resumption (WebSocket only, as lib-jitsi-meet).
5. MUC presence to `<node>@<config.hosts.muc>/<8 random hex digits>` with `<x xmlns=muc>` (carrying
   `<billingid>` when the conference request went over HTTP).
6. Keep-alive while joined: XEP-0199 ping to the domain every 10 s; on WebSocket also the HTTP GET of the
   service URL (https) every 60 s + up to 60 s of jitter (first one 5 s after connecting); BOSH keeps a
   long-poll request held by the server.
7. `leave()`: unavailable presence to the room, then `<close/>` (WebSocket) or a terminate body (BOSH).
   `drop()` instead cuts the connection without a word, as a crashed browser does.

Example::

    with Participant(url="https://demo-3.meet.ensemble.test", room="Planning", address="10.1.2.13",
                     verify=False) as p:
        p.wait_for_participants(2)         # occupants other than the focus, this one included
        print(p.room_jid, p.transport)     # planning@conference.demo-3.meet.ensemble.test websocket

Command line (stays until Ctrl-C)::

    python tests/standins/xmpp_participant.py https://demo-1.meet.ensemble.test Planning --address 10.1.2.11 -k
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import os
import queue
import random
import re
import select
import socket
import ssl
import struct
import threading
import time
import unicodedata
import urllib.parse
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from xml.sax.saxutils import escape, quoteattr

NS_CLIENT = "jabber:client"
NS_FRAMING = "urn:ietf:params:xml:ns:xmpp-framing"
NS_STREAMS = "http://etherx.jabber.org/streams"
NS_SASL = "urn:ietf:params:xml:ns:xmpp-sasl"
NS_BIND = "urn:ietf:params:xml:ns:xmpp-bind"
NS_SESSION = "urn:ietf:params:xml:ns:xmpp-session"
NS_SM = "urn:xmpp:sm:3"
NS_PING = "urn:xmpp:ping"
NS_MUC = "http://jabber.org/protocol/muc"
NS_MUC_USER = "http://jabber.org/protocol/muc#user"
NS_NICK = "http://jabber.org/protocol/nick"
NS_BOSH = "http://jabber.org/protocol/httpbind"
NS_XBOSH = "urn:xmpp:xbosh"
NS_STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
NS_EXTDISCO = "urn:xmpp:extdisco:2"  # XEP-0215 external services (STUN/TURN), what lib-jitsi-meet asks for
NS_DISCO_INFO = "http://jabber.org/protocol/disco#info"
NS_DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
USER_AGENT = "Mozilla/5.0 (X11; Linux x86_64) ensemble-test-participant/1"
FOCUS_NICK = "focus"  # jicofo's nick in every conference room

# lib-jitsi-meet's defaults
PING_INTERVAL = 10.0  # xmppPing.interval
PING_TIMEOUT = 5.0  # xmppPing.timeout
WS_KEEPALIVE = 60.0  # websocketKeepAlive (+ up to 60 s of jitter)
BOSH_WAIT = 60  # Strophe's BOSH wait, hold 1


class ParticipantError(Exception):
    """The participant could not join (or lost the room); the message says at which step and why."""


# ---------------------------------------------------------------- names and config


def backend_safe_room_name(room: str) -> str:
    """The MUC node jitsi-meet joins for a typed room name (its getBackendSafeRoomName).

    Example::

        backend_safe_room_name("Réunion") == "r%c3%a9union"; backend_safe_room_name("r%C3%A9union") == "r%c3%a9union"
    """
    if not room:
        return room
    decoded = _decode_uri_component(room)
    name = unicodedata.normalize("NFKC", decoded if decoded is not None else room).lower()
    return urllib.parse.quote(name, safe="!'()*-._~").lower()  # encodeURIComponent's unreserved set


# jitsi-meet's _ROOM_EXCLUDE_PATTERN (react/features/base/util/uri.ts): removed from the page's path segment
_ROOM_EXCLUDED = re.compile(r"[:?#\[\]@!$&'()*+,;=></\"]")
# what a browser's address bar leaves unencoded in a path (the apostrophe among them)
_PATH_SAFE = "-._~!$&'()*+,;=:@"


def path_segment(room: str) -> str:
    """The path segment a browser sends for a room name typed in its address bar (escapes typed as such are
    kept). Example: path_segment("Réunion d'équipe") == path_segment("R%C3%A9union d'%C3%A9quipe")
    == "R%C3%A9union%20d'%C3%A9quipe"."""
    parts = re.split(r"(%[0-9A-Fa-f]{2})", room)
    return "".join(part if i % 2 else urllib.parse.quote(part, safe=_PATH_SAFE) for i, part in enumerate(parts))


def page_room_node(segment: str) -> str:
    """The node jitsi-meet joins for a page's path segment: excluded characters dropped, then
    getBackendSafeRoomName. Example: page_room_node("R%C3%A9union%20d'%C3%A9quipe") == "r%c3%a9union%20d%c3%a9quipe"."""
    return backend_safe_room_name(_ROOM_EXCLUDED.sub("", segment))


def _decode_uri_component(text: str) -> str | None:
    """JavaScript's decodeURIComponent, or None where it would throw (a stray % or invalid UTF-8)."""
    if re.search(r"%(?![0-9A-Fa-f]{2})", text):
        return None
    try:
        return urllib.parse.unquote_to_bytes(text).decode("utf-8")
    except UnicodeDecodeError:
        return None


@dataclass(frozen=True)
class ClientConfig:
    """What the web app reads from config.js to connect."""

    domain: str
    muc: str
    bosh: str
    websocket: str | None = None
    conference_request_url: str | None = None
    prefer_bosh: bool = False


_CONFIG_KEYS = ("domain", "muc", "bosh", "websocket", "conferenceRequestUrl", "preferBosh")


def parse_config_js(text: str, page_url: str) -> ClientConfig:
    """The connection settings of a config.js (literal values only; others fall back to upstream's defaults:
    hosts on the page's host, BOSH at /http-bind, no WebSocket). Relative URLs resolve against page_url.

    Example::

        parse_config_js("var config = { hosts: { domain: 'd.test', muc: 'conference.d.test' }, "
                        "websocket: 'wss://d.test/xmpp-websocket' };", "https://d.test/r").websocket
    """
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("//"))
    found: dict[str, str | bool] = {}
    pattern = r"(?<![\w$.])(%s)\s*:\s*(?:(['\"])((?:\\.|(?!\2).)*)\2|(true|false))\s*(?=[,}\n])"
    for match in re.finditer(pattern % "|".join(_CONFIG_KEYS), text):
        key = match.group(1)
        if key in found:
            continue
        if match.group(4) is not None:
            found[key] = match.group(4) == "true"
        elif match.group(2) == '"':
            try:
                found[key] = json.loads(f'"{match.group(3)}"')
            except ValueError:
                found[key] = match.group(3)
        else:
            found[key] = re.sub(r"\\(.)", r"\1", match.group(3))
    host = urllib.parse.urlsplit(page_url).hostname or ""

    def url(key: str) -> str | None:
        value = found.get(key)
        if not isinstance(value, str) or not value:
            return None
        if value.startswith("//"):
            value = ("wss:" if key == "websocket" else "https:") + value
        return urllib.parse.urljoin(page_url, value)

    domain = found.get("domain") if isinstance(found.get("domain"), str) else host
    muc = found.get("muc") if isinstance(found.get("muc"), str) else f"conference.{domain}"
    return ClientConfig(domain=str(domain), muc=str(muc),
                        bosh=url("bosh") or urllib.parse.urljoin(page_url, "/http-bind"),
                        websocket=url("websocket"), conference_request_url=url("conferenceRequestUrl"),
                        prefer_bosh=found.get("preferBosh") is True)


def append_url_param(url: str, name: str, value: str) -> str:
    """jitsi-meet's appendURLParam: `?name=value` or `&name=value` (value already encoded)."""
    parts = urllib.parse.urlsplit(url)
    query = f"{parts.query}&{name}={value}" if parts.query else f"{name}={value}"
    return urllib.parse.urlunsplit(parts._replace(query=query))


def _local(el: ET.Element) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _ns(el: ET.Element) -> str:
    return el.tag[1:].split("}", 1)[0] if el.tag.startswith("{") else ""


# ---------------------------------------------------------------- network


class _Net:
    """Connections to names with no DNS here: `resolve` maps host names to addresses; TLS keeps the name
    (SNI, certificate check unless verify=False, Host header)."""

    def __init__(self, resolve: dict[str, str], verify: bool, cafile: str | None, timeout: float):
        self.resolve, self.timeout = dict(resolve), timeout
        self.context = ssl.create_default_context(cafile=cafile)
        if not verify:
            self.context.check_hostname = False
            self.context.verify_mode = ssl.CERT_NONE

    def open(self, host: str, port: int, tls: bool) -> socket.socket:
        sock = socket.create_connection((self.resolve.get(host, host), port), timeout=self.timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.context.wrap_socket(sock, server_hostname=host) if tls else sock

    def connection(self, url: str, timeout: float | None = None) -> http.client.HTTPConnection:
        parts = urllib.parse.urlsplit(url)
        tls = parts.scheme in ("https", "wss")
        net = self

        class Connection(http.client.HTTPSConnection if tls else http.client.HTTPConnection):  # type: ignore[misc]
            def connect(self):  # http.client's hook: our address, the URL's name
                self.sock = net.open(self.host, self.port, tls)
                self.sock.settimeout(self.timeout)

        kwargs = {"context": self.context} if tls else {}
        return Connection(parts.hostname, parts.port or (443 if tls else 80), timeout=timeout or self.timeout,
                          **kwargs)

    def request(self, method: str, url: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-cased headers, body)."""
        parts = urllib.parse.urlsplit(url)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        conn = self.connection(url)
        try:
            conn.request(method, target, body=body, headers={"User-Agent": USER_AGENT, **(headers or {})})
            answer = conn.getresponse()
            return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
        except (OSError, http.client.HTTPException) as exc:
            raise ParticipantError(f"{method} {url}: {exc}") from exc
        finally:
            conn.close()


# ---------------------------------------------------------------- transports

_CLOSED = object()  # inbound marker: the stream is gone


class _WebSocketTransport:
    """XMPP over WebSocket (RFC 6455 + RFC 7395). One I/O thread owns the socket (TLS objects are not
    shared between threads); send() queues and wakes it."""

    name = "websocket"

    def __init__(self, net: _Net, url: str, origin: str, domain: str):
        self.net, self.url, self.origin, self.domain = net, url, origin, domain
        self.inbound: queue.Queue = queue.Queue()
        self.close_reason = ""
        self._out: list[bytes] = []
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = socket.socketpair()
        self._stop = threading.Event()
        self._closed = threading.Event()
        self._close_frame_sent = False
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None

    # -- stream level
    def start(self) -> None:
        self._handshake()
        self._thread = threading.Thread(target=self._io, name=f"ws {self.url}", daemon=True)
        self._thread.start()
        self.restart()

    def restart(self) -> None:
        self.send(f"<open xmlns='{NS_FRAMING}' to={quoteattr(self.domain)} version='1.0'/>")

    def send(self, text: str) -> None:
        self._queue(_ws_frame(0x1, text.encode("utf-8")))

    def recv(self, timeout: float):
        return self.inbound.get(timeout=timeout)

    def close(self, timeout: float = 3.0) -> None:
        """<close/>, the server's answer (or timeout), a close frame, then the socket."""
        if not self._closed.is_set():
            self.send(f"<close xmlns='{NS_FRAMING}'/>")
            self._closed.wait(timeout)
        if not self._close_frame_sent:
            self._close_frame_sent = True
            self._queue(_ws_frame(0x8, struct.pack(">H", 1000)))
            time.sleep(0.1)
        self.abort()

    def abort(self) -> None:
        self._stop.set()
        self._wake()
        if self._thread and self._thread is not threading.current_thread():
            self._thread.join(5)
        for s in (self._sock, self._wake_r, self._wake_w):
            try:
                if s:
                    s.close()
            except OSError:
                pass
        self._finish("closed by the client")

    # -- internals
    def _handshake(self) -> None:
        parts = urllib.parse.urlsplit(self.url)
        tls = parts.scheme == "wss"
        port = parts.port or (443 if tls else 80)
        host_header = parts.hostname if parts.port in (None, 443 if tls else 80) else f"{parts.hostname}:{port}"
        key = base64.b64encode(os.urandom(16)).decode()
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        try:
            sock = self.net.open(parts.hostname or "", port, tls)
            sock.sendall((f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\n"
                          f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                          f"Sec-WebSocket-Protocol: xmpp\r\nOrigin: {self.origin}\r\nUser-Agent: {USER_AGENT}\r\n"
                          f"Cache-Control: no-cache\r\n\r\n").encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(4096)
                if not chunk:
                    raise ParticipantError(f"websocket {self.url}: connection closed during the handshake")
                data += chunk
        except OSError as exc:
            raise ParticipantError(f"websocket {self.url}: {exc}") from exc
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        status = lines[0].split(" ", 2)
        if len(status) < 2 or status[1] != "101":
            sock.close()
            raise ParticipantError(f"websocket {self.url}: the server answered '{lines[0]}' instead of 101 "
                                   f"(Switching Protocols)")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        if headers.get("sec-websocket-accept") != accept:
            sock.close()
            raise ParticipantError(f"websocket {self.url}: wrong Sec-WebSocket-Accept")
        if headers.get("sec-websocket-protocol", "").lower() != "xmpp":
            sock.close()
            raise ParticipantError(f"websocket {self.url}: the server did not accept the 'xmpp' subprotocol")
        self._sock, self._buffer = sock, bytearray(rest)

    def _queue(self, frame: bytes) -> None:
        with self._lock:
            self._out.append(frame)
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _finish(self, reason: str) -> None:
        if not self._closed.is_set():
            self.close_reason = reason
            self._closed.set()
            self.inbound.put(_CLOSED)

    def _io(self) -> None:
        sock, fragments = self._sock, bytearray()
        assert sock is not None
        try:
            while not self._stop.is_set():
                pending = isinstance(sock, ssl.SSLSocket) and sock.pending() > 0
                readable = [sock] if pending else select.select([sock, self._wake_r], [], [], 1.0)[0]
                if self._wake_r in readable:
                    self._wake_r.recv(4096)
                with self._lock:
                    out, self._out = self._out, []
                for frame in out:
                    sock.sendall(frame)
                if sock in readable:
                    data = sock.recv(65536)
                    if not data:
                        self._finish("the server closed the connection")
                        return
                    self._buffer += data
                    while (frame := _ws_parse(self._buffer)) is not None:
                        fin, opcode, payload = frame
                        if opcode == 0x8:
                            if not self._close_frame_sent:
                                self._close_frame_sent = True
                                sock.sendall(_ws_frame(0x8, payload[:2]))
                            self._finish("the server closed the websocket")
                            return
                        if opcode == 0x9:
                            sock.sendall(_ws_frame(0xA, payload))
                        elif opcode in (0x0, 0x1, 0x2):
                            fragments += payload
                            if fin:
                                self._deliver(fragments.decode("utf-8"))
                                fragments = bytearray()
        except (OSError, ValueError) as exc:
            if not self._stop.is_set():
                self._finish(f"websocket error: {exc}")

    def _deliver(self, text: str) -> None:
        try:
            el = ET.fromstring(text)
        except ET.ParseError:
            return
        if _local(el) == "close" and _ns(el) == NS_FRAMING:
            self._finish("the server closed the XMPP stream")
        else:
            self.inbound.put(el)


def _ws_frame(opcode: int, payload: bytes) -> bytes:
    """A masked client frame (RFC 6455 5.2)."""
    n = len(payload)
    if n < 126:
        head = struct.pack(">BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack(">BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack(">BBQ", 0x80 | opcode, 0x80 | 127, n)
    mask = os.urandom(4)
    body = (int.from_bytes(payload, "big") ^ int.from_bytes((mask * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + mask + body


def _ws_parse(buf: bytearray) -> tuple[bool, int, bytes] | None:
    """Take one complete frame off the front of buf: (fin, opcode, unmasked payload), or None."""
    if len(buf) < 2:
        return None
    fin, opcode, masked, n, offset = bool(buf[0] & 0x80), buf[0] & 0x0F, buf[1] & 0x80, buf[1] & 0x7F, 2
    if n == 126:
        if len(buf) < 4:
            return None
        n, offset = struct.unpack(">H", bytes(buf[2:4]))[0], 4
    elif n == 127:
        if len(buf) < 10:
            return None
        n, offset = struct.unpack(">Q", bytes(buf[2:10]))[0], 10
    mask = bytes(buf[offset:offset + 4]) if masked else b""
    offset += 4 if masked else 0
    if len(buf) < offset + n:
        return None
    payload = bytes(buf[offset:offset + n])
    del buf[:offset + n]
    if masked:
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return fin, opcode, payload


class _BoshTransport:
    """XMPP over BOSH (XEP-0124/0206), hold=1 and at most 2 requests as Strophe: two workers, one of which
    keeps a request held by the server (the long poll) while the other sends what is queued."""

    name = "bosh"

    def __init__(self, net: _Net, url: str, origin: str, domain: str):
        self.net, self.url, self.origin, self.domain = net, url, origin, domain
        self.inbound: queue.Queue = queue.Queue()
        self.close_reason = ""
        self.sid: str | None = None
        self._rid = random.randint(1_000_000, 4_000_000_000)
        self._out: list[str] = []
        self._restart = False
        self._terminate = False
        self._in_flight = 0
        self._last_sent = 0.0
        self._cond = threading.Condition()
        self._closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._local = threading.local()

    def start(self) -> None:
        body = (f"<body content='text/xml; charset=utf-8' hold='1' rid='{self._next_rid()}' "
                f"to={quoteattr(self.domain)} ver='1.6' wait='{BOSH_WAIT}' xml:lang='en' xmpp:version='1.0' "
                f"xmlns='{NS_BOSH}' xmlns:xmpp='{NS_XBOSH}'/>")
        answer = self._post(body)
        self.sid = answer.get("sid")
        if not self.sid:
            raise ParticipantError(f"BOSH {self.url}: no session id in the answer ({answer.get('condition')})")
        self._deliver(answer)
        for n in range(2):
            thread = threading.Thread(target=self._worker, name=f"bosh-{n} {self.url}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def restart(self) -> None:
        with self._cond:
            self._restart = True
            self._cond.notify_all()

    def send(self, text: str) -> None:
        with self._cond:
            self._out.append(text)
            self._cond.notify_all()

    def recv(self, timeout: float):
        return self.inbound.get(timeout=timeout)

    def close(self, timeout: float = 5.0) -> None:
        """A terminate body (with what is still queued), then the workers stop."""
        with self._cond:
            if not self._closed.is_set():
                self._terminate = True
                self._cond.notify_all()
        self._closed.wait(timeout)
        self.abort()

    def abort(self) -> None:
        self._finish("closed by the client")
        with self._cond:
            self._cond.notify_all()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(0.5)  # a held request may stay until the server's wait: the workers are daemons

    # -- internals
    def _next_rid(self) -> int:
        self._rid += 1
        return self._rid

    def _finish(self, reason: str) -> None:
        if not self._closed.is_set():
            self.close_reason = reason
            self._closed.set()
            self.inbound.put(_CLOSED)

    def _worker(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._closed.is_set():
                        return
                    wanted = bool(self._out or self._restart or self._terminate)
                    settled = time.monotonic() - self._last_sent > 0.05  # keep requests in rid order
                    if self._in_flight == 0 or (self._in_flight == 1 and wanted and settled):
                        break
                    self._cond.wait(0.05 if wanted else 1.0)
                body, terminate = self._body(), self._terminate
                self._in_flight += 1
                self._last_sent = time.monotonic()
            try:
                answer = self._post(body)
            except ParticipantError as exc:
                self._finish(str(exc))
                return
            finally:
                with self._cond:
                    self._in_flight -= 1
                    self._cond.notify_all()
            self._deliver(answer)
            if terminate or answer.get("type") == "terminate":
                self._finish(f"BOSH session terminated ({answer.get('condition') or 'by the client'})")
                return

    def _body(self) -> str:
        attrs = f"rid='{self._next_rid()}' sid={quoteattr(self.sid or '')} xmlns='{NS_BOSH}'"
        if self._restart:
            self._restart = False
            return (f"<body {attrs} to={quoteattr(self.domain)} xml:lang='en' xmpp:restart='true' "
                    f"xmlns:xmpp='{NS_XBOSH}'/>")
        stanzas, self._out = "".join(self._out), []
        if self._terminate:
            return f"<body {attrs} type='terminate'>{stanzas}</body>"
        return f"<body {attrs}>{stanzas}</body>"

    def _post(self, body: str) -> ET.Element:
        parts = urllib.parse.urlsplit(self.url)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Content-Type": "text/xml; charset=utf-8", "Origin": self.origin, "User-Agent": USER_AGENT}
        for attempt in range(2):  # a broken keep-alive connection: the same rid once more (XEP-0124 14.2)
            conn = getattr(self._local, "conn", None) or self.net.connection(self.url, timeout=BOSH_WAIT + 30)
            self._local.conn = conn
            try:
                conn.request("POST", target, body=body.encode("utf-8"), headers=headers)
                answer = conn.getresponse()
                data = answer.read()
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._local.conn = None
                if attempt or self._closed.is_set():
                    raise ParticipantError(f"BOSH {self.url}: {exc}") from exc
                continue
            if answer.status != 200:
                raise ParticipantError(f"BOSH {self.url}: HTTP {answer.status}: {data[:200]!r}")
            try:
                return ET.fromstring(data)
            except ET.ParseError as exc:
                raise ParticipantError(f"BOSH {self.url}: not XML: {data[:200]!r}") from exc
        raise AssertionError("unreachable")

    def _deliver(self, body: ET.Element) -> None:
        for child in body:
            self.inbound.put(child)


# ---------------------------------------------------------------- the participant


class Participant:
    """One participant of one room. `join()` (or `with`) returns once prosody has it in the room;
    it stays (keep-alive) until `leave()` or `drop()`.

    url: the meeting's site (a shard, or a front door that redirects or proxies to one);
    room: the name as typed in the browser (any case, any Unicode);
    address: where `url`'s host name is (no DNS for test fleets); resolve: more {name: address};
    verify=False accepts self-signed certificates (cafile= to check against a test CA instead);
    transport: "auto" (as the web app: WebSocket when config.js has one and no preferBosh), "websocket", "bosh".
    """

    def __init__(self, url: str, room: str, *, address: str | None = None, resolve: dict[str, str] | None = None,
                 verify: bool = True, cafile: str | None = None, transport: str = "auto",
                 display_name: str | None = None, timeout: float = 30.0, ping_interval: float = PING_INTERVAL,
                 ws_keepalive: float = WS_KEEPALIVE):
        if transport not in ("auto", "websocket", "bosh"):
            raise ValueError(f"transport: 'auto', 'websocket' or 'bosh', got {transport!r}")
        parts = urllib.parse.urlsplit(url if "://" in url else f"https://{url}")
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        self.room = room
        self.segment = path_segment(room)  # typed in the address bar: /<segment>
        self.node = page_room_node(self.segment)
        names = dict(resolve or {})
        if address:
            names.setdefault(parts.hostname or "", address)
        self._net = _Net(names, verify, cafile, timeout)
        self.requested_transport, self.display_name, self.timeout = transport, display_name, timeout
        self.ping_interval, self.ws_keepalive = ping_interval, ws_keepalive
        self.nick = f"{random.getrandbits(32):08x}"  # lib-jitsi-meet: randomHexString(8)
        self.machine_uid = uuid.uuid4().hex  # Settings.machineId
        self.config: ClientConfig | None = None
        self.page_url = ""  # the room's page after redirects
        self.service_url = ""
        self.transport = ""  # "websocket" or "bosh" once connected
        self.room_jid = ""
        self.jid = ""  # the full JID prosody bound
        self.occupants: set[str] = set()  # nicks in the room, the focus included
        self.timings: dict[str, float] = {}  # seconds since join() for each step
        self.pings_sent = self.pings_answered = self.keepalive_gets = 0
        self.error: str | None = None  # why the participant lost the room, if it did
        self._stream = None
        self._lock = threading.Condition()
        self._joined = self._leaving = self._left = False
        self._iq_ids: dict[str, ET.Element | None] = {}
        self._sm_enabled, self._sm_h = False, 0
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._seq = 0

    # -- public
    def __enter__(self) -> Participant:
        return self.join()

    def __exit__(self, *exc) -> None:
        self.leave()

    def __repr__(self) -> str:
        state = "joined" if self.joined else ("left" if self._left else "not joined")
        return f"<Participant {self.nick} {self.room_jid or self.node} {self.transport or '-'} {state}>"

    @property
    def joined(self) -> bool:
        """In the room now: joined, not left, connection alive."""
        with self._lock:
            return self._joined and not self._left and self.error is None

    @property
    def participants(self) -> int:
        """Occupants other than the focus (this one included): what the census counts for the room."""
        with self._lock:
            return len(self.occupants - {FOCUS_NICK})

    def wait_for_participants(self, n: int, timeout: float = 30.0) -> None:
        """Wait until the room has n participants (focus not counted); ParticipantError on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while len(self.occupants - {FOCUS_NICK}) != n:
                left = deadline - time.monotonic()
                if left <= 0 or self.error:
                    raise ParticipantError(f"{self}: {len(self.occupants - {FOCUS_NICK})} participant(s), "
                                           f"not {n}, after {timeout:.0f} s{f' ({self.error})' if self.error else ''}")
                self._lock.wait(left)

    def join(self) -> Participant:
        """Page, config, conference request, XMPP login, MUC presence; returns when in the room."""
        started = time.monotonic()
        deadline = started + self.timeout

        def mark(step: str) -> None:
            self.timings[step] = round(time.monotonic() - started, 3)

        try:
            self.config = self._load_config()
            mark("config")
            cfg = self.config
            self.room_jid = f"{self.node}@{cfg.muc.lower()}"
            use_ws = self.requested_transport == "websocket" or (
                self.requested_transport == "auto" and cfg.websocket and not cfg.prefer_bosh)
            default_ws = re.sub(r"^http", "ws", urllib.parse.urljoin(self.page_url, "/xmpp-websocket"))
            base = (cfg.websocket or default_ws) if use_ws else cfg.bosh
            self.service_url = append_url_param(base, "room", self.node)
            if cfg.conference_request_url:
                self._conference_request(append_url_param(cfg.conference_request_url, "room", self.node), deadline)
                mark("conference_request")
            self._connect(use_ws, deadline)
            mark("xmpp_session")
            self._enter_room(deadline)
            mark("joined")
        except BaseException:
            self._shutdown(abort=True)
            raise
        return self

    def leave(self, timeout: float = 10.0) -> None:
        """Unavailable presence to the room, wait for prosody's answer, close the stream (idempotent)."""
        with self._lock:
            if self._left or self._stream is None:
                self._left = True
                return
            in_room = self._joined and self.error is None
            self._leaving = True
        if in_room:
            self._send(f"<presence xmlns='{NS_CLIENT}' to={quoteattr(f'{self.room_jid}/{self.nick}')} "
                       f"type='unavailable'/>")
            deadline = time.monotonic() + timeout
            with self._lock:
                while self._joined and self.error is None and time.monotonic() < deadline:
                    self._lock.wait(deadline - time.monotonic())
        with self._lock:
            self._left = True
        self._shutdown(abort=False)

    def drop(self) -> None:
        """Cut the connection without leaving, as a crashed browser or a lost network does."""
        with self._lock:
            self._left = True
        self._shutdown(abort=True)

    # -- steps
    def _headers(self) -> dict[str, str]:
        parts = urllib.parse.urlsplit(self.page_url or self.url)
        return {"Origin": f"{parts.scheme}://{parts.netloc}"}

    def _load_config(self) -> ClientConfig:
        """GET the room's page like a browser (following redirects) and read the config it carries."""
        url = f"{self.url}/{self.segment}"
        for _ in range(6):
            status, headers, body = self._net.request("GET", url, headers={"Accept": "text/html"})
            if status in (301, 302, 303, 307, 308) and headers.get("location"):
                url = urllib.parse.urljoin(url, headers["location"])
                continue
            if status == 200 and b"/_ensemble/room.js" in body and "ensemble_room=" not in url:
                # the front door's canonicalising page: its script comes back without the characters
                # jitsi-meet drops, with the node as the key
                parts = urllib.parse.urlsplit(url)
                url = append_url_param(urllib.parse.urlunsplit(parts._replace(
                    path="/" + _ROOM_EXCLUDED.sub("", self.segment))), "ensemble_room", self.node)
                continue
            break
        else:
            raise ParticipantError(f"the room's page {url}: too many redirects")
        if status != 200:
            raise ParticipantError(f"the room's page {url}: HTTP {status}: {body[:200]!r}")
        self.page_url = url
        page = body.decode("utf-8", "replace")
        inline = re.search(r"\bvar\s+config\s*=\s*\{", page)
        if inline:
            return parse_config_js(page[inline.start():], url)
        config_url = append_url_param(urllib.parse.urljoin(url, "/config.js"), "room", self.node)
        status, _, body = self._net.request("GET", config_url)
        if status != 200:
            raise ParticipantError(f"{config_url}: HTTP {status}")
        return parse_config_js(body.decode("utf-8", "replace"), url)

    def _conference_request(self, url: str, deadline: float) -> None:
        """POST the conference request until jicofo says ready (back-off 1, 2, 4 ... s)."""
        request = {"machineUid": self.machine_uid, "properties": {"rtcstatsEnabled": False, "visitors-version": 1},
                   "room": self.room_jid}
        wait = 1.0
        while True:
            status, _, body = self._net.request(
                "POST", url, body=json.dumps(request).encode(),
                headers={"Content-Type": "application/json", **self._headers()})
            if status == 403:
                raise ParticipantError(f"conference request {url}: not authorized (HTTP 403)")
            if status != 200:
                raise ParticipantError(f"conference request {url}: HTTP {status}: {body[:200]!r}")
            try:
                answer = json.loads(body)
            except ValueError as exc:
                raise ParticipantError(f"conference request {url}: not JSON: {body[:200]!r}") from exc
            if str(answer.get("properties", {}).get("live", "")).lower() == "false":
                raise ParticipantError(f"conference request {url}: the conference is not live")
            if answer.get("ready"):
                return
            if time.monotonic() + wait > deadline:
                raise ParticipantError(f"conference request {url}: jicofo never answered ready "
                                       f"within {self.timeout:.0f} s (last answer {answer})")
            time.sleep(wait)
            wait = min(wait * 2, 120)

    def _connect(self, websocket: bool, deadline: float) -> None:
        cfg = self.config
        assert cfg is not None
        kind = _WebSocketTransport if websocket else _BoshTransport
        self._stream = stream = kind(self._net, self.service_url, self._headers()["Origin"], cfg.domain)
        self.transport = stream.name
        stream.start()
        features = self._expect(lambda el: _local(el) == "features", deadline, "stream features")
        mechanisms = [m.text for m in features.iter(f"{{{NS_SASL}}}mechanism")]
        if "ANONYMOUS" not in mechanisms:
            raise ParticipantError(f"{cfg.domain} offers no SASL ANONYMOUS (mechanisms: {mechanisms})")
        self._send(f"<auth xmlns='{NS_SASL}' mechanism='ANONYMOUS'/>")
        answer = self._expect(lambda el: _ns(el) == NS_SASL, deadline, "the SASL answer")
        if _local(answer) != "success":
            raise ParticipantError(f"SASL ANONYMOUS on {cfg.domain} refused: {ET.tostring(answer, 'unicode')}")
        stream.restart()
        features = self._expect(lambda el: _local(el) == "features", deadline, "stream features after SASL")
        bound = self._iq_sync(f"<bind xmlns='{NS_BIND}'/>", deadline, "resource bind")
        self.jid = bound.findtext(f"{{{NS_BIND}}}bind/{{{NS_BIND}}}jid") or ""
        session = features.find(f"{{{NS_SESSION}}}session")
        if session is not None and session.find(f"{{{NS_SESSION}}}optional") is None:
            self._iq_sync(f"<session xmlns='{NS_SESSION}'/>", deadline, "session")
        if websocket and features.find(f"{{{NS_SM}}}sm") is not None:
            self._send(f"<enable xmlns='{NS_SM}' resume='true'/>")
            answer = self._expect(lambda el: _ns(el) == NS_SM and _local(el) in ("enabled", "failed"), deadline,
                                  "stream management")
            self._sm_enabled = _local(answer) == "enabled"
        reader = threading.Thread(target=self._read, name=f"participant {self.nick}", daemon=True)
        keepalive = threading.Thread(target=self._keepalive, name=f"keepalive {self.nick}", daemon=True)
        self._threads = [reader, keepalive]
        reader.start()
        keepalive.start()

    def _enter_room(self, deadline: float) -> None:
        billing = f"<billingid>{escape(self.machine_uid)}</billingid>" if self.config.conference_request_url else ""
        nick = f"<nick xmlns='{NS_NICK}'>{escape(self.display_name)}</nick>" if self.display_name else ""
        self._send(f"<presence xmlns='{NS_CLIENT}' to={quoteattr(f'{self.room_jid}/{self.nick}')}>"
                   f"<x xmlns='{NS_MUC}'>{billing}</x><stats-id>{escape(self.nick)}</stats-id>{nick}</presence>")
        with self._lock:
            while not self._joined:
                if self.error:
                    raise ParticipantError(f"joining {self.room_jid}: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ParticipantError(f"joining {self.room_jid}: no answer from the room in {self.timeout:.0f} s")
                self._lock.wait(left)

    # -- plumbing
    def _send(self, text: str) -> None:
        if self._stream is not None:
            self._stream.send(text)

    def _next_id(self, prefix: str) -> str:
        self._seq += 1
        return f"{prefix}{self._seq}:{self.nick}"

    def _expect(self, wanted, deadline: float, what: str) -> ET.Element:
        """Before the reader runs: the next element that `wanted` accepts (stream headers skipped)."""
        stream = self._stream
        while True:
            left = deadline - time.monotonic()
            try:
                el = stream.recv(max(left, 0.01))
            except queue.Empty:
                raise ParticipantError(f"{self.service_url}: no {what} within {self.timeout:.0f} s") from None
            if el is _CLOSED:
                raise ParticipantError(f"{self.service_url}: {stream.close_reason} while waiting for {what}")
            if _local(el) == "error" and _ns(el) == NS_STREAMS:
                raise ParticipantError(f"{self.service_url}: stream error {ET.tostring(el, 'unicode')}")
            if wanted(el):
                return el
            if _local(el) != "open":
                self._handle(el)

    def _iq_sync(self, payload: str, deadline: float, what: str) -> ET.Element:
        iq_id = self._next_id("setup")
        self._send(f"<iq xmlns='{NS_CLIENT}' type='set' id={quoteattr(iq_id)}>{payload}</iq>")
        answer = self._expect(lambda el: _local(el) == "iq" and el.get("id") == iq_id, deadline, what)
        if answer.get("type") != "result":
            raise ParticipantError(f"{what} refused: {ET.tostring(answer, 'unicode')}")
        return answer

    def _read(self) -> None:
        stream = self._stream
        while not self._stop.is_set():
            try:
                el = stream.recv(1.0)
            except queue.Empty:
                continue
            if el is _CLOSED:
                with self._lock:
                    if not (self._leaving or self._left) and self.error is None:
                        self.error = stream.close_reason or "connection lost"
                    self._lock.notify_all()
                return
            self._handle(el)

    def _handle(self, el: ET.Element) -> None:
        name, ns = _local(el), _ns(el)
        if self._sm_enabled and ns == NS_CLIENT and name in ("iq", "presence", "message"):
            self._sm_h += 1  # XEP-0198: stanzas handled since <enabled/>
        if ns == NS_SM and name == "r":
            self._send(f"<a xmlns='{NS_SM}' h='{self._sm_h % 2**32}'/>")
        elif ns == NS_STREAMS and name == "error":
            with self._lock:
                self.error = f"stream error {ET.tostring(el, 'unicode')}"
                self._lock.notify_all()
        elif name == "iq":
            self._on_iq(el)
        elif name == "presence":
            self._on_presence(el)

    def _on_iq(self, el: ET.Element) -> None:
        kind, iq_id = el.get("type"), el.get("id") or ""
        if kind in ("result", "error"):
            with self._lock:
                if iq_id in self._iq_ids:
                    self._iq_ids[iq_id] = el
                    if kind == "result" and iq_id.startswith("ping"):
                        self.pings_answered += 1
                    self._lock.notify_all()
            return
        to = f" to={quoteattr(el.get('from'))}" if el.get("from") else ""
        if el.find(f"{{{NS_PING}}}ping") is not None:
            self._send(f"<iq xmlns='{NS_CLIENT}' type='result' id={quoteattr(iq_id)}{to}/>")
        else:
            self._send(f"<iq xmlns='{NS_CLIENT}' type='error' id={quoteattr(iq_id)}{to}><error type='cancel'>"
                       f"<service-unavailable xmlns='{NS_STANZAS}'/></error></iq>")

    def _on_presence(self, el: ET.Element) -> None:
        bare, _, nick = (el.get("from") or "").partition("/")
        if bare.lower() != self.room_jid:
            return
        kind = el.get("type")
        codes = {s.get("code") for s in el.iter(f"{{{NS_MUC_USER}}}status")}
        with self._lock:
            if kind == "error":
                error = el.find(f"{{{NS_CLIENT}}}error")
                condition = next((_local(c) for c in error if _ns(c) == NS_STANZAS), "?") if error is not None else "?"
                text = el.findtext(f"{{{NS_CLIENT}}}error/{{{NS_STANZAS}}}text") or ""
                self.error = f"the room refused the participant: {condition}{f' ({text})' if text else ''}"
            elif kind == "unavailable":
                self.occupants.discard(nick)
                if nick == self.nick or "110" in codes:
                    self._joined = False
                    if not (self._leaving or self._left) and self.error is None:
                        self.error = "removed from the room" + (f" (status {sorted(codes)})" if codes else "")
            else:
                self.occupants.add(nick)
                if nick == self.nick or "110" in codes:
                    self._joined = True
            self._lock.notify_all()

    def _keepalive(self) -> None:
        """XMPP ping every ping_interval; on WebSocket also lib-jitsi-meet's HTTP GET of the service URL."""
        now = time.monotonic()
        next_ping = now + self.ping_interval
        next_get = now + 5.0 if self.transport == "websocket" and self.ws_keepalive > 0 else float("inf")
        while not self._stop.wait(max(0.0, min(next_ping, next_get) - time.monotonic())):
            now = time.monotonic()
            if now >= next_ping:
                next_ping = now + self.ping_interval
                self._ping()
            if now >= next_get:
                next_get = now + self.ws_keepalive + random.random() * 60.0
                try:
                    url = self.service_url.replace("wss://", "https://", 1).replace("ws://", "http://", 1)
                    self._net.request("GET", url, headers=self._headers())
                    self.keepalive_gets += 1
                except ParticipantError:
                    pass  # lib-jitsi-meet only logs it

    def disco(self, to: str, what: str = "items", timeout: float = 10.0) -> ET.Element:
        """XEP-0030: the answer (<iq> result or error) to a disco#info or disco#items query sent to `to`, as
        any client may send one (lib-jitsi-meet asks the domain's disco#info for its components).

        Example::

            p.disco(f"conference.{domain}").findall(f"{{{NS_DISCO_ITEMS}}}query/{{{NS_DISCO_ITEMS}}}item")
        """
        ns = NS_DISCO_ITEMS if what == "items" else NS_DISCO_INFO
        answer = self._get_iq("disco", to, f"<query xmlns='{ns}'/>", timeout)
        if answer is None:
            raise ParticipantError(f"{to}: no disco#{what} answer within {timeout:.0f} s")
        return answer

    def _get_iq(self, kind: str, to: str, query: str, timeout: float) -> ET.Element | None:
        """Send an IQ get carrying `query` to `to`; its answer (result or error), None if none came in time."""
        iq_id = self._next_id(kind)
        with self._lock:
            self._iq_ids[iq_id] = None
        self._send(f"<iq xmlns='{NS_CLIENT}' type='get' id={quoteattr(iq_id)} to={quoteattr(to)}>{query}</iq>")
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._iq_ids.get(iq_id) is None and self.error is None and time.monotonic() < deadline:
                self._lock.wait(max(0.0, deadline - time.monotonic()))
            return self._iq_ids.pop(iq_id, None)

    def external_services(self, timeout: float = 10.0) -> list[dict[str, str]]:
        """XEP-0215: the STUN/TURN services the shard announces, as lib-jitsi-meet fetches them after login
        (`<services xmlns='urn:xmpp:extdisco:2'/>` to the domain); one dict of attributes per service
        (type, host, port, transport, and for TURN the ephemeral username/password, expires).

        Example::

            [s["type"] for s in p.external_services()]     # ["stun", "turn", "turn", "turns"]
        """
        answer = self._get_iq("extdisco", self.config.domain, f"<services xmlns='{NS_EXTDISCO}'/>", timeout)
        if answer is None or answer.get("type") != "result":
            detail = ET.tostring(answer, "unicode") if answer is not None else f"no answer within {timeout:.0f} s"
            raise ParticipantError(f"{self.config.domain}: external services refused: {detail}")
        return [dict(el.attrib) for el in answer.iter(f"{{{NS_EXTDISCO}}}service")]

    def _ping(self) -> None:
        iq_id = self._next_id("ping")
        with self._lock:
            self._iq_ids[iq_id] = None
        self.pings_sent += 1
        self._send(f"<iq xmlns='{NS_CLIENT}' type='get' id={quoteattr(iq_id)} to={quoteattr(self.config.domain)}>"
                   f"<ping xmlns='{NS_PING}'/></iq>")
        deadline = time.monotonic() + PING_TIMEOUT
        with self._lock:
            while self._iq_ids.get(iq_id) is None and not self._stop.is_set() and time.monotonic() < deadline:
                self._lock.wait(deadline - time.monotonic())
            self._iq_ids.pop(iq_id, None)

    def _shutdown(self, abort: bool) -> None:
        self._stop.set()
        with self._lock:
            self._lock.notify_all()
        stream = self._stream
        if stream is not None and not abort and self._sm_enabled:
            stream.send(f"<a xmlns='{NS_SM}' h='{self._sm_h % 2**32}'/>")  # all handled: nothing for prosody to bounce
        if stream is not None:
            stream.abort() if abort else stream.close()
        for thread in self._threads:
            if thread is not threading.current_thread():
                thread.join(5)
        with self._lock:
            self._joined = False
            self._lock.notify_all()


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Join a Jitsi Meet room as a (signalling-only) participant.")
    parser.add_argument("url", help="the site, e.g. https://demo-1.meet.ensemble.test")
    parser.add_argument("room", help="the room name as typed in a browser")
    parser.add_argument("--address", help="the address of the site's host name (no DNS)")
    parser.add_argument("-k", "--insecure", action="store_true", help="accept any certificate")
    parser.add_argument("--transport", default="auto", choices=("auto", "websocket", "bosh"))
    parser.add_argument("--seconds", type=float, default=0, help="leave after this many seconds (0: Ctrl-C)")
    args = parser.parse_args(argv)
    participant = Participant(args.url, args.room, address=args.address, verify=not args.insecure,
                              transport=args.transport).join()
    print(f"joined {participant.room_jid} as {participant.nick} over {participant.transport} "
          f"({participant.service_url}); steps {participant.timings}", flush=True)
    try:
        end = time.monotonic() + args.seconds if args.seconds else float("inf")
        while time.monotonic() < end and participant.joined:
            time.sleep(1)
    except KeyboardInterrupt:
        pass
    finally:
        participant.leave()
    print(f"left; pings {participant.pings_answered}/{participant.pings_sent}"
          f"{f', error: {participant.error}' if participant.error else ''}")
    return 1 if participant.error else 0


if __name__ == "__main__":
    raise SystemExit(main())
