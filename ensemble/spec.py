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
import tomllib
import typing
from dataclasses import MISSING, dataclass, field, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from ensemble.errors import SpecError, UsageError
from ensemble.etherpad_source import check_source_url
from ensemble.profiles import DEFAULT_PROFILE, PROFILES, OSProfile

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_FLEET_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
_ZONE = re.compile(r"^[a-z]{2}-[a-z]{3}-[0-9]$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_LANGS = ("fr", "en", "de", "es", "it", "nl", "pt", "pl")


def _doc(text: str, check=None, choices: tuple[str, ...] | None = None):
    return {"doc": text, "check": check, "choices": choices}


def _opt(default, text: str, check=None, choices=None):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default),
                     metadata=_doc(text, check, choices))
    return field(default=default, metadata=_doc(text, check, choices))


# ---- checks: return an error message, or None when valid ----

def is_domain(value: str) -> bool:
    if len(value) > 253 or "." not in value:
        return False
    return all(_LABEL.match(label) for label in value.split("."))


def _check_domain(v: str):
    return None if is_domain(v) else f"not a valid DNS name: {v!r} (lower-case labels a-z0-9-, with a dot)"


def _check_positive(v: int):
    return None if v >= 1 else f"must be >= 1, got {v}"


def _check_port(v: int):
    return None if 1 <= v <= 65535 else f"must be a port 1-65535, got {v}"


def _check_cidrs(v: list[str]):
    for item in v:
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            return f"not a CIDR: {item!r} (e.g. 203.0.113.0/24 or 2001:db8::/32)"
    return None


def _check_url(v: str):
    return None if re.match(r"^https?://[^\s/]+", v) else f"not an http(s) URL: {v!r}"


def _check_optional_url(v: str):
    return None if v == "" else _check_url(v)


def _check_sha256(v: str):
    return None if v == "" or re.fullmatch(r"[0-9a-f]{64}", v) else "must be 64 lower-case hex digits or empty"


def _check_email(v: str):
    return None if v == "" or _EMAIL.match(v) else f"not an e-mail address: {v!r}"


def _check_stun(v: list[str]):
    for item in v:
        if not re.fullmatch(r"(stuns?:)?[A-Za-z0-9.-]+(:[0-9]{1,5})?", item):
            return f"not a STUN server: {item!r} (host:port, e.g. stun.example.org:3478)"
    return None


def _check_shard_name(v: str):
    if "{n}" not in v:
        return "must contain {n} (the shard number), e.g. '{name}-{n}.{domain}'"
    try:
        v.format(name="x", n=1, domain="example.org")
    except (KeyError, IndexError, ValueError):
        return "may only use {name}, {n} and {domain}"
    return None


def _check_resolution(v: int):
    allowed = (180, 360, 480, 720, 1080)
    return None if v in allowed else f"must be one of {', '.join(map(str, allowed))}, got {v}"


# ---- the spec ----

MAX_SHARDS = 1000  # the front door's maps and refresh are measured up to this (docs/frontdoor.md)


@dataclass(frozen=True)
class FleetSection:
    name: str = _opt("demo", "fleet name: tags, host names and state folders derive from it",
                     check=lambda v: None if _FLEET_NAME.match(v) else
                     f"must be lower-case a-z0-9-, start with a letter, at most 31 chars, got {v!r}")
    domain: str = _opt("meet.example.org", "public domain of the front door", check=_check_domain)
    shard_name: str = _opt("{name}-{n}.{domain}", "pattern of shard domains", check=_check_shard_name)
    shards: int = _opt(2, f"number of shards (1-{MAX_SHARDS})",
                       check=lambda v: None if 1 <= v <= MAX_SHARDS else f"must be 1-{MAX_SHARDS}, got {v}")
    os: str = _opt(DEFAULT_PROFILE, "OS profile of every host", choices=tuple(PROFILES))


