"""Every file of the front door host, and the routing maps the refresher rewrites. Pure, no I/O.

The static files (nginx site, proxy settings, landing page, error pages, systemd timer, and a seed
of the routing maps) come from the spec; the live routing maps (`routing_conf`) come from a
`RoutingPlan` (see selection.py) and are written by `ensemble frontdoor refresh`, never by a
deploy, so a redeploy cannot wipe live pins. Paths and listen addresses live in a
`FrontdoorLayout`: production defaults, tests point it at a prefix and loopback ports.

Example::

    files = frontdoor_files(spec, secrets, None)
    [f.path for f in files][:2]   # ["/etc/nginx/conf.d/ensemble-frontdoor.conf", ".../proxy_params.conf"]
    text = routing_conf(plan, spec, FrontdoorLayout())
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass, field
from importlib.resources import files as package_files
from pathlib import Path

from ensemble import paths
from ensemble.errors import EnsembleError
from ensemble.frontdoor.rooms import (
    KEY_PATTERN,
    MAX_KEY_LENGTH,
    MAX_RAW_LENGTH,
    PAGE_SEGMENT_PATTERN,
    SIMPLE_ROOM_PATTERN,
)
from ensemble.frontdoor.selection import RoutingPlan, ShardDecision
from ensemble.paths import ACME_WEBROOT, TLS_DIR
from ensemble.providers.base import Host
from ensemble.secrets import CA_ENTRY, Secrets
from ensemble.spec import FleetSpec
from ensemble.templating import RenderedFile, render_template

COMPONENT = "frontdoor"
FEW_CAPITALS = 12  # simple names with more capitals are keyed by the browser (canonicalising page)
JITSI_CAPITALS = 4  # Jitsi's generated names are four capitalised words: the fastest capitals path
PCRE_JIT_PATH = "/etc/nginx/modules-enabled/50-ensemble-pcre-jit.conf"  # main context on Debian

# nginx refuses to build a map whose longest key does not fit a hash bucket ("could not build map_hash"):
# an entry takes the pointer, 2 bytes and the key rounded up to 8, a bucket also ends with a pointer, and
# nginx rounds the size up to a cache line. A pin of the longest key (any client can make one) must load.
MAP_HASH_BUCKET_SIZE = -(-(8 + ((MAX_KEY_LENGTH + 2 + 7) // 8) * 8 + 8) // 64) * 64  # 1088
# keys nginx computes itself (a simple segment lower-cased): their pins are also looked up by the raw segment
SIMPLE_KEY = re.compile(SIMPLE_ROOM_PATTERN.replace("A-Za-z", "a-z"))

PCRE_JIT_CONF = "# Managed by ensemble: the front door's room regexes are compiled with PCRE's JIT.\npcre_jit on;\n"

# TLS 1.2 suites: ECDHE (forward secrecy) with AEAD ciphers (GCM, ChaCha20-Poly1305) only, as Mozilla's
# "intermediate" profile without its DHE suites; TLS 1.3 suites are all AEAD (OpenSSL's defaults).
TLS12_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256", "ECDHE-ECDSA-AES256-GCM-SHA384",
                 "ECDHE-RSA-AES256-GCM-SHA384", "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305")

LANDING_TEXT = {
    "fr": {"lang": "fr", "title": "Réunions vidéo",
           "lead": "Choisissez un nom de réunion ou laissez-nous en trouver un.",
           "label": "Nom de la réunion", "placeholder": "par exemple ReunionEquipe",
           "help": "Lettres, chiffres, tirets. Laissez vide pour un nom au hasard.",
           "button": "Lancer une réunion", "other_href": "/?lang=en", "other_lang": "en", "other_name": "English"},
    "en": {"lang": "en", "title": "Video meetings", "lead": "Pick a meeting name, or let us find one.",
           "label": "Meeting name", "placeholder": "for example TeamMeeting",
           "help": "Letters, digits, dashes. Leave empty for a random name.",
           "button": "Start a meeting", "other_href": "/", "other_lang": "fr", "other_name": "Français"},
}
ERROR_TEXT = {
    400: ("Nom de réunion invalide", "Invalid meeting name: use letters, digits and dashes."),
    503: ("Aucun serveur disponible pour le moment", "No server is available right now; please retry in a minute."),
    429: ("Trop de nouvelles réunions depuis votre adresse", "Too many new meetings from your address: please "
          "retry in a minute."),
}


@dataclass(frozen=True)
class FrontdoorLayout:
    """Where the front door's files live, how it listens and how it reaches shards.

    Production defaults; tests use a temporary prefix, loopback ports and plain http.

    Example::

        FrontdoorLayout(listen=("127.0.0.1:8080",), tls=False, shard_scheme="http", shard_port=8081)
    """

    site_path: str = "/etc/nginx/conf.d/ensemble-frontdoor.conf"
    pcre_jit_path: str = PCRE_JIT_PATH
    proxy_params_path: str = "/etc/nginx/ensemble-frontdoor-proxy.conf"
    routing_path: str = paths.ROUTING_PATH
    seed_path: str = paths.ROUTING_SEED
    state_path: str = paths.FRONTDOOR_STATE
    metrics_path: str = ""  # "": beside state_path (paths.FRONTDOOR_METRICS in production), see metrics_file
    webroot: str = "/usr/share/ensemble/frontdoor"
    routes_log: str = "/var/log/nginx/ensemble-routes.log"
    spec_path: str = paths.FRONTDOOR_SPEC
    secrets_path: str = paths.SECRETS_FILE
    fleet_ca_path: str = paths.FLEET_CA_CERT  # the refresher verifies every shard against it
    ensemble_bin: str = paths.ENSEMBLE_BIN
    listen: tuple[str, ...] = ("443 ssl http2", "[::]:443 ssl http2")
    http_listen: tuple[str, ...] = ("80", "[::]:80")  # the redirect to https (and ACME challenges), with tls
    tls: bool = True
    tls_dir: str = TLS_DIR  # <tls_dir>/<domain>/{fullchain,privkey}.pem, from the TLS deploy
    acme_webroot: str = ACME_WEBROOT
    shard_scheme: str = "https"
    shard_port: int | None = None  # None: the scheme's default port
    shard_addresses: dict[str, str] = field(default_factory=dict)  # proxy upstreams: shard -> host:port

    def metrics_file(self) -> str:
        """Where the refresher writes the Prometheus metrics: metrics_path, else metrics.prom beside the
        state file (a layout moved elsewhere for a test or a benchmark never writes to the system's path).

        Example::

            FrontdoorLayout().metrics_file()      # "/var/lib/ensemble/frontdoor/metrics.prom"
        """
        return self.metrics_path or str(Path(self.state_path).with_name(Path(paths.FRONTDOOR_METRICS).name))

    def shard_base(self, shard: str = "$fd_shard") -> str:
        """The URL prefix of a shard: https://<shard> (plus a port when not the default)."""
        port = f":{self.shard_port}" if self.shard_port else ""
        return f"{self.shard_scheme}://{shard}{port}"

    def upstream_address(self, shard: str) -> str:
        default_port = self.shard_port or (443 if self.shard_scheme == "https" else 80)
        return self.shard_addresses.get(shard, f"{shard}:{default_port}")


# ---------------------------------------------------------------- facts

LETSENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"


def fleet_ca_cert(secrets: Secrets) -> str:
    """The fleet CA's certificate (PEM) from the store; an error naming the entry when it is missing.

    Example::

        fleet_ca_cert(store).startswith("-----BEGIN CERTIFICATE-----")    # True
    """
    cert = secrets.get(CA_ENTRY, {}).get("cert")
    if not isinstance(cert, str) or not cert.startswith("-----BEGIN CERTIFICATE-----"):
        raise EnsembleError(f"secrets: no fleet CA certificate in the {CA_ENTRY!r} entry; "
                            "'ensemble render' or deploy creates it")
    return cert


def shard_certificates_trusted(spec: FleetSpec) -> bool:
    """Whether shards' certificates chain to the system's CAs, so the front door can verify them:
    provided ones, and Let's Encrypt's production CA; not self-signed, staging or another ACME CA.

    Example::

        shard_certificates_trusted(spec)     # True with tls.mode = "letsencrypt" (production)
    """
    tls = spec.tls
    if tls.mode == "provided":
        return True
    return tls.mode == "letsencrypt" and tls.directory_url == LETSENCRYPT_DIRECTORY


def _read_static(name: str) -> str:
    root = Path(str(package_files("ensemble._templates"))) / "frontdoor" / "webroot"
    return (root / name).read_text(encoding="utf-8")


def site_context(spec: FleetSpec, layout: FrontdoorLayout) -> dict:
    """Plain values for site.conf.j2.

    Example::

        site_context(spec, FrontdoorLayout())["mode"]     # "redirect"
    """
    domain = spec.fleet.domain
    return {
        "domain": domain,
        "mode": spec.frontdoor.mode,
        "routing_path": layout.routing_path,
        "proxy_params_path": layout.proxy_params_path,
        "routes_log": layout.routes_log,
        "metrics_path": layout.metrics_file(),
        "metrics_url_path": paths.METRICS_URL_PATH,
        "metrics_allowed": list(spec.frontdoor.metrics_allowed_cidrs),
        "webroot": layout.webroot,
        "listen": list(layout.listen),
        "http_listen": list(layout.http_listen),
        "tls12_ciphers": ":".join(TLS12_CIPHERS),
        "new_rooms_per_minute": spec.frontdoor.new_rooms_per_minute,
        "tls": layout.tls,
        "cert": f"{layout.tls_dir}/{domain}/fullchain.pem",
        "key": f"{layout.tls_dir}/{domain}/privkey.pem",
        "acme_webroot": layout.acme_webroot,
        "shard_base": layout.shard_base(),
        "pinned_page_base": layout.shard_base("$fd_pinned_page"),
        "shard_scheme": layout.shard_scheme,
        "shard_names": spec.shard_names(),
        "verify_tls": shard_certificates_trusted(spec),
        "simple_pattern": SIMPLE_ROOM_PATTERN,
        "key_pattern": KEY_PATTERN,
        "page_pattern": PAGE_SEGMENT_PATTERN,
        "few": FEW_CAPITALS,
        "jitsi_capitals": JITSI_CAPITALS,
        "max_length": MAX_RAW_LENGTH,
        "map_hash_bucket_size": MAP_HASH_BUCKET_SIZE,
        "capitals": list(range(1, FEW_CAPITALS + 1)),
        "letters": list(string.ascii_lowercase),
    }


def seed_plan(spec: FleetSpec) -> RoutingPlan:
    """The plan of a fleet whose shards are all ready and empty: equal split, no pins.

    Example::

        seed_plan(spec).split     # [("demo-1.meet.example.org", 5000), ("demo-2...", 5000)]
    """
    from ensemble.frontdoor.selection import to_units

    names = spec.shard_names()
    cap = spec.frontdoor.capacity_per_shard
    split = to_units([(n, 1.0) for n in names])
    units = dict(split)
    decisions = tuple(ShardDecision(name, "ready", "seed", 0, 0, 0.0, cap, units.get(name, 0), 0) for name in names)
    return RoutingPlan(shards=decisions, pins={}, split=split)


def routing_conf(plan: RoutingPlan, spec: FleetSpec, layout: FrontdoorLayout, seed: bool = False) -> str:
    """The live routing maps: pins, split of new rooms, and (proxy mode) one upstream per shard.

    Deterministic: same plan, same bytes (the refresher reloads nginx only when they change).

    Example::

        "split_clients" in routing_conf(seed_plan(spec), spec, FrontdoorLayout())   # True
    """
    names = [d.name for d in plan.shards] or spec.shard_names()
    return render_template("frontdoor/routing.conf.j2", {
        "seed": seed,
        "shards": plan.shards,
        "pins": list(plan.pins.items()),
        "simple_pins": [(key, shard) for key, shard in plan.pins.items()
                        if spec.frontdoor.mode == "redirect" and SIMPLE_KEY.fullmatch(key)],
        "split": plan.split,
        "mode": spec.frontdoor.mode,
        "upstreams": [(name, layout.upstream_address(name)) for name in names],
    })


# ---------------------------------------------------------------- the files

def frontdoor_files(spec: FleetSpec, secrets: Secrets, shards: list[Host] | None = None,
                    layout: FrontdoorLayout | None = None) -> list[RenderedFile]:
    """Every file ensemble owns on the front door host (the live routing maps excepted: see above).

    `shards` is accepted for symmetry with the shard renderers; routing follows the spec's shard
    names (the refresher on the front door host only has the spec). Of the secrets only the fleet
    CA's certificate (public) is used: the occupancy token is read by the refresher at run time,
    never written into nginx.

    Example::

        {f.path for f in frontdoor_files(spec, secrets)} >= {"/usr/share/ensemble/frontdoor/index.html"}
    """
    layout = layout or FrontdoorLayout()
    ctx = site_context(spec, layout)
    web = layout.webroot

    def file(path: str, content: str, service: str | None = "nginx", mode: int = 0o644) -> RenderedFile:
        return RenderedFile(path=path, content=content, mode=mode, component=COMPONENT, service=service)

    out = [
        # Debian's nginx is built with PCRE JIT but leaves it off: the room maps' regexes run 1.5-2x faster
        # with it. Debian's nginx.conf includes modules-enabled/*.conf in the main context, where it belongs.
        file(layout.pcre_jit_path, PCRE_JIT_CONF),
        file(layout.site_path, render_template("frontdoor/site.conf.j2", ctx)),
        file(layout.proxy_params_path, render_template("frontdoor/proxy_params.conf.j2", {
            "shard_scheme": layout.shard_scheme, "verify_tls": shard_certificates_trusted(spec)})),
        file(layout.seed_path, routing_conf(seed_plan(spec), spec, layout, seed=True), service=None),
        file(f"{web}/index.html", render_template("frontdoor/index.html.j2", {"t": LANDING_TEXT["fr"]}), None),
        file(f"{web}/index.en.html", render_template("frontdoor/index.html.j2", {"t": LANDING_TEXT["en"]}), None),
        file(f"{web}/_ensemble/landing.css", _read_static("_ensemble/landing.css"), None),
        file(f"{web}/_ensemble/landing.js", _read_static("_ensemble/landing.js"), None),
        file(f"{web}/_ensemble/room.html", _read_static("_ensemble/room.html"), None),
        file(f"{web}/_ensemble/room.js", _read_static("_ensemble/room.js"), None),
    ]
    for code, (fr, en) in ERROR_TEXT.items():
        out.append(file(f"{web}/_ensemble/{code}.html", render_template("frontdoor/error.html.j2",
                                                                         {"fr": fr, "en": en}), None))
    if CA_ENTRY in secrets:  # always after complete_secrets; without it the refresher reads no shard (fails closed)
        # public: the fleet CA's certificate, which the refresher checks each shard's occupancy listener against
        out.append(file(layout.fleet_ca_path, fleet_ca_cert(secrets), service=None))
    unit = {"routing_path": layout.routing_path, "seed_path": layout.seed_path, "ensemble_bin": layout.ensemble_bin,
            "spec_path": layout.spec_path, "secrets_path": layout.secrets_path,
            "shards": spec.fleet.shards,
            "interval": spec.frontdoor.refresh_interval, "timeout": max(60, 4 * spec.frontdoor.refresh_interval)}
    out += [
        file("/etc/systemd/system/ensemble-frontdoor-refresh.service",
             render_template("frontdoor/ensemble-frontdoor-refresh.service.j2", unit), None),
        file("/etc/systemd/system/ensemble-frontdoor-refresh.timer",
             render_template("frontdoor/ensemble-frontdoor-refresh.timer.j2", unit),
             "ensemble-frontdoor-refresh.timer"),
    ]
    return out
