"""The fleet spec: `ensemble.toml` loaded into a validated, immutable `FleetSpec`.

Every key has a default and a one-line doc here (the single reference of tunables,
mirrored by the commented `examples/ensemble.toml`). Loading is pure: no network,
no files other than the spec itself. Any bad value raises `SpecError` whose message
starts with the key path, e.g. ``fleet.shards: must be >= 1, got 0``.

Example::

    spec = load_spec("examples/ensemble.toml")
    spec.shard_names()        # ["demo-1.meet.example.org", "demo-2.meet.example.org"]
"""

from __future__ import annotations

import ipaddress
import json
import re
import string
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from ensemble.errors import SpecError, UsageError
from ensemble.etherpad_source import check_source_url
from ensemble.grammar import (
    absolute_path_problem,
    apt_suite_problem,
    debian_version_problem,
    is_domain,
    strict_cidr_problem,
    text_problem,
    url_problem,
)
from ensemble.profiles import DEFAULT_PROFILE, PROFILES, OSProfile
from ensemble.userfiles import parse_json, parse_toml, read_user_text

_FLEET_NAME = re.compile(r"[a-z][a-z0-9-]{0,30}")
_ZONE = re.compile(r"[a-z]{2}-[a-z]{3}-[0-9]")
# RFC 5322's dot-atom local part (not starting with '-': certbot must not read it as an option).
_EMAIL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~][A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{0,63}@(?P<domain>[A-Za-z0-9.-]+)")
_LANGS = ("fr", "en", "de", "es", "it", "nl", "pt", "pl")

INT_BOUNDS = (0, 2**31 - 1)  # an int field that declares no bounds: what every consumer (int32) accepts
MAX_LIST_ITEMS = 64  # items of any list value (CIDRs, STUN servers)


def _doc(text: str, check=None, choices: tuple[str, ...] | None = None, bounds: tuple[int, int] | None = None,
         max_items: int = MAX_LIST_ITEMS):
    """Field metadata: the doc line and the field's grammar.

    Every string (and list item) is refused when it holds control characters or exceeds
    grammar.MAX_TEXT, whatever the field: a new field gets that without declaring anything.
    `check` adds the field's own grammar, `choices` a closed set, `bounds` the inclusive range
    of an int (default INT_BOUNDS), `max_items` the length of a list.
    """
    return {"doc": text, "check": check, "choices": choices, "bounds": bounds, "max_items": max_items}


def _opt(default, text: str, check=None, choices=None, bounds=None, max_items: int = MAX_LIST_ITEMS):
    meta = _doc(text, check, choices, bounds, max_items)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=meta)
    return field(default=default, metadata=meta)


# ---- checks: return an error message, or None when valid ----


def _check_positive(v: int):
    return None if v >= 1 else f"must be >= 1, got {v}"


def _check_port(v: int):
    return None if 1 <= v <= 65535 else f"must be a port 1-65535, got {v}"


def _check_domain(v: str):
    return None if is_domain(v) else f"not a valid DNS name: {v!r} (lower-case labels a-z0-9-, with a dot)"


def _pattern(regex: re.Pattern, what: str, empty_ok: bool = False):
    """A check: the whole value matches regex (fullmatch), else 'not <what>'."""
    def check(v: str):
        if (empty_ok and v == "") or regex.fullmatch(v):
            return None
        return f"not {what}, got {v!r}"
    return check


def _check_ssh_cidrs(v: list[str]):
    if not v:
        return ("must list at least one CIDR: an empty list would lock everyone out of SSH, ensemble "
                "included (to limit it, list your admin network, e.g. 203.0.113.0/24)")
    return _check_cidrs(v)


def _check_cidrs(v: list[str]):
    for item in v:
        problem = strict_cidr_problem(item)
        if problem:
            return problem
    return None


def _check_url(v: str):
    return url_problem(v)


def _check_optional_url(v: str):
    return None if v == "" else url_problem(v)


def _check_sha256(v: str):
    return None if v == "" or re.fullmatch(r"[0-9a-f]{64}", v) else "must be 64 lower-case hex digits or empty"


def _check_email(v: str):
    if v == "":
        return None
    match = _EMAIL.fullmatch(v)
    if len(v) <= 254 and match and is_domain(match["domain"].lower()):
        return None
    return f"not an e-mail address like ops@example.org: {v!r}"