@dataclass(frozen=True)
class LocalProviderSection:
    suite: str = _opt("", "Debian suite of the containers; empty = the OS profile's codename")
    cache_dir: str = _opt("/var/cache/ensemble", "where the debootstrapped root filesystem is kept")
    state_dir: str = _opt("/run/ensemble", "where running containers live (tmpfs)")
    subnet: str = _opt("", "IPv4 /24 of the fleet's bridge; empty = derived from the fleet name",
                       check=lambda v: None if v == "" else _check_cidrs([v]))
    mirror: str = _opt("", "Debian mirror for debootstrap; empty = the machine's own apt mirror",
                       check=_check_optional_url)


@dataclass(frozen=True)
class ScalewayProviderSection:
    profile: str = _opt("", "scw config profile name; empty = the active profile / environment")
    project_id: str = _opt("", "Scaleway project; empty = the profile's default project")
    zone: str = _opt("fr-par-1", "availability zone",
                     check=lambda v: None if _ZONE.match(v) else f"not a zone like fr-par-1: {v!r}")
    commercial_type: str = _opt("PRO2-S", "instance type of shards (JVB is network bound)")
    frontdoor_commercial_type: str = _opt("PRO2-XXS", "instance type of the front door")
    image: str = _opt("", "marketplace image label; empty = the OS profile's")
    root_volume_gb: int = _opt(20, "SBS root volume size in GB", check=lambda v: None if v >= 10
                               else f"must be >= 10, got {v}")
    ipv6: bool = _opt(False, "also attach a routed IPv6")
    ssh_public_key: str = _opt("~/.ssh/id_ed25519.pub", "ops SSH public key installed by cloud-init")
    ssh_private_key: str = _opt("~/.ssh/id_ed25519", "the matching private key ensemble connects with")
    ssh_allowed_cidrs: list[str] = _opt(["0.0.0.0/0", "::/0"], "who may reach port 22",
                                        check=_check_cidrs)
    api_timeout: int = _opt(30, "seconds before an API call is abandoned", check=_check_positive)
    ssh_timeout: int = _opt(600, "seconds to wait for SSH on a new server", check=_check_positive)


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
    acme_ca_bundle: str = _opt("", "PEM file of a CA to trust for the ACME server (test CAs only)")
    cert_path: str = _opt("", "provided mode: certificate chain on the deploying machine")
    key_path: str = _opt("", "provided mode: private key on the deploying machine")

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
    channel_last_n: int = _opt(-1, "videos forwarded per participant (-1 = all)",
                               check=lambda v: None if v >= -1 else f"must be >= -1, got {v}")
    lobby: bool = _opt(True, "moderators may enable a lobby")
    password_ui: bool = _opt(True, "moderators may set a room password")
    require_display_name: bool = _opt(False, "ask for a name before joining")
    prejoin: bool = _opt(True, "show the pre-join screen (camera/mic check)")
    p2p: bool = _opt(True, "two-person calls go peer to peer")
    disable_third_party_requests: bool = _opt(False, "block requests to third parties (disables Gravatar)")
    stun_servers: list[str] = _opt(["meet-jit-si-turnrelay.jitsi.net:443"],
                                   "STUN servers for clients and JVB", check=_check_stun)
    apt_repo: str = _opt("https://download.jitsi.org", "Jitsi apt repository", check=_check_url)
    apt_suite: str = _opt("stable/", "suite of the flat Jitsi repository")
    apt_key_url: str = _opt("https://download.jitsi.org/jitsi-key.gpg.key", "repository signing key",
                            check=_check_url)
    apt_key_fingerprint: str = _opt("66A9CD0595D6AFA247290D3BEF8B479E2DC1389C",
                                    "expected fingerprint of the key (empty = do not check)",
                                    check=lambda v: None if v == "" or re.fullmatch(r"[0-9A-F]{40}", v)
                                    else "must be 40 upper-case hex digits or empty")
    version: str = _opt("", "jitsi-meet version to pin; empty = the OS profile's (newest)")


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
    port: int = _opt(9001, "loopback port of Etherpad", check=_check_port)
    npm_registry: str = _opt("https://registry.npmjs.org/", "npm registry for dependencies",
                             check=_check_url)


