"""STAND-IN for the occupancy sources of Jitsi shards, plus real nginx instances for front door tests.

Each shard of a test fleet is a `server` of a real nginx (`ShardsNginx`) that answers like a
shard's nginx does for the front door: ``/<room>`` (a page naming the shard), ``/http-bind`` and
``/xmpp-websocket`` (the same), and the token-protected ``/_ensemble/{census,stats,health,state}``
locations. Behind those locations, this module's `OccupancyStandin` plays prosody's room census,
the JVB's colibri stats and jicofo's health (the real daemons are not installed in this tier); the
drain state is a real file per shard, written by ensemble.frontdoor.drain like on a real shard.

Example::

    standin = OccupancyStandin().start()
    standin.set_rooms("s1.fd.test", {"myroom": 3})
    shards = ShardsNginx(tmp_path / "shards", ["s1.fd.test"], standin.port, token="t").start()
    ...
    shards.stop(); standin.stop()
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from helpers.ports import free_port

NGINX = "/usr/sbin/nginx"


class OccupancyStandin:
    """Prosody census, JVB stats and jicofo health of many shards, on one loopback port.

    Paths: /<shard>/room-census, /<shard>/colibri/stats, /<shard>/about/health.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.rooms: dict[str, dict[str, int]] = {}
        self.created: dict[str, dict[str, float]] = {}  # shard -> room -> Unix seconds (else 1700000000 + i)
        self.stress: dict[str, float] = {}
        self.down: set[str] = set()  # answer 502 on everything
        self.unhealthy: set[str] = set()  # jicofo health 500
        self.server: ThreadingHTTPServer | None = None

    # -- control
    def set_rooms(self, shard: str, rooms: dict[str, int], created: dict[str, float] | None = None) -> None:
        """A shard's rooms (name -> participants); `created`: when some of them started (Unix seconds)."""
        with self.lock:
            self.rooms[shard] = dict(rooms)
            self.created[shard] = dict(created or {})

    def set_stress(self, shard: str, stress: float) -> None:
        with self.lock:
            self.stress[shard] = stress

    def set_down(self, shard: str, down: bool = True) -> None:
        with self.lock:
            (self.down.add if down else self.down.discard)(shard)

    # -- answers
    def answer(self, path: str, host: str = "") -> tuple[int, dict]:
        """Paths /<shard>/<what>, or /<what> for the shard named by the Host header (as prosody does)."""
        parts = path.strip("/").split("/", 1)
        if path in ("/room-census", "/colibri/stats", "/about/health"):
            parts = [host.split(":")[0], path.strip("/")]
        if len(parts) != 2:
            return 404, {}
        shard, what = parts
        with self.lock:
            if shard in self.down:
                return 502, {}
            rooms = dict(self.rooms.get(shard, {}))
            created = dict(self.created.get(shard, {}))
            stress = self.stress.get(shard, 0.0)
            healthy = shard not in self.unhealthy
        participants = sum(rooms.values())
        if what == "room-census":
            domain = f"conference.{shard}"
            return 200, {"room_census": [{"room_name": f"{name}@{domain}", "participants": n,
                                          # mod_muc_census counts milliseconds
                                          "created_time": round(created[name] * 1000) if name in created
                                          else 1700000000 + i, "leaked": False}
                                         for i, (name, n) in enumerate(sorted(rooms.items()))]}
        if what == "colibri/stats":
            return 200, {"conferences": len(rooms), "participants": participants, "endpoints": participants,
                         "largest_conference": max(rooms.values(), default=0), "stress_level": stress,
                         "drain": False, "graceful_shutdown": False, "healthy": True}
        if what == "about/health":
            return (200, {}) if healthy else (500, {})
        return 404, {}

    def start(self) -> OccupancyStandin:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                status, body = standin.answer(self.path, self.headers.get("Host", ""))
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        # shutdown() waits for serve_forever's next poll: 0.05 s, not the default 0.5 s, per stand-in stopped
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server:
            self.server.shutdown()
            self.server.server_close()


# ---------------------------------------------------------------- real nginx instances