def _check_stun(v: list[str]):
    for item in v:
        match = re.fullmatch(r"(stuns?:)?([A-Za-z0-9.-]+)(?::([0-9]{1,5}))?", item)
        if not match or not (is_domain(match[2].lower()) or _is_ip(match[2])) \
                or (match[3] and not 1 <= int(match[3]) <= 65535):
            return f"not a STUN server: {item!r} (host:port, port 1-65535, e.g. stun.example.org:3478)"
    return None


def _is_ip(v: str) -> bool:
    try:
        ipaddress.ip_address(v)
    except ValueError:
        return False
    return True


def _check_shard_name(v: str):
    if "{n}" not in v:
        return "must contain {n} (the shard number), e.g. '{name}-{n}.{domain}'"
    try:  # only the bare fields: "{domain.__class__}" or "{n:>99999}" would reach str.format otherwise
        fields_used = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(v) if f is not None]
    except ValueError:
        return "may only use {name}, {n} and {domain}"
    if any(f not in ("name", "n", "domain") or spec or conv for f, spec, conv in fields_used):
        return "may only use {name}, {n} and {domain}"
    return None


def _check_resolution(v: int):
    allowed = (180, 360, 480, 720, 1080)
    return None if v in allowed else f"must be one of {', '.join(map(str, allowed))}, got {v}"


def _check_optional_version(v: str):
    return None if v == "" else debian_version_problem(v)


def _check_optional_suite(v: str):
    return None if v == "" else apt_suite_problem(v)


def _check_absolute(v: str):
    return absolute_path_problem(v)


def _check_optional_local_file(v: str):
    return None if v == "" else absolute_path_problem(v, home_ok=True)


def _check_local_file(v: str):
    return absolute_path_problem(v, home_ok=True)


_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# Scaleway's instance types: upper-case words joined by hyphens (PRO2-S, DEV1-M, POP2-HC-2C-4G, L4-1-24G).
_COMMERCIAL_TYPE = re.compile(r"[A-Z0-9]{1,16}(-[A-Z0-9]{1,16}){0,5}")
# Marketplace labels (debian_bookworm, ubuntu_noble) or an image id (a UUID).
_IMAGE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
# scw config profile names: the keys of its YAML `profiles` table.
_PROFILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# ---- the spec ----

MAX_SHARDS = 1000  # the front door's maps and refresh are measured up to this (docs/frontdoor.md)


@dataclass(frozen=True)
class FleetSection:
    name: str = _opt("demo", "fleet name: tags, host names and state folders derive from it",
                     check=lambda v: None if _FLEET_NAME.fullmatch(v) else
                     f"must be lower-case a-z0-9-, start with a letter, at most 31 chars, got {v!r}")
    domain: str = _opt("meet.example.org", "public domain of the front door", check=_check_domain)
    shard_name: str = _opt("{name}-{n}.{domain}", "pattern of shard domains", check=_check_shard_name)
    shards: int = _opt(2, "number of shards", bounds=(1, MAX_SHARDS))
    os: str = _opt(DEFAULT_PROFILE, "OS profile of every host", choices=tuple(PROFILES))


@dataclass(frozen=True)
class LocalProviderSection:
    suite: str = _opt("", "Debian suite of the containers (e.g. bookworm); empty = the OS profile's codename",
                      check=_check_optional_suite)
    frontdoor_suite: str = _opt("", "Debian suite of the front door's container; empty = as the shards (a test "
                                "switch: a front door on bullseye beside bookworm shards)", check=_check_optional_suite)
    cache_dir: str = _opt("/var/cache/ensemble", "where the debootstrapped root filesystem is kept (absolute path)",
                          check=_check_absolute)
    state_dir: str = _opt("/run/ensemble", "where running containers live (tmpfs)")
    subnet: str = _opt("", "IPv4 /24 of the fleet's bridge; empty = derived from the fleet name",
                       check=lambda v: None if v == "" else _check_cidrs([v]))
    mirror: str = _opt("", "Debian mirror URL for debootstrap (http/https, no user:password@); "
                       "empty = the machine's own apt mirror",
                       check=_check_optional_url)


@dataclass(frozen=True)
class ScalewayProviderSection:
    profile: str = _opt("", "scw config profile name (A-Za-z0-9_.-); empty = the active profile / environment",
                        check=_pattern(_PROFILE_NAME, "a scw profile name (A-Za-z0-9_.-, at most 64)", True))
    project_id: str = _opt("", "Scaleway project (a UUID); empty = the profile's default project",
                           check=_pattern(_UUID, "a project id (lower-case UUID)", True))
    zone: str = _opt("fr-par-1", "availability zone",
                     check=_pattern(_ZONE, "a zone like fr-par-1"))
    commercial_type: str = _opt("PRO2-S", "instance type of shards (JVB is network bound)",
                                check=_pattern(_COMMERCIAL_TYPE, "an instance type like PRO2-S or POP2-HC-2C-4G"))
    frontdoor_commercial_type: str = _opt("PRO2-XXS", "instance type of the front door",
                                          check=_pattern(_COMMERCIAL_TYPE, "an instance type like PRO2-XXS"))
    image: str = _opt("", "marketplace image label (e.g. debian_bookworm) or image id; empty = the OS profile's",
                      check=_pattern(_IMAGE, "an image label like debian_bookworm or an image id", True))
    root_volume_gb: int = _opt(20, "SBS root volume size in GB", bounds=(10, 10000))
    ipv6: bool = _opt(False, "also attach a routed IPv6")
    ssh_public_key: str = _opt("~/.ssh/id_ed25519.pub", "ops SSH public key installed by cloud-init "
                               "(absolute or ~/ path)", check=_check_local_file)
    ssh_private_key: str = _opt("~/.ssh/id_ed25519", "the matching private key ensemble connects with "
                                "(absolute or ~/ path)", check=_check_local_file)
    ssh_allowed_cidrs: list[str] = _opt(["0.0.0.0/0", "::/0"], "who may reach port 22: 1-64 CIDRs as nftables "
                                        "takes them (no %zone, no host bits set)", check=_check_ssh_cidrs)
    api_timeout: int = _opt(30, "seconds before an API call is abandoned", bounds=(1, 3600))
    ssh_timeout: int = _opt(600, "seconds to wait for SSH on a new server", bounds=(1, 86400))


@dataclass(frozen=True)
class ProviderSection:
    kind: str = _opt("local", "where hosts come from", choices=("local", "scaleway"))
    local: LocalProviderSection = field(default_factory=LocalProviderSection,
                                        metadata=_doc("settings of the local provider"))
    scaleway: ScalewayProviderSection = field(default_factory=ScalewayProviderSection,
                                              metadata=_doc("settings of the scaleway provider"))


@dataclass(frozen=True)
class TLSSection:
    mode: str = _opt("letsencrypt", "how shards get certificates",
                     choices=("letsencrypt", "self-signed", "provided"))
    email: str = _opt("", "ACME account e-mail (empty = register without e-mail)", check=_check_email)
    staging: bool = _opt(False, "use Let's Encrypt's staging CA (throwaway fleets)")
    acme_directory: str = _opt("https://acme-v02.api.letsencrypt.org/directory",
                               "ACME directory URL (staging switch overrides it)", check=_check_url)
    acme_ca_bundle: str = _opt("", "PEM file of a CA to trust for the ACME server (test CAs only; absolute path)",
                               check=_check_optional_local_file)
    cert_path: str = _opt("", "provided mode: certificate chain on the deploying machine (absolute path)",
                          check=_check_optional_local_file)
    key_path: str = _opt("", "provided mode: private key on the deploying machine (absolute path)",
                         check=_check_optional_local_file)

    @property
    def directory_url(self) -> str:
        if self.staging:
            return "https://acme-staging-v02.api.letsencrypt.org/directory"
        return self.acme_directory


@dataclass(frozen=True)
class JitsiSection:
    language: str = _opt("fr", "default UI language", choices=_LANGS)
    etherpad: bool = _opt(True, "shared documents (Etherpad) in meetings")
    gravatar: bool = _opt(True, "avatars from Gravatar")
    gravatar_base_url: str = _opt("https://www.gravatar.com/avatar/", "Gravatar-compatible service",
                                  check=_check_url)
    max_resolution: int = _opt(720, "highest video height sent", check=_check_resolution)
    min_resolution: int = _opt(180, "lowest video height sent", check=_check_resolution)
    channel_last_n: int = _opt(-1, "videos forwarded per participant (-1 = all)", bounds=(-1, 1000))
    lobby: bool = _opt(True, "moderators may enable a lobby")
    password_ui: bool = _opt(True, "moderators may set a room password")
    require_display_name: bool = _opt(False, "ask for a name before joining")
    prejoin: bool = _opt(True, "show the pre-join screen (camera/mic check)")
    p2p: bool = _opt(True, "two-person calls go peer to peer")
    disable_third_party_requests: bool = _opt(False, "block requests to third parties (disables Gravatar)")
    stun_servers: list[str] = _opt([], "public STUN servers added for clients and JVB, at most 16 (empty: only "
                                   "the fleet's own STUN/TURN on each shard, no third-party host)", check=_check_stun,
                                   max_items=16)
    apt_repo: str = _opt("https://download.jitsi.org", "Jitsi apt repository", check=_check_url)
    apt_suite: str = _opt("stable/", "suite of the flat Jitsi repository (e.g. stable/ or unstable/)",
                          check=apt_suite_problem)
    apt_key_url: str = _opt("https://download.jitsi.org/jitsi-key.gpg.key", "repository signing key",
                            check=_check_url)
    apt_key_fingerprint: str = _opt("66A9CD0595D6AFA247290D3BEF8B479E2DC1389C",
                                    "expected fingerprint of the key (empty = do not check)",
                                    check=lambda v: None if v == "" or re.fullmatch(r"[0-9A-F]{40}", v)
                                    else "must be 40 upper-case hex digits or empty")
    version: str = _opt("", "jitsi-meet version to pin, a Debian version like 2.0.9909-1; "
                        "empty = the OS profile's (newest)", check=_check_optional_version)


def _check_peer_cidrs(v: list[str]):
    return _check_cidrs(v) or next((f"{item!r} is a whole address family; name the peers you allow"
                                    for item in v if ipaddress.ip_network(item, strict=False).prefixlen == 0), None)


@dataclass(frozen=True)
class TurnSection:
    enabled: bool = _opt(True, "a TURN relay (coturn) on every shard: TLS on 443 beside the web site, "
                         "UDP/TCP on `port`; media gets through networks that block UDP 10000")
    port: int = _opt(3478, "public STUN/TURN port, UDP and TCP", check=lambda v: _check_port(v) or (
        f"must not be one of the shard's other public ports (22, 80, 443, 10000), got {v}"
        if v in (22, 80, 443, 10000) else None))
    relay_min_port: int = _opt(49152, "first UDP port of the relayed media range", check=_check_port)
    relay_max_port: int = _opt(49999, "last UDP port of the relayed media range", check=_check_port)
    credential_ttl: int = _opt(86400, "seconds a TURN credential from prosody stays valid (60-604800)",
                               check=lambda v: None if 60 <= v <= 604800 else f"must be 60-604800, got {v}")
    user_quota: int = _opt(12, "allocations at once per credential (a participant makes a few)",
                           check=_check_positive)
    total_quota: int = _opt(1200, "allocations at once on one shard's relay", check=_check_positive)
    max_bps: int = _opt(1000000, "bytes per second one relayed session may use (0 = no cap)",
                        check=lambda v: None if v >= 0 else f"must be >= 0, got {v}")
    tls_name_in_dns: bool = _opt(False, "DNS has turn-<shard> pointing at each shard: the letsencrypt "
                                 "certificate then covers it (browsers reach TURN/TLS on 443 by that name)")
    allowed_peer_ips: list[str] = _opt([], "private peers the relay may reach despite the deny list (CIDRs; "
                                       "e.g. a test peer on a local bridge); empty in production",
                                       check=_check_peer_cidrs)


@dataclass(frozen=True)
class EtherpadSection:
    source_url: str = _opt("https://github.com/ether/etherpad-lite/archive/refs/tags/v2.2.7.tar.gz",
                           "Etherpad source: an http(s) release tarball (downloaded by the deploying machine), "
                           "or npm:<package>@<version> fetched by the host through its npm registry, "
                           "e.g. npm:ep_etherpad-lite@1.8.14 (tests, local fleets)", check=check_source_url)
    sha256: str = _opt("", "sha256 of the tarball / npm archive; a mismatch is refused (empty = not checked "
                       "by ensemble; npm still checks the registry's integrity hash; set it in production)",
                       check=_check_sha256)
    database: str = _opt("sqlite", "database backend", choices=("sqlite", "postgres"))
    port: int = _opt(9001, "loopback port of Etherpad", bounds=(1024, 65535))
    npm_registry: str = _opt("https://registry.npmjs.org/", "npm registry URL for dependencies "
                             "(http/https, no user:password@)",
                             check=_check_url)


@dataclass(frozen=True)
class FrontdoorSection:
    mode: str = _opt("redirect", "redirect: 302 to the shard; proxy: the front door proxies",
                     choices=("redirect", "proxy"))
    capacity_per_shard: int = _opt(200, "participants a shard takes before it is full", bounds=(1, 100000))
    refresh_interval: int = _opt(15, "seconds between occupancy refreshes", bounds=(1, 3600))
    grace_period: int = _opt(120, "seconds an unreadable shard keeps its pins", bounds=(1, 86400))
    ready_after: int = _opt(3, "successful reads before a shard takes new rooms again", bounds=(1, 100))
    new_rooms_per_minute: int = _opt(60, "new meetings one client (an IPv4 address, an IPv6 /64) may open per "
                                     "minute at the front door (bursts of as many allowed); more get 429",
                                     bounds=(1, 1_000_000))
    metrics_allowed_cidrs: list[str] = _opt(["127.0.0.1/32", "::1/128"], "who may read the front door's "
                                            "Prometheus metrics (/_ensemble/metrics): 0-64 CIDRs (your "
                                            "Prometheus server); everyone else gets 403", check=_check_cidrs)


_SCHEDULE_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SCHEDULE = re.compile(r"(?P<d1>[a-z]{3})(?:-(?P<d2>[a-z]{3}))? (?P<h1>[0-9]{2}):(?P<m1>[0-9]{2})-"
                       r"(?P<h2>[0-9]{2}):(?P<m2>[0-9]{2}) (?P<min>[0-9]{1,4})")


def parse_schedule_entry(text: str) -> tuple[tuple[int, ...], int, int, int] | str:
    """One `autoscale.schedule` entry -> (weekdays 0=mon.., start minute, end minute, min shards), or
    the problem as a string. Times are UTC; an end before the start runs past midnight.

    Example::

        parse_schedule_entry("mon-fri 08:00-19:00 4")     # ((0, 1, 2, 3, 4), 480, 1140, 4)
    """
    match = _SCHEDULE.fullmatch(text)
    valid = 'valid: "<day>[-<day>] HH:MM-HH:MM <min shards>" in UTC, e.g. "mon-fri 08:00-19:00 4"'
    if not match:
        return f"{text!r} is not a schedule entry; {valid}"
    d1, d2 = match["d1"], match["d2"] or match["d1"]
    if d1 not in _SCHEDULE_DAYS or d2 not in _SCHEDULE_DAYS:
        return f"{text!r}: days are {', '.join(_SCHEDULE_DAYS)}; {valid}"
    h1, m1, h2, m2 = (int(match[k]) for k in ("h1", "m1", "h2", "m2"))
    if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
        return f"{text!r}: times are 00:00-24:00; {valid}"
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        return f"{text!r}: the window is empty; {valid}"
    minimum = int(match["min"])
    if not 1 <= minimum <= MAX_SHARDS:
        return f"{text!r}: min shards must be 1-{MAX_SHARDS}"
    first, last = _SCHEDULE_DAYS.index(d1), _SCHEDULE_DAYS.index(d2)
    days = tuple(range(first, last + 1)) if first <= last else (*range(first, 7), *range(0, last + 1))
    return days, start, end, minimum


def _check_schedule(v: list[str]):
    for item in v:
        parsed = parse_schedule_entry(item)
        if isinstance(parsed, str):
            return parsed
    return None