@dataclass(frozen=True)
class FrontdoorSection:
    mode: str = _opt("redirect", "redirect: 302 to the shard; proxy: the front door proxies",
                     choices=("redirect", "proxy"))
    capacity_per_shard: int = _opt(200, "participants a shard takes before it is full",
                                   check=_check_positive)
    refresh_interval: int = _opt(15, "seconds between occupancy refreshes", check=_check_positive)
    grace_period: int = _opt(120, "seconds an unreadable shard keeps its pins", check=_check_positive)
    ready_after: int = _opt(3, "successful reads before a shard takes new rooms again",
                            check=_check_positive)
    new_rooms_per_minute: int = _opt(60, "new meetings one client (an IPv4 address, an IPv6 /64) may open per "
                                     "minute at the front door (bursts of as many allowed); more get 429",
                                     check=lambda v: None if 1 <= v <= 1_000_000 else f"must be 1-1000000, got {v}")


@dataclass(frozen=True)
class FleetSpec:
    fleet: FleetSection = field(default_factory=FleetSection, metadata=_doc("the fleet"))
    provider: ProviderSection = field(default_factory=ProviderSection, metadata=_doc("hosts"))
    tls: TLSSection = field(default_factory=TLSSection, metadata=_doc("certificates"))
    jitsi: JitsiSection = field(default_factory=JitsiSection, metadata=_doc("Jitsi Meet"))
    etherpad: EtherpadSection = field(default_factory=EtherpadSection, metadata=_doc("Etherpad"))
    frontdoor: FrontdoorSection = field(default_factory=FrontdoorSection, metadata=_doc("front door"))
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


def _convert(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise SpecError(key, f"must be a list of {_SCALARS[item].split(' ', 1)[1]}s, got {value!r}")
        return [_convert(f"{key}[{i}]", v, item) for i, v in enumerate(value)]
    if is_dataclass(hint):
        if not isinstance(value, dict):
            raise SpecError(key, f"must be a table, got {value!r}")
        return _build(hint, value, key)
    ok = isinstance(value, hint) and not (hint is int and isinstance(value, bool))
    if not ok:
        raise SpecError(key, f"must be {_SCALARS[hint]}, got {value!r}")
    return value


def _build(cls: type, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    for key in data:
        if key not in known:
            path = f"{prefix}.{key}" if prefix else key
            raise SpecError(path, f"unknown key; valid keys here: {', '.join(known)}")
    values = {}
    for name, f in known.items():
        path = f"{prefix}.{name}" if prefix else name
        if name not in data:
            continue
        value = _convert(path, data[name], hints[name])
        meta = f.metadata
        if meta.get("choices") and value not in meta["choices"]:
            raise SpecError(path, f"must be one of {', '.join(meta['choices'])}, got {value!r}")
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
    if spec.tls.mode == "provided":
        for key in ("cert_path", "key_path"):
            if not getattr(spec.tls, key):
                raise SpecError(f"tls.{key}", "required when tls.mode = 'provided'")
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
    """Read and validate an ensemble.toml. Raises UsageError/SpecError with one line."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"--config: no such file: {p}") from None
    except OSError as exc:
        raise UsageError(f"--config: cannot read {p}: {exc.strerror}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{p}: not valid TOML: {exc}") from None
    return spec_from_dict(data, source=str(p))


def default_spec() -> FleetSpec:
    """The embedded default: a 2-shard fleet on the local provider (ensemble/default.toml)."""
    from importlib.resources import files

    text = files("ensemble").joinpath("default.toml").read_text(encoding="utf-8")
    return spec_from_dict(tomllib.loads(text), source="<embedded default>")


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's string escapes are TOML basic-string escapes
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {type(value).__name__}")


def spec_toml(spec: FleetSpec, header: str = "") -> str:
    """The spec as TOML that loads back to an equal spec (every key written, defaults included).

    What the front door's refresher reads: the spec exactly as deployed, wherever it came from
    (a file, the embedded default, a dict in a test).

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
            yield path, default, f.metadata.get("doc", ""), f.metadata.get("choices")