def exited(pid: int) -> bool:
    """True once `pid` has exited: gone, or a zombie. nginx daemonizes, so its master is init's child and
    stays a zombie until init reaps it; some inits (this CI's VM init) reap only about once a second, and
    `os.kill(pid, 0)` succeeds on a zombie: waiting for that cost over a second per nginx stopped."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat.rsplit(") ", 1)[-1][:1] in ("Z", "X")


def nginx_main_conf(prefix: Path, body: str) -> str:
    """A complete nginx.conf for an instance living under prefix (own pid, logs, temp dirs)."""
    return f"""user root root;  # test files live under pytest's private (0700) temporary folders
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
{body}
}}
"""


class NginxInstance:
    """A real nginx started with its own prefix and config; stopped (and waited for) by stop()."""

    def __init__(self, prefix: Path) -> None:
        self.prefix = prefix
        (prefix / "tmp").mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"

    def command(self, *args: str) -> tuple[str, ...]:
        return (NGINX, "-p", str(self.prefix), "-c", str(self.conf), *args)

    def start(self) -> NginxInstance:
        subprocess.run(self.command(), check=True, capture_output=True, text=True)
        return self

    def master_pid(self) -> int:
        return int((self.prefix / "nginx.pid").read_text().strip())

    def reload_and_wait(self) -> None:
        """Reload and wait until the old workers are gone (new config fully in service)."""
        before = self.worker_pids()
        subprocess.run(self.command("-s", "reload"), check=True, capture_output=True)
        self.wait_workers_replaced(before)

    def worker_pids(self) -> set[int]:
        from ensemble.frontdoor.refresh import nginx_workers  # what the refresher itself watches

        return nginx_workers(str(self.prefix / "nginx.pid"))

    def wait_workers_replaced(self, before: set[int], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = self.worker_pids()
            if now and not (now & before):
                return
            time.sleep(0.05)
        raise TimeoutError("nginx workers were not replaced after reload")

    def stop(self) -> None:
        """Fast shutdown (SIGTERM), then wait until the master has exited (milliseconds)."""
        try:
            pid = self.master_pid()
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if exited(pid):
                return
            time.sleep(0.01)
        os.kill(pid, signal.SIGKILL)


OCCUPANCY_GUARD = "auth_request /_ensemble/auth;"  # as templates/nginx/site.conf.j2 (the occupancy tag)


def occupancy_auth_location(token: str) -> str:
    """The internal location checking the front door's occupancy tag, as templates/nginx/site.conf.j2 does."""
    return f"""location = /_ensemble/auth {{
        internal;
        set $occupancy_tag "";
        if ($http_authorization ~ "^Ensemble ([A-Za-z0-9_-]{{22}},[0-9]{{1,12}})$") {{ set $occupancy_tag $1; }}
        secure_link $occupancy_tag;
        secure_link_md5 "$secure_link_expires$request_uri$host {token}";
        if ($secure_link != "1") {{ return 403; }}
        return 204;
    }}"""


def shard_servers_conf(shards: list[str], port: int, standin_port: int, token: str, state_dir: Path) -> str:
    """nginx servers playing the shards: room pages naming the shard, and the private locations."""
    blocks = []
    for shard in shards:
        guard = OCCUPANCY_GUARD
        blocks.append(f"""
server {{
    listen 127.0.0.1:{port};
    server_name {shard};
    default_type text/plain;
    {occupancy_auth_location(token)}
    location = /_ensemble/census {{ {guard} proxy_pass http://127.0.0.1:{standin_port}/{shard}/room-census; }}
    location = /_ensemble/stats {{ {guard} proxy_pass http://127.0.0.1:{standin_port}/{shard}/colibri/stats; }}
    location = /_ensemble/health {{ {guard} proxy_pass http://127.0.0.1:{standin_port}/{shard}/about/health; }}
    location = /_ensemble/state {{ {guard} default_type application/json; alias {state_dir}/{shard}.json; }}
    location = /http-bind {{ return 200 "shard={shard} bosh room=$arg_room\\n"; }}
    location = /xmpp-websocket {{ return 200 "shard={shard} websocket room=$arg_room\\n"; }}
    location / {{
        default_type text/html;
        return 200 "<!DOCTYPE html><html><head><title>shard={shard}</title></head>
<body>shard={shard} page=$uri</body></html>\\n";
    }}
}}""")
    return "\n".join(blocks)


class ShardsNginx(NginxInstance):
    """One real nginx playing every shard of a test fleet on one loopback port (by server_name)."""

    def __init__(self, prefix: Path, shards: list[str], standin_port: int, token: str) -> None:
        super().__init__(prefix)
        self.port = free_port()
        self.state_dir = prefix / "state"
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(nginx_main_conf(prefix, shard_servers_conf(shards, self.port, standin_port, token,
                                                                          self.state_dir)))

    def state_file(self, shard: str) -> Path:
        return self.state_dir / f"{shard}.json"


# ---------------------------------------------------------------- the front door under test

class FrontdoorUnderTest(NginxInstance):
    """The generated front door (ensemble.frontdoor.render) served by a real nginx on loopback.

    Shards are reached at http://<shard>:<shards.port> (redirects) or 127.0.0.1:<shards.port> (proxy).
    """

    def __init__(self, prefix: Path, spec, shards: ShardsNginx, token: str) -> None:
        from ensemble.frontdoor.occupancy import OccupancySource
        from ensemble.frontdoor.refresh import NginxControl
        from ensemble.frontdoor.render import FrontdoorLayout, frontdoor_files, routing_conf, seed_plan

        super().__init__(prefix)
        self.spec = spec
        self.port = free_port()
        names = spec.shard_names()
        self.layout = FrontdoorLayout(
            site_path=str(prefix / "conf/site.conf"), proxy_params_path=str(prefix / "conf/proxy.conf"),
            routing_path=str(prefix / "var/routing.conf"), seed_path=str(prefix / "conf/routing.seed.conf"),
            state_path=str(prefix / "var/state.json"), metrics_path=str(prefix / "var/metrics.prom"),
            webroot=str(prefix / "www"),
            routes_log=str(prefix / "logs/routes.log"), listen=(f"127.0.0.1:{self.port}",), tls=False,
            shard_scheme="http", shard_port=shards.port,
            shard_addresses={n: f"127.0.0.1:{shards.port}" for n in names})
        for item in frontdoor_files(spec, {}, None, self.layout):
            if item.path.startswith(str(prefix)):
                Path(item.path).parent.mkdir(parents=True, exist_ok=True)
                Path(item.path).write_text(item.content, encoding="utf-8")
        (prefix / "logs").mkdir(exist_ok=True)
        Path(self.layout.routing_path).parent.mkdir(parents=True, exist_ok=True)
        Path(self.layout.routing_path).write_text(routing_conf(seed_plan(spec), spec, self.layout))
        self.conf.write_text(nginx_main_conf(prefix, f"    include {self.layout.site_path};"))
        self.source = OccupancySource(token=token, urls={n: f"http://127.0.0.1:{shards.port}" for n in names})
        self.shard_hosts = shards
        self.nginx = NginxControl(test=self.command("-t", "-q"), reload=self.command("-s", "reload"),
                                  reopen=self.command("-s", "reopen"), pid_file=str(prefix / "nginx.pid"))
        self.clock = time.time()  # the refresher's clock: tests move it forward explicitly

    def refresh(self, advance: float | None = None):
        """One real refresh (HTTP reads through the shards' nginx); waits until a reload is in service."""
        from ensemble.frontdoor.refresh import refresh

        self.clock += self.spec.frontdoor.refresh_interval if advance is None else advance
        before = self.worker_pids()
        result = refresh(self.spec, self.layout, self.source, self.nginx, now=self.clock)
        if result.reloaded:
            self.wait_workers_replaced(before)
        return result


class Client:
    """Keep-alive HTTP/1.1 client to one loopback port; returns (status, Location or body)."""

    def __init__(self, port: int, host: str) -> None:
        import http.client

        self.host = host
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)

    def get(self, path: str, headers: dict | None = None) -> tuple[int, str]:
        import http.client

        for attempt in (1, 2):  # an idle keep-alive connection is closed by a reload: reconnect once
            try:
                self.conn.request("GET", path, headers={"Host": self.host, **(headers or {})})
                response = self.conn.getresponse()
                break
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                if attempt == 2:
                    raise
        body = response.read().decode("utf-8", "replace")
        return response.status, response.getheader("Location") or body

    def close(self) -> None:
        self.conn.close()