@dataclass(frozen=True)
class AutoscaleSection:
    min_shards: int = _opt(1, "never fewer shards than this", bounds=(1, MAX_SHARDS))
    max_shards: int = _opt(10, "never more shards than this (the cloud bill's ceiling)", bounds=(1, MAX_SHARDS))
    target_free: int = _opt(100, "free participant places always kept on the ready shards (the growth term "
                            "comes on top): below it, scale up",
                            bounds=(0, 10000000))
    headroom_per_shard: int = _opt(0, "free places kept per ready shard on top of target_free (room for a big "
                                   "meeting on whichever shard it lands: about the largest meeting expected)",
                                   bounds=(0, 100000))
    hysteresis: int = _opt(100, "extra free places needed before removing a shard (no flapping): scale down "
                           "only when target_free + hysteresis stay free without it", bounds=(0, 10000000))
    step: int = _opt(1, "shards added (at least) or removed per decision", bounds=(1, 100))
    cooldown_up: int = _opt(300, "seconds after a scale up before the next one", bounds=(0, 86400))
    cooldown_down: int = _opt(900, "seconds after any scale action before a scale down", bounds=(0, 86400))
    drain_timeout: int = _opt(300, "seconds the removal of a drained shard read empty waits for it in the "
                              "lifecycle's drain-and-wait (someone joined meanwhile: the round stops, nothing "
                              "is cut, a later round tries again)", bounds=(1, 86400))
    interval: int = _opt(60, "seconds between decisions of the long-running `ensemble autoscale`",
                         bounds=(5, 86400))
    lead_time: int = _opt(300, "seconds from a scale up's decision to its shards taking meetings (create + "
                          "deploy + read ready); once a scale up was timed, its measured time is used instead",
                          bounds=(0, 86400))
    growth_window: int = _opt(900, "seconds of the recent past over which the fleet's growth (places per "
                              "second) is measured: free places kept = target_free + growth x (lead_time + "
                              "interval)", bounds=(60, 86400))
    schedule: list[str] = _opt([], 'UTC windows raising min_shards, e.g. "mon-fri 08:00-19:00 4" (the '
                               "highest matching entry wins)", check=_check_schedule)


@dataclass(frozen=True)
class FleetSpec:
    fleet: FleetSection = field(default_factory=FleetSection, metadata=_doc("the fleet"))
    provider: ProviderSection = field(default_factory=ProviderSection, metadata=_doc("hosts"))
    tls: TLSSection = field(default_factory=TLSSection, metadata=_doc("certificates"))
    jitsi: JitsiSection = field(default_factory=JitsiSection, metadata=_doc("Jitsi Meet"))
    turn: TurnSection = field(default_factory=TurnSection, metadata=_doc("TURN relay (coturn)"))
    etherpad: EtherpadSection = field(default_factory=EtherpadSection, metadata=_doc("Etherpad"))
    frontdoor: FrontdoorSection = field(default_factory=FrontdoorSection, metadata=_doc("front door"))
    autoscale: AutoscaleSection = field(default_factory=AutoscaleSection, metadata=_doc("autoscaling policy"))
    source: str = field(default="<defaults>", compare=False, metadata=_doc("where it was loaded from"))

    @property
    def profile(self) -> OSProfile:
        return PROFILES[self.fleet.os]

    @property
    def jitsi_version(self) -> str:
        return self.jitsi.version or self.profile.jitsi_version

    def shard_name(self, n: int) -> str:
        return self.fleet.shard_name.format(name=self.fleet.name, n=n, domain=self.fleet.domain)

    def shard_names(self) -> list[str]:
        return [self.shard_name(n) for n in range(1, self.fleet.shards + 1)]

    def with_shards(self, count: int) -> FleetSpec:
        return replace(self, fleet=replace(self.fleet, shards=count))


# ---- loading ----

_SCALARS = {str: "a string", int: "an integer", bool: "true or false"}


