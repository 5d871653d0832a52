"""STAND-IN for the Scaleway Instance, Marketplace and Block APIs (tests only).

A small stateful HTTP server on 127.0.0.1 (ephemeral port) that the real `scaleway` SDK
talks to through its API URL setting (`SCW_API_URL`). It keeps servers, IPs, SBS volumes,
security groups and user data; paginates honestly; moves servers starting -> running and
stopping -> gone on timers; enforces the real teardown order (an SBS volume is deletable once
its server is gone, a security group once no server uses it); and injects faults (429 with
Retry-After, 5xx, HTML 502, slow responses, dropped connections, quota errors, the Nth create failing).

Server addresses are handed out on 127.0.10.0/24: tests run a real sshd there (see
`on_running`), so nothing ever tries to reach a public or foreign private address.

Example::

    api = ScalewayStandIn(secret_key=SECRET, project_id=PROJECT).start()
    os.environ["SCW_API_URL"] = api.url
    api.inject(method="POST", path=r"/servers$", status=429, retry_after=1, times=2)
    ...
    api.stop()
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

IMAGE_LABELS = ("debian_bullseye", "debian_bookworm", "debian_trixie", "ubuntu_focal", "ubuntu_jammy",
                "ubuntu_noble")
SBS_TYPES = ("PRO2-XXS", "PRO2-XS", "PRO2-S", "PRO2-M", "PRO2-L", "POP2-2C-8G", "POP2-4C-16G", "PLAY2-NANO")
LOCAL_TYPES = ("DEV1-S", "DEV1-M", "GP1-XS")


@dataclass
class Fault:
    """One injected fault: requests matching method + path regex get `status` (or a delay)."""

    method: str
    path: str
    status: int = 500
    times: int | None = 1  # None = forever
    nth: int | None = None  # only the nth matching request (1-based)
    retry_after: int | None = None
    html: bool = False
    delay: float = 0.0
    body: dict | None = None
    drop: bool = False  # close the connection without an answer (a connection error for the client)
    seen: int = 0
    fired: int = 0

    def applies(self, method: str, path: str) -> bool:
        if method != self.method or not re.search(self.path, path):
            return False
        self.seen += 1
        if self.nth is not None:
            return self.seen == self.nth
        return self.times is None or self.fired < self.times


class ApiError(Exception):
    def __init__(self, status: int, kind: str, message: str, **extra):
        super().__init__(message)
        self.status, self.body = status, {"type": kind, "message": message, **extra}


def _now() -> str:
    return datetime.now(UTC).isoformat()


@dataclass
class StandInState:
    servers: dict[str, dict] = field(default_factory=dict)
    ips: dict[str, dict] = field(default_factory=dict)
    volumes: dict[str, dict] = field(default_factory=dict)
    security_groups: dict[str, dict] = field(default_factory=dict)
    user_data: dict[tuple[str, str], bytes] = field(default_factory=dict)


class ScalewayStandIn:
    """The stand-in server. `boot_delay` = seconds in `starting`; `page_size` = default per_page."""

    def __init__(self, *, secret_key: str, project_id: str, boot_delay: float = 0.3,
                 page_size: int = 3, latency: float = 0.0, address_prefix: str = "127.0.10."):
        self.secret_key, self.project_id = secret_key, project_id
        self.boot_delay, self.page_size, self.latency = boot_delay, page_size, latency
        self.address_prefix = address_prefix
        self.state = StandInState()
        self.faults: list[Fault] = []
        self.quotas: dict[str, int] = {}  # e.g. {"servers": 3}
        self.requests: list[tuple[str, str, int]] = []  # (method, path, status) served
        self.on_running = None  # callback(server dict, user data bytes) when a server is running
        self.on_gone = None  # callback(server dict) when a server is deleted
        self.lock = threading.RLock()
        self._next_address = 10
        self._timers: list[threading.Timer] = []
        self._httpd: ThreadingHTTPServer | None = None

    # ---- life cycle ----
    def start(self) -> ScalewayStandIn:
        handler = type("Handler", (_Handler,), {"api": self})
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        # stop()'s shutdown() waits for serve_forever's next poll: 0.05 s, not the default 0.5 s, per test
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def stop(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()

    # ---- test controls ----
    def inject(self, method: str, path: str, **kwargs) -> Fault:
        fault = Fault(method=method, path=path, **kwargs)
        self.faults.append(fault)
        return fault

    def resource_count(self) -> dict[str, int]:
        s = self.state
        return {"servers": len(s.servers), "ips": len(s.ips), "volumes": len(s.volumes),
                "security_groups": len(s.security_groups)}

    def add_foreign_server(self, name: str, tags: list[str], created: str | None = None) -> dict:
        """A server made outside ensemble (e.g. another team's), to prove it is left alone."""
        with self.lock:
            server = self._new_server({"name": name, "commercial_type": "PRO2-XXS", "tags": tags,
                                       "image": self._images()[0]["id"]}, "fr-par-1")
            if created:
                server["creation_date"] = created
            return server

    def _later(self, delay: float, fn) -> None:
        timer = threading.Timer(delay, fn)
        timer.daemon = True
        self._timers.append(timer)
        timer.start()

    # ---- catalogue ----
    def _images(self) -> list[dict]:
        images = []
        for zone in ("fr-par-1", "fr-par-2", "nl-ams-1", "pl-waw-1"):
            for label in IMAGE_LABELS:
                for kind, types in (("instance_sbs", SBS_TYPES), ("instance_local", LOCAL_TYPES)):
                    ident = str(uuid.uuid5(uuid.NAMESPACE_URL, f"{zone}/{label}/{kind}"))
                    images.append({"id": ident, "label": label, "zone": zone, "arch": "x86_64",
                                   "type": kind, "compatible_commercial_types": list(types)})
        return images

    # ---- resources ----
    def _check_quota(self, resource: str, current: int, name: str) -> None:
        limit = self.quotas.get(resource)
        if limit is not None and current >= limit:
            raise ApiError(403, "quotas_exceeded", "Quotas exceeded: " + name,
                           details=[{"resource": name, "quota": limit, "current": current}])

    def _new_server(self, body: dict, zone: str) -> dict:
        self._check_quota("servers", len(self.state.servers), "instances_servers")
        for key in ("commercial_type", "image"):
            if not body.get(key):
                raise ApiError(400, "invalid_arguments", "Validation Error", fields={key: ["required"]})
        if body["image"] not in {i["id"] for i in self._images()}:
            raise ApiError(404, "not_found", f"image {body['image']} not found")
        sid = str(uuid.uuid4())
        address = f"{self.address_prefix}{self._next_address}"
        self._next_address += 1
        volumes = {}
        for index, template in (body.get("volumes") or {}).items():
            vid = str(uuid.uuid4())
            self.state.volumes[vid] = {"id": vid, "name": f"{body['name']}-vol-{index}", "type": "sbs_5k",
                                       "size": template.get("size", 10_000_000_000), "status": "in_use",
                                       "tags": [], "zone": zone, "project_id": self.project_id,
                                       "created_at": _now(), "references": [{"product_resource_id": sid}]}
            volumes[index] = {"id": vid, "volume_type": "sbs_volume", "zone": zone, "state": "available"}
        public_ips = []
        for ip_id in body.get("public_ips") or []:
            ip = self.state.ips.get(ip_id)
            if ip is None:
                raise ApiError(404, "not_found", f"ip {ip_id} not found")
            ip["server"] = {"id": sid, "name": body["name"]}
            public_ips.append(ip)
        server = {"id": sid, "name": body.get("name", sid), "commercial_type": body["commercial_type"],
                  "state": "stopped", "tags": list(body.get("tags") or []), "zone": zone,
                  "project": body.get("project") or self.project_id, "organization": self.project_id,
                  "image": {"id": body["image"]}, "volumes": volumes, "routed_ip_enabled": True,
                  "security_group": {"id": body.get("security_group"), "name": ""},
                  "creation_date": _now(), "modification_date": _now(), "private_ip": None,
                  "_address": address, "public_ips": public_ips}
        self.state.servers[sid] = server
        return server

    def _server_view(self, server: dict) -> dict:
        view = {k: v for k, v in server.items() if not k.startswith("_")}
        ips = [self.state.ips[i["id"]] for i in server["public_ips"] if i["id"] in self.state.ips]
        view["public_ips"] = [{"id": ip["id"], "address": ip["address"] or ip["prefix"].split("/")[0],
                               "family": "inet6" if ip["prefix"] else "inet", "dynamic": False,
                               "netmask": ip["prefix"].split("/")[1] if ip["prefix"] else "32",
                               "provisioning_mode": "dhcp", "tags": ip["tags"], "state": "attached"} for ip in ips]
        view["public_ip"] = view["public_ips"][0] if view["public_ips"] else None
        return view

    def _new_ip(self, body: dict, zone: str) -> dict:
        self._check_quota("ips", len(self.state.ips), "instances_ip")
        kind = body.get("type") or "routed_ipv4"
        iid = str(uuid.uuid4())
        if kind == "routed_ipv6":
            address, prefix = None, f"fd00:10::{len(self.state.ips) + 1:x}:0/64"
        else:
            address, prefix = f"{self.address_prefix}{self._next_address}", None
            self._next_address += 1
        ip = {"id": iid, "address": address, "prefix": prefix, "type": kind, "tags": list(body.get("tags") or []),
              "zone": zone, "project": body.get("project") or self.project_id, "organization": self.project_id,
              "server": None, "state": "detached", "reverse": None}
        self.state.ips[iid] = ip
        if body.get("server"):
            server = self._get("servers", body["server"])
            ip["server"] = {"id": server["id"], "name": server["name"]}
            server["public_ips"].append(ip)
        return ip

    def _power_on(self, server: dict) -> None:
        server["state"] = "starting"
        sid = server["id"]

        def running():
            with self.lock:
                current = self.state.servers.get(sid)
                if current is None or current["state"] != "starting":
                    return
                current["state"] = "running"
            if self.on_running:
                self.on_running(self._ssh_address(current), self.state.user_data.get((sid, "cloud-init"), b""))

        self._later(self.boot_delay, running)

    def _ssh_address(self, server: dict) -> str:
        for ip in server["public_ips"]:
            ip = self.state.ips.get(ip["id"], ip)
            if ip.get("address"):
                return ip["address"]
        return server["_address"]

    def _terminate(self, server: dict) -> None:
        server["state"] = "stopping"
        sid = server["id"]

        def gone():
            with self.lock:
                current = self.state.servers.pop(sid, None)
                if current is None:
                    return
                for ip in current["public_ips"]:
                    if ip["id"] in self.state.ips:
                        self.state.ips[ip["id"]]["server"] = None
                for vol in current["volumes"].values():  # SBS volumes are only detached
                    if vol["id"] in self.state.volumes:
                        self.state.volumes[vol["id"]]["status"] = "available"
                        self.state.volumes[vol["id"]]["references"] = []
                self.state.user_data = {k: v for k, v in self.state.user_data.items() if k[0] != sid}
            if self.on_gone:
                self.on_gone(self._ssh_address(current))

        self._later(self.boot_delay, gone)

    def _get(self, kind: str, ident: str) -> dict:
        item = getattr(self.state, kind).get(ident)
        if item is None:
            raise ApiError(404, "unknown_resource", f"{kind[:-1]} {ident} not found", resource=kind[:-1])
        return item

    # ---- routing ----
    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        zone_path = re.match(r"^/(instance|block)/v1/zones/([a-z]{2}-[a-z]{3}-\d)(/.*)$", path)
        with self.lock:
            if path.startswith("/marketplace/v2/local-images"):
                return self._list_images(query)
            if not zone_path:
                raise ApiError(404, "not_found", f"no route {method} {path}")
            product, zone, rest = zone_path.groups()
            if product == "block":
                return self._block(method, rest, query, body)
            return self._instance(method, rest, query, body, zone)

    def _page(self, key: str, items: list[dict], query: dict) -> tuple[int, dict]:
        page = int(query.get("page", ["1"])[0])
        per_page = int(query.get("per_page", query.get("page_size", [str(self.page_size)]))[0])
        chunk = items[(page - 1) * per_page: page * per_page]
        return 200, {key: chunk, "total_count": len(items)}

    @staticmethod
    def _filter_tags(items: list[dict], query: dict, any_of: bool = False) -> list[dict]:
        """Instance lists keep items carrying every tag asked; Block's volume list (`any_of`) keeps items
        carrying one or more of them (as each API documents its `tags` filter)."""
        wanted = [t for value in query.get("tags", []) for t in value.split(",") if t]
        if any_of and wanted:
            return [i for i in items if any(t in i.get("tags", []) for t in wanted)]
        return [i for i in items if all(t in i.get("tags", []) for t in wanted)]

    def _list_images(self, query: dict) -> tuple[int, dict]:
        items = self._images()
        for param, key in (("image_label", "label"), ("zone", "zone"), ("type", "type")):
            if query.get(param):
                items = [i for i in items if i[key] == query[param][0]]
        return self._page("local_images", items, query)

    def _instance(self, method: str, rest: str, query: dict, body: Any, zone: str) -> tuple[int, Any]:
        parts = rest.strip("/").split("/")
        kind = parts[0]
        if kind == "servers":
            return self._servers(method, parts[1:], query, body, zone)
        if kind == "ips":
            if method == "POST" and len(parts) == 1:
                return 201, {"ip": self._new_ip(body, zone)}
            if method == "GET" and len(parts) == 1:
                return self._page("ips", self._filter_tags(list(self.state.ips.values()), query), query)
            ip = self._get("ips", parts[1])
            if method == "GET":
                return 200, {"ip": ip}
            if method == "DELETE":
                del self.state.ips[ip["id"]]
                return 204, None
        if kind == "security_groups":
            return self._security_groups(method, parts[1:], query, body, zone)
        raise ApiError(404, "not_found", f"no route {method} {rest}")

    def _servers(self, method: str, parts: list[str], query: dict, body: Any, zone: str) -> tuple[int, Any]:
        if not parts:
            if method == "POST":
                return 201, {"server": self._server_view(self._new_server(body, zone))}
            items = self._filter_tags(list(self.state.servers.values()), query)
            if query.get("name"):
                items = [s for s in items if query["name"][0] in s["name"]]
            return self._page("servers", [self._server_view(s) for s in items], query)
        server = self._get("servers", parts[0])
        if len(parts) == 1:
            if method == "GET":
                return 200, {"server": self._server_view(server)}
            if method == "DELETE":
                if server["state"] != "stopped":
                    raise ApiError(400, "invalid_request_error", "server should be stopped")
                self._terminate(server)
                return 204, None
        if parts[1:2] == ["action"] and method == "POST":
            action = body.get("action")
            if action == "poweron":
                self._power_on(server)
            elif action == "terminate":
                self._terminate(server)
            elif action == "poweroff":
                server["state"] = "stopped"
            else:
                raise ApiError(400, "invalid_arguments", "Validation Error", fields={"action": ["unknown"]})
            return 202, {"task": {"id": str(uuid.uuid4()), "description": action, "status": "pending"}}
        if parts[1:2] == ["user_data"] and len(parts) == 3:
            if method == "PATCH":
                self.state.user_data[(server["id"], parts[2])] = body
                return 204, None
            if method == "GET":
                if (server["id"], parts[2]) not in self.state.user_data:
                    raise ApiError(404, "not_found", f"user data {parts[2]} not found")
                return 200, self.state.user_data[(server["id"], parts[2])]
        raise ApiError(404, "not_found", f"no route {method} servers/{'/'.join(parts)}")

    def _security_groups(self, method: str, parts: list[str], query: dict, body: Any, zone: str):
        if not parts:
            if method == "POST":
                gid = str(uuid.uuid4())
                group = {"id": gid, "name": body["name"], "tags": list(body.get("tags") or []), "rules": [],
                         "stateful": body.get("stateful"), "zone": zone, "project": self.project_id,
                         "inbound_default_policy": body.get("inbound_default_policy"),
                         "outbound_default_policy": body.get("outbound_default_policy"),
                         "creation_date": _now(), "servers": []}
                self.state.security_groups[gid] = group
                return 201, {"security_group": group}
            items = self._filter_tags(list(self.state.security_groups.values()), query)
            if query.get("name"):
                items = [g for g in items if g["name"] == query["name"][0]]
            return self._page("security_groups", items, query)
        group = self._get("security_groups", parts[0])
        if len(parts) == 2 and parts[1] == "rules":
            if method == "PUT":
                group["rules"] = [{"id": str(uuid.uuid4()), **r} for r in body.get("rules") or []]
                return 200, {"rules": group["rules"]}
            return self._page("rules", group["rules"], query)
        if method == "GET":
            return 200, {"security_group": group}
        if method == "DELETE":
            users = [s["name"] for s in self.state.servers.values() if s["security_group"]["id"] == group["id"]]
            if users:
                raise ApiError(409, "conflict", f"group is in use by {', '.join(users)}")
            del self.state.security_groups[group["id"]]
            return 204, None
        raise ApiError(404, "not_found", "no route")

    def _block(self, method: str, rest: str, query: dict, body: Any) -> tuple[int, Any]:
        parts = rest.strip("/").split("/")
        if parts[0] != "volumes":
            raise ApiError(404, "not_found", "no route")
        if len(parts) == 1:
            return self._page("volumes", self._filter_tags(list(self.state.volumes.values()), query, any_of=True),
                              query)
        volume = self._get("volumes", parts[1])
        if method == "GET":
            return 200, volume
        if method == "PATCH":
            if body.get("tags") is not None:
                volume["tags"] = list(body["tags"])
            return 200, volume
        if method == "DELETE":
            if volume["status"] != "available":
                raise ApiError(412, "precondition_failed", f"volume {volume['id']} is {volume['status']}")
            del self.state.volumes[volume["id"]]
            return 204, None
        raise ApiError(404, "not_found", "no route")


class _Handler(BaseHTTPRequestHandler):
    api: ScalewayStandIn
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # quiet: pytest shows failures, not access logs
        pass

    def _serve(self) -> None:
        api = self.api
        url = urlparse(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if api.latency:
            time.sleep(api.latency)
        fault = next((f for f in api.faults if f.applies(self.command, url.path)), None)
        if fault:
            fault.fired += 1
            if fault.delay:
                time.sleep(fault.delay)
            if fault.drop:
                self.close_connection = True
                self.connection.shutdown(2)
                return None
            if fault.status:
                return self._fault(fault, url.path)
        if self.headers.get("X-Auth-Token") != api.secret_key:
            return self._send(401, {"type": "denied_authentication", "message": "invalid authentication"},
                              url.path)
        body: Any = raw
        if raw and "user_data" not in url.path:
            body = json.loads(raw)
        try:
            status, payload = api.handle(self.command, url.path, parse_qs(url.query), body)
        except ApiError as exc:
            status, payload = exc.status, exc.body
        self._send(status, payload, url.path)

    def _fault(self, fault: Fault, path: str) -> None:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        if fault.html:
            data = b"<html><body><h1>502 Bad Gateway</h1></body></html>"
            self.api.requests.append((self.command, path, fault.status))
            return self._raw(fault.status, data, "text/html", headers)
        body = fault.body or {"type": "too_many_requests" if fault.status == 429 else "internal_error",
                              "message": f"injected {fault.status}"}
        self._send(fault.status, body, path, headers)

    def _send(self, status: int, payload: Any, path: str, headers: dict | None = None) -> None:
        self.api.requests.append((self.command, path, status))
        if payload is None:
            return self._raw(status, b"", "application/json", headers or {})
        if isinstance(payload, bytes):
            return self._raw(status, payload, "text/plain", headers or {})
        self._raw(status, json.dumps(payload).encode(), "application/json", headers or {})

    def _raw(self, status: int, data: bytes, ctype: str, headers: dict) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        for key, value in headers.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve
