"""Every file ensemble puts on a host, rendered from the spec and the secrets: pure, no network.

This module is the single source of file contents: `ensemble render` writes them into a folder
for review (``diff -r``), and the deploys put exactly the same bytes on the hosts. Templates live
in ``templates/<component>/`` (shipped as the package ``ensemble._templates``) and receive plain
values only (see `shard_context`).

When no hosts are known (rendering without a provider), addresses are documented placeholders
from the documentation/benchmarking ranges, so output stays deterministic:

==============  ================================  ==================================
host            public address                    local (interface) address
==============  ================================  ==================================
shard n<=253    203.0.113.n (TEST-NET-3)          192.0.2.n (TEST-NET-1)
shard n>253     198.18.0.0 + n (RFC 2544)         198.19.0.0 + n (RFC 2544)
front door      198.51.100.1 (TEST-NET-2)         198.51.100.1
==============  ================================  ==================================

Example::

    spec = load_spec("examples/ensemble.toml")
    files = shard_files(spec, 1, secrets)              # [RenderedFile(path="/etc/jitsi/...", ...), ...]
    render_fleet_to(spec, secrets, Path("/tmp/r"))     # /tmp/r/demo-1.meet.example.org/etc/...
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path

from ensemble import paths
from ensemble.errors import EnsembleError, UsageError
from ensemble.hostfiles import base_files
from ensemble.outtree import OwnedTree
from ensemble.providers.base import DeployEnv, Host
from ensemble.secrets import CA_ENTRY, FLEET_KEY, FLEET_SECRETS, SHARD_CERT, SHARD_KEY, SHARD_SECRETS, Secrets
from ensemble.spec import FleetSpec
from ensemble.templating import RenderedFile, render_template
from ensemble.turn import turn_context

JVB_BREWERY = "JvbBrewery"
FRONTDOOR_PLACEHOLDER = "198.51.100.1"
# Secrets go into quoted HOCON, nginx and JSON strings: only characters that need no escaping anywhere.
SAFE_SECRET = re.compile(r"[A-Za-z0-9._~-]{16,256}")

COMPONENTS = ("secrets", "apt", "upgrades", "firewall", "sysctl", "prosody-accounts", "frontdoor-program", "prosody",
              "jicofo", "jvb", "web", "nginx", "coturn", "etherpad", "tls", "frontdoor")
__all__ = ["RenderedFile", "render_template"]


# ---------------------------------------------------------------- facts: templates, addresses

def placeholder_host(spec: FleetSpec, n: int) -> Host:
    """A stand-in Host for shard n when the provider was not asked (see the module's table).

    Example::

        placeholder_host(spec, 2).public_ipv4     # "203.0.113.2"
    """
    if n <= 253:
        public, local = f"203.0.113.{n}", f"192.0.2.{n}"
    else:
        public = str(ipaddress.IPv4Address("198.18.0.0") + n)
        local = str(ipaddress.IPv4Address("198.19.0.0") + n)
    return Host(name=spec.shard_name(n), role="shard", shard=n, address=public,
                public_ipv4=public, private_ipv4=local, labels={"placeholder": "true"})


def placeholder_frontdoor(spec: FleetSpec) -> Host:
    """A stand-in Host for the front door (198.51.100.1).

    Example::

        placeholder_frontdoor(spec).address       # "198.51.100.1"
    """
    return Host(name=spec.fleet.domain, role="frontdoor", shard=None, address=FRONTDOOR_PLACEHOLDER,
                public_ipv4=FRONTDOOR_PLACEHOLDER, private_ipv4=FRONTDOOR_PLACEHOLDER,
                labels={"placeholder": "true"})


def host_addresses(host: Host) -> list[str]:
    """Every distinct address a host may use to reach a shard, in a stable order.

    Example::

        host_addresses(Host("fd", "frontdoor", None, "10.0.0.2", public_ipv4="203.0.113.9"))
        # ["10.0.0.2", "203.0.113.9"]
    """
    seen: list[str] = []
    for value in (host.address, host.public_ipv4, host.private_ipv4, host.ipv6):
        if value and value not in seen:
            seen.append(value)
    return seen


def _stun_host_port(server: str) -> str:
    """'stun:host:port' or 'host:port' -> 'host:port' (JVB's form); default port 3478."""
    bare = server.split(":", 1)[1] if server.startswith(("stun:", "stuns:")) else server
    return bare if ":" in bare else f"{bare}:3478"


def _prosody_series(spec: FleetSpec) -> str:
    """Which prosody the profile gets: "0.11" (legacy), "0.12" or "13" (OSProfile.prosody_series)."""
    return spec.profile.prosody_series


def _secret(secrets: Secrets, entry: str, name: str) -> str:
    """One secret, checked: present, and made of characters safe inside HOCON, nginx and JSON strings."""
    value = secrets.get(entry, {}).get(name)
    if not value:
        raise EnsembleError(f"secrets: no {name!r} in the {entry!r} entry; 'ensemble render' or deploy creates it")
    if not isinstance(value, str) or not SAFE_SECRET.fullmatch(value):
        # never echo the value: say what is wrong and what is valid
        raise UsageError(f"secrets: {entry}.{name} must be 16-256 characters of A-Z a-z 0-9 - _ . ~ "
                         "(no quotes, backslashes, $ or spaces); delete it to have a new one generated")
    return value


def _pem(secrets: Secrets, entry: str, name: str) -> str:
    """A PEM block of the store (the shard's occupancy certificate or key), checked to be one."""
    value = secrets.get(entry, {}).get(name)
    if not isinstance(value, str) or not value.startswith("-----BEGIN ") or not value.rstrip().endswith("-----"):
        raise EnsembleError(f"secrets: no PEM {name!r} in the {entry!r} entry; 'ensemble render' or deploy creates it")
    return value


def _shard_secrets(secrets: Secrets, domain: str) -> dict[str, str]:
    """The secrets a shard's files need; a missing or unsafe one is an error naming it (never its value)."""
    values = {name: _secret(secrets, domain, name) for name in SHARD_SECRETS}
    values.update({name: _secret(secrets, FLEET_KEY, name) for name in FLEET_SECRETS})
    return values


def shard_context(spec: FleetSpec, n: int, secrets: Secrets, host: Host | None = None,
                  frontdoor: Host | None = None) -> dict:
    """Everything a shard's templates may use, as plain values (strings, numbers, lists, dicts).

    Example::

        ctx = shard_context(spec, 1, secrets)
        ctx["domain"], ctx["public_ipv4"]          # ("demo-1.meet.example.org", "203.0.113.1")
    """
    domain = spec.shard_name(n)
    host = host or placeholder_host(spec, n)
    frontdoor = frontdoor or placeholder_frontdoor(spec)
    public = host.public_ipv4 or host.address
    local = host.private_ipv4 or host.address
    j = spec.jitsi
    third_party_ok = not j.disable_third_party_requests
    return {
        "domain": domain,
        "shard_number": n,
        "fleet_name": spec.fleet.name,
        "frontdoor_domain": spec.fleet.domain,
        "frontdoor_mode": spec.frontdoor.mode,
        "frontdoor_addresses": host_addresses(frontdoor),
        "public_ipv4": public,
        "local_ipv4": local,
        "nat_mapping": public != local,
        "profile": {"name": spec.profile.name, "codename": spec.profile.codename, "legacy": spec.profile.legacy,
                    "prosody": _prosody_series(spec)},
        "jitsi_version": spec.jitsi_version,
        "secrets": _shard_secrets(secrets, domain),
        "jitsi": {
            "language": j.language,
            "etherpad": j.etherpad,
            "gravatar": j.gravatar and third_party_ok,
            "gravatar_base_url": j.gravatar_base_url,
            "max_resolution": j.max_resolution,
            "min_resolution": j.min_resolution,
            "channel_last_n": j.channel_last_n,
            "lobby": j.lobby,
            "password_ui": j.password_ui,
            "require_display_name": j.require_display_name,
            "prejoin": j.prejoin,
            "p2p": j.p2p,
            "disable_third_party_requests": j.disable_third_party_requests,
            "stun_servers": [_stun_host_port(s) for s in j.stun_servers],
        },
        "etherpad": {"port": spec.etherpad.port, "database": spec.etherpad.database,
                     "home": paths.ETHERPAD_HOME, "conf_dir": paths.ETHERPAD_CONF_DIR,
                     "state_dir": paths.ETHERPAD_STATE_DIR},
        "tls": {"mode": spec.tls.mode, "cert": f"{paths.TLS_DIR}/{domain}/fullchain.pem",
                "key": f"{paths.TLS_DIR}/{domain}/privkey.pem", "webroot": paths.ACME_WEBROOT},
        "ports": {"prosody_http": paths.PROSODY_HTTP_PORT, "jvb_private": paths.JVB_PRIVATE_PORT,
                  "jicofo_rest": paths.JICOFO_REST_PORT, "occupancy": paths.OCCUPANCY_PORT},
        "occupancy_tls": {"cert": paths.OCCUPANCY_TLS_CERT, "key": paths.OCCUPANCY_TLS_KEY},
        # relayed media leaves from the host's own address (coturn would otherwise relay from the
        # address a client reached it on: 127.0.0.1 behind the 443 multiplexer)
        "turn": {**turn_context(spec, domain), "relay_ips": [local, *([host.ipv6] if host.ipv6 else [])]},
        "brewery_jid": f"{JVB_BREWERY}@internal.auth.{domain}",
        "state_file": paths.STATE_FILE,
    }


# ---------------------------------------------------------------- actions: rendering

def _file(template: str, ctx: dict, path: str, component: str, service: str | None, mode: int = 0o644,
          owner: str = "root", group: str = "root") -> RenderedFile:
    return RenderedFile(path=path, content=render_template(template, ctx), mode=mode, owner=owner,
                        group=group, component=component, service=service)


def shard_files(spec: FleetSpec, n: int, secrets: Secrets, host: Host | None = None,
                frontdoor: Host | None = None) -> list[RenderedFile]:
    """Every file ensemble owns on shard n, in deploy order (prosody, jicofo, jvb, web, nginx, tls, etherpad).

    Example::

        [f.path for f in shard_files(spec, 1, secrets)][:1]   # ["/etc/prosody/conf.avail/demo-1...cfg.lua"]
    """
    ctx = shard_context(spec, n, secrets, host, frontdoor)
    d = ctx["domain"]
    out = [
        _file("prosody/jitsi-meet.cfg.lua.j2", ctx, f"/etc/prosody/conf.avail/{d}.cfg.lua", "prosody", "prosody",
              0o640, group="prosody"),
        # jicofo:jitsi and jvb:jitsi: the packages' postinsts chown their directories so on every upgrade
        _file("jicofo/jicofo.conf.j2", ctx, "/etc/jitsi/jicofo/jicofo.conf", "jicofo", "jicofo", 0o640,
              owner="jicofo", group="jitsi"),
        _file("jicofo/sip-communicator.properties.j2", ctx, "/etc/jitsi/jicofo/sip-communicator.properties",
              "jicofo", "jicofo", 0o640, owner="jicofo", group="jitsi"),
        _file("jvb/jvb.conf.j2", ctx, "/etc/jitsi/videobridge/jvb.conf", "jvb", "jitsi-videobridge2", 0o640,
              owner="jvb", group="jitsi"),
        _file("jvb/sip-communicator.properties.j2", ctx, "/etc/jitsi/videobridge/sip-communicator.properties",
              "jvb", "jitsi-videobridge2", 0o640, owner="jvb", group="jitsi"),
        _file("web/config.js.j2", ctx, f"/etc/jitsi/meet/{d}-config.js", "web", None),
        _file("nginx/ensemble-http.conf.j2", ctx, "/etc/nginx/conf.d/ensemble-http.conf", "nginx", "nginx"),
        # the private occupancy listener's certificate, issued by the fleet CA (ensemble.fleetca)
        RenderedFile(paths.OCCUPANCY_TLS_CERT, _pem(secrets, d, SHARD_CERT), 0o644, component="nginx",
                     service="nginx"),
        RenderedFile(paths.OCCUPANCY_TLS_KEY, _pem(secrets, d, SHARD_KEY), 0o600, component="nginx",
                     service="nginx"),
        # 0640: the site holds the fleet's occupancy token (nginx's master reads it as root).
        _file("nginx/site.conf.j2", ctx, f"/etc/nginx/sites-available/{d}.conf", "nginx", "nginx", 0o640),
    ]
    if spec.turn.enabled:
        out += [
            # 0640 root:turnserver: the shared secret; coturn drops to the turnserver user
            _file("coturn/turnserver.conf.j2", ctx, paths.COTURN_CONF, "coturn", "coturn", 0o640,
                  group="turnserver"),
            _file("coturn/nginx-stream.conf.j2", ctx, paths.NGINX_STREAM_CONF, "nginx", "nginx"),
        ]
    if spec.jitsi.etherpad:
        conf = paths.ETHERPAD_CONF_DIR
        out += [
            _file("etherpad/settings.json.j2", ctx, f"{conf}/settings.json", "etherpad", "etherpad", 0o640,
                  group="etherpad"),
            RenderedFile(f"{conf}/APIKEY.txt", ctx["secrets"]["etherpad_api_key"], 0o640, "root", "etherpad",
                         "etherpad", "etherpad"),
            RenderedFile(f"{conf}/SESSIONKEY.txt", ctx["secrets"]["etherpad_session_key"], 0o640, "root",
                         "etherpad", "etherpad", "etherpad"),
            _file("etherpad/etherpad.service.j2", ctx, "/etc/systemd/system/etherpad.service", "etherpad",
                  "etherpad"),
        ]
    return out


def resolve_hosts(spec: FleetSpec, hosts: list[Host] | None) -> tuple[list[Host], Host]:
    """Shard hosts 1..N and the front door: the provider's where known, placeholders otherwise.

    Example::

        shards, frontdoor = resolve_hosts(spec, None)    # all placeholders
    """
    by_shard = {h.shard: h for h in hosts or [] if h.role == "shard" and h.shard is not None}
    doors = [h for h in hosts or [] if h.role == "frontdoor"]
    shards = [by_shard.get(n) or placeholder_host(spec, n) for n in range(1, spec.fleet.shards + 1)]
    return shards, (doors[0] if doors else placeholder_frontdoor(spec))


def kept_secrets(store: Secrets, host: Host) -> dict[str, dict[str, str]]:
    """What a host keeps in /etc/ensemble/secrets.json: its own entry (shards) and the fleet entry.

    Example::

        sorted(kept_secrets(store, shard_host))    # ["demo-1.meet.example.org", "fleet"]
    """
    kept = {FLEET_KEY: dict(store[FLEET_KEY])}
    if host.role == "shard":
        kept[host.name] = dict(store[host.name])
    elif CA_ENTRY in store:
        kept[CA_ENTRY] = dict(store[CA_ENTRY])  # the fleet CA: on the front door, never on a shard
    return kept


def host_files(spec: FleetSpec, secrets: Secrets, host: Host, shards: list[Host], frontdoor: Host, *,
               env: DeployEnv | None = None, keyring: bytes | None = None,
               spec_shards: int | None = None) -> list[RenderedFile]:
    """Every file deploy puts on one host: its components' files and the base files (ensemble.hostfiles).

    `shards` and `frontdoor` are the whole fleet's hosts (a shard's nginx allows the front door's
    address; the front door routes to every shard), whatever subset is being deployed.

    Example::

        host_files(spec, store, shards[0], shards, door, env=provider.deploy_environment(spec))
    """
    from ensemble.frontdoor.render import frontdoor_files  # the front door's own module renders its files

    env = env or DeployEnv(spec=spec)
    if host.role == "frontdoor":
        own = list(frontdoor_files(spec, secrets, shards))
    else:
        own = shard_files(spec, host.shard, secrets, host, frontdoor)
    return [*base_files(spec, host, env, kept_secrets(secrets, host), keyring=keyring, spec_shards=spec_shards,
                        frontdoor_addresses=host_addresses(frontdoor)),
            *own]


def fleet_files(spec: FleetSpec, secrets: Secrets, hosts: list[Host] | None = None, *,
                env: DeployEnv | None = None, keyring: bytes | None = None) -> dict[str, list[RenderedFile]]:
    """Every file of every host, keyed by host name (shards, then the front door).

    Example::

        sorted(fleet_files(spec, secrets))   # ["demo-1.meet.example.org", ..., "meet.example.org"]
    """
    shards, frontdoor = resolve_hosts(spec, hosts)
    result = {h.name: host_files(spec, secrets, h, shards, frontdoor, env=env, keyring=keyring) for h in shards}
    result[frontdoor.name] = host_files(spec, secrets, frontdoor, shards, frontdoor, env=env, keyring=keyring)
    return result


def _check_relative(path: str) -> str:
    rel = path.lstrip("/")
    if not path.startswith("/") or ".." in Path(rel).parts or not rel:
        raise EnsembleError(f"render: refusing a file path that is not absolute and clean: {path!r}")
    return rel


def render_fleet_to(spec: FleetSpec, secrets: Secrets, out: Path, hosts: list[Host] | None = None, *,
                    env: DeployEnv | None = None, keyring: bytes | None = None) -> list[Path]:
    """Write out/<host>/<absolute path> for every host, with file modes; return the paths written.

    Byte-identical for the same spec and secrets. Host folders are 0700: they hold secrets.
    `out` is written through ensemble.outtree: symlinks in it are never followed, a non-empty
    folder an earlier render did not write is refused, and only files an earlier render wrote
    (and this one does not) are removed.

    Example::

        render_fleet_to(spec, secrets, Path("/tmp/r"))[0]   # /tmp/r/demo-1.meet.example.org/etc/prosody/...
    """
    planned: list[tuple[str, RenderedFile]] = []
    seen: set[str] = set()
    for host_name, rendered in fleet_files(spec, secrets, hosts, env=env, keyring=keyring).items():
        for item in sorted(rendered, key=lambda f: f.path):
            rel = f"{host_name}/{_check_relative(item.path)}"
            if rel in seen:
                raise EnsembleError(f"render: two files for {host_name}:{item.path}")
            seen.add(rel)
            planned.append((rel, item))
    tree = OwnedTree.open(out, "--out")
    try:
        tree.announce([rel for rel, _ in planned])
        for rel, item in planned:
            tree.write(rel, item.data, item.mode, top_mode=0o700)
        tree.finish()
    finally:
        tree.close()
    return [out / rel for rel, _ in planned]