def _convert(key: str, value: Any, hint: Any, meta: dict | None = None) -> Any:
    meta = meta or {}
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise SpecError(key, f"must be a list of {_SCALARS[item].split(' ', 1)[1]}s, got {_short(value)}")
        limit = meta.get("max_items", MAX_LIST_ITEMS)
        if len(value) > limit:
            raise SpecError(key, f"must have at most {limit} items, got {len(value)}")
        return [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise SpecError(key, f"must be a table, got {_short(value)}")
        return _build(hint, value, key)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise SpecError(key, f"must be {_SCALARS[hint]}, got {_short(value)}")
    if hint is str:
        problem = text_problem(value)
        if problem:
            raise SpecError(key, problem)
    if hint is int:
        low, high = meta.get("bounds") or INT_BOUNDS
        if not low <= value <= high:
            raise SpecError(key, f"must be {low}-{high}, got {_short(value)}")
    return value


def _short(value: Any) -> str:
    """repr of a bad value, cut short: the error stays one readable line whatever was given."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _build(cls: type, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            path = f"{prefix}.{key}" if prefix else key
            shown = path if not text_problem(path, 80) else _short(path)  # a hostile key name stays one line
            raise SpecError(shown, f"unknown key; valid keys here: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in data:
            continue
        meta = f.metadata
        value = _convert(path, data[name], hints[name], meta)
        if meta.get("choices") and value not in meta["choices"]:
            raise SpecError(path, f"must be one of {', '.join(meta['choices'])}, got {_short(value)}")
        if meta.get("check"):
            problem = meta["check"](value)
            if problem:
                raise SpecError(path, problem)
        values[name] = value
    return cls(**values)


def spec_from_dict(data: dict, source: str = "<dict>") -> FleetSpec:
    """Validate a parsed spec; raise SpecError naming the first bad key."""
    spec = _build(FleetSpec, data)
    spec = replace(spec, source=source)
    _check_cross_fields(spec)
    return spec


def _check_cross_fields(spec: FleetSpec) -> None:
    j = spec.jitsi
    if j.min_resolution > j.max_resolution:
        raise SpecError("jitsi.min_resolution", f"must be <= jitsi.max_resolution ({j.max_resolution})")
    t = spec.turn
    if t.relay_min_port > t.relay_max_port:
        raise SpecError("turn.relay_min_port", f"must be <= turn.relay_max_port ({t.relay_max_port})")
    if t.relay_min_port <= 10000 <= t.relay_max_port or t.relay_min_port <= t.port <= t.relay_max_port:
        raise SpecError("turn.relay_min_port", "the relay range must not hold the bridge's 10000 or turn.port")
    if t.enabled and any(len("turn-" + name.split(".", 1)[0]) > 63 for name in spec.shard_names()):
        raise SpecError("fleet.shard_name", "gives a first label too long for the relay's TLS name "
                        "turn-<shard> (at most 58 characters before the first dot with [turn] on)")
    if spec.tls.mode == "provided":
        for key in ("cert_path", "key_path"):
            if not getattr(spec.tls, key):
                raise SpecError(f"tls.{key}", "required when tls.mode = 'provided'")
    if spec.autoscale.min_shards > spec.autoscale.max_shards:
        raise SpecError("autoscale.min_shards", f"must be <= autoscale.max_shards ({spec.autoscale.max_shards})")
    names = spec.shard_names()
    for name in names:
        if not is_domain(name):
            raise SpecError("fleet.shard_name", f"gives an invalid DNS name {name!r}")
    if len(set(names)) != len(names) or spec.fleet.domain in names:
        raise SpecError("fleet.shard_name", "must give every shard a distinct name, not the front door's")
    if spec.provider.kind == "scaleway" and not (spec.provider.scaleway.image or spec.profile.scaleway_image):
        raise SpecError("fleet.os", f"{spec.fleet.os} has no Scaleway image any more; "
                        "set provider.scaleway.image or pick a current profile")


def load_spec(path: str | Path) -> FleetSpec:
    """Read and validate an ensemble.toml (or its JSON rendering, `spec_json`, when the name ends in
    .json: what the front door's refresher reads, python 3.9 having no tomllib). Raises
    UsageError/SpecError with one line.

    The file is read bounded (a regular file of at most 1 MiB, UTF-8): a FIFO, /dev/zero or a
    directory given as --config is refused, not hung on.
    """
    p = Path(path)
    text = read_user_text(p, "--config")
    data = parse_json(text, str(p)) if p.suffix == ".json" else parse_toml(text, str(p))
    if not isinstance(data, dict):
        raise UsageError(f"{p}: a spec is a JSON object, got {type(data).__name__}")
    return spec_from_dict(data, source=str(p))


def spec_files(spec: FleetSpec) -> list[tuple[str, str]]:
    """(key, path) of every file on the deploying machine that this spec makes ensemble read.

    Example::

        spec_files(spec)   # [("tls.cert_path", "/etc/ssl/meet.pem"), ("tls.key_path", ...)]
    """
    found = []
    if spec.tls.mode == "provided":
        found += [("tls.cert_path", spec.tls.cert_path), ("tls.key_path", spec.tls.key_path)]
    if spec.tls.acme_ca_bundle:
        found.append(("tls.acme_ca_bundle", spec.tls.acme_ca_bundle))
    if spec.provider.kind == "scaleway":
        found += [("provider.scaleway.ssh_public_key", spec.provider.scaleway.ssh_public_key),
                  ("provider.scaleway.ssh_private_key", spec.provider.scaleway.ssh_private_key)]
    return found


def check_spec_files(spec: FleetSpec) -> None:
    """Every file the spec names is a readable regular UTF-8 file of at most 1 MiB (a PEM file holds
    a PEM block); UsageError naming the key otherwise. Run before any host is created.

    Example::

        check_spec_files(load_spec("ensemble.toml"))    # tls.cert_path: cannot read /x.pem: no such file
    """
    for key, path in spec_files(spec):
        text = read_user_text(Path(path).expanduser(), key)
        if key.startswith("tls.") and "-----BEGIN " not in text:
            raise SpecError(key, f"{path} is not a PEM file (no -----BEGIN line)")


def default_spec() -> FleetSpec:
    """The embedded default: a 2-shard fleet on the local provider (ensemble/default.toml)."""
    from importlib.resources import files

    text = files("ensemble").joinpath("default.toml").read_text(encoding="utf-8")
    return spec_from_dict(parse_toml(text, "<embedded default>"), source="<embedded default>")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def spec_toml(spec: FleetSpec, header: str = "") -> str:
    """The spec as TOML that loads back to an equal spec (every key written, defaults included).

    The spec exactly as resolved, wherever it came from (a file, the embedded default, a dict in a
    test), for a person or a test to write as a file; the front door's refresher reads `spec_json`.

    Example::

        spec_from_dict(tomllib.loads(spec_toml(spec))) == spec      # True
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]

    def section(obj, path: str) -> None:
        values = [(f.name, getattr(obj, f.name)) for f in fields(obj) if f.name != "source"]
        scalars = [(k, v) for k, v in values if not is_dataclass(v)]
        if path and scalars:
            lines.append(f"\n[{path}]")
            lines.extend(f"{k} = {_toml_value(v)}" for k, v in scalars)
        for k, v in values:
            if is_dataclass(v):
                section(v, f"{path}.{k}" if path else k)

    section(spec, "")
    return "\n".join(lines).lstrip("\n") + "\n"


def spec_json(spec: FleetSpec) -> str:
    """The spec as JSON that loads back to an equal spec (every key written, defaults included): what
    the front door's refresher reads, on any python >= 3.9 (bullseye's 3.9 has no tomllib).

    Example::

        spec_from_dict(json.loads(spec_json(spec))) == spec      # True
    """

    def table(obj) -> dict:
        return {f.name: table(getattr(obj, f.name)) if is_dataclass(getattr(obj, f.name)) else getattr(obj, f.name)
                for f in fields(obj) if f.name != "source"}

    return json.dumps(table(spec), indent=1, sort_keys=True, ensure_ascii=False) + "\n"


def iter_keys(cls: type = FleetSpec, prefix: str = ""):
    """Yield (key path, default, doc, choices) for every leaf key: the reference of tunables."""
    for f in fields(cls):
        if f.name == "source":
            continue
        path = f"{prefix}.{f.name}" if prefix else f.name
        hint = typing.get_type_hints(cls)[f.name]
        if is_dataclass(hint):
            yield from iter_keys(hint, path)
        else:
            default = f.default if f.default is not MISSING else f.default_factory()
            yield path, default, field_help(f, hint), f.metadata.get("choices")


def field_help(f, hint: Any) -> str:
    """The field's doc line with its limits, e.g. "seconds between occupancy refreshes (1-3600)"."""
    doc = f.metadata.get("doc", "")
    if hint is int:
        low, high = f.metadata.get("bounds") or INT_BOUNDS
        doc += f" ({low}-{high})"
    elif typing.get_origin(hint) is list:
        doc += f" (at most {f.metadata.get('max_items', MAX_LIST_ITEMS)} items)"
    return doc
