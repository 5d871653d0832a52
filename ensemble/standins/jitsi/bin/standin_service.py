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
import json
import logging
import os
import re
import socket
import sys
import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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


# ---------------------------------------------------------------- the two services

class Service:
    """State shared by the HTTP handler: the role, its config and what the census says."""

    def __init__(self, role: str, conf: dict, census_url: str, domain: str | None, capacity: int):
        self.role, self.conf, self.census_url, self.domain = role, conf, census_url, domain
        self.capacity = capacity
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
                    standin=STANDIN_NOTICE)

    def jicofo_stats(self) -> dict:
        numbers = occupancy(read_census(self.census_url, self.domain))
        bridge_up = _http_ok("http://127.0.0.1:8080/about/health")
        selector = {"bridge_count": 1, "operational_bridge_count": int(bridge_up), "in_shutdown_bridge_count": 0}
        return dict(numbers, bridge_selector=selector, standin=STANDIN_NOTICE)

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
            return self.reply(200)
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
            return self.reply(200, {"ready": True, "focusJid": f"focus.{svc.domain}" if svc.domain else "",
                                    "vnode": None, "room": room, "properties": {"standin": "true"}})
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
        host = args.host or lookup(conf, "videobridge.http-servers.private.host", "127.0.0.1")
        port = args.port or int(lookup(conf, "videobridge.http-servers.private.port", defaults["port"]))
        udp_port = args.udp_port if args.udp_port is not None else int(lookup(conf, "videobridge.ice.udp.port", 10000))
    else:
        domain = args.domain or jicofo_domain(conf) or domain_from_env_file(env_file)
        client = lookup(conf, "jicofo.xmpp.client", {}) or {}
        log.info("XMPP client: would log in as %s@%s (client proxy %s); brewery %s", client.get("username"),
                 client.get("domain"), client.get("client-proxy"), lookup(conf, "jicofo.bridge.brewery-jid"))
        host = args.host or "127.0.0.1"
        port = args.port or defaults["port"]
        udp_port = None
    log.info("shard domain for the census: %s", domain)
    service = Service(args.role, conf, args.census_url, domain, args.capacity)
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
