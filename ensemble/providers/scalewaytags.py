"""Facts of the Scaleway provider, apart from the calls that act on them: tags, names, ages, firewall.

Every resource carries the tags `ensemble`, `ensemble-fleet=<name>` and, for a host's server, IPs and
volume, `ensemble-role=...`, `ensemble-shard=<n>`, `ensemble-created=<UTC time>` and the fleet's identity
(`ensemble-fleet-id=`, `ensemble-domain=`, `ensemble-os=`: ensemble.identity); throwaway (smoke)
resources also carry `ensemble-smoke`. Plain Python: no SDK here.

Example::

    host_tags("demo", "shard", 2, now_iso(), throwaway=False)
    wanted_hosts(spec, existing_hosts, throwaway=False)      # what ensure_hosts must create
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ensemble import paths
from ensemble.publicports import port_range, public_ports

if TYPE_CHECKING:
    from ensemble.providers.base import Host
    from ensemble.spec import FleetSpec

TAG = "ensemble"
SMOKE_TAG = "ensemble-smoke"
HOSTKEY_TAG = "ensemble-hostkey"  # a server's ed25519 host key blob, made before the server: every runner pins it
SBS_FAMILIES = ("PRO2", "POP2", "PLAY2")  # commercial types whose images boot from block storage


@dataclass(frozen=True)
class WantedHost:
    """A host to create: its DNS name, role, shard number and commercial type.

    Example::

        WantedHost("demo-1.meet.example.org", "shard", 1, "PRO2-S")
    """

    name: str
    role: str
    shard: int | None
    commercial_type: str


def fleet_tag(fleet: str) -> str:
    """The tag every resource of a fleet carries. Example: fleet_tag("demo") -> "ensemble-fleet=demo"."""
    return f"ensemble-fleet={fleet}"


def security_group_name(fleet: str, role: str | None = None) -> str:
    """A role's security group; without a role, the single group of fleets made before groups per role.

    Example: security_group_name("demo", "shard") -> "ensemble-demo-shard"; without role: "ensemble-demo"
    """
    return f"ensemble-{fleet}-{role}" if role else f"ensemble-{fleet}"


def group_tags(fleet: str, throwaway: bool, role: str | None = None) -> list[str]:
    """Tags of a role's security group (the role tag tells it from the old single group, and from the
    group of a fleet whose name happens to end in -shard).

    Example: group_tags("demo", False, "shard") -> ["ensemble", "ensemble-fleet=demo", "ensemble-role=shard"].
    """
    return [TAG, fleet_tag(fleet)] + ([f"ensemble-role={role}"] if role else []) + ([SMOKE_TAG] if throwaway else [])


def is_role_group(tags: list[str] | None, name: str, fleet: str, role: str) -> bool:
    """Whether a listed group is this fleet's group for this role (name and role tag both match).

    Example::

        is_role_group(["ensemble-fleet=demo", "ensemble-role=shard"], "ensemble-demo-shard", "demo", "shard")  # True
    """
    tags = tags or []
    return name == security_group_name(fleet, role) and fleet_tag(fleet) in tags and f"ensemble-role={role}" in tags


def host_tags(fleet: str, role: str, shard: int | None, created: str, throwaway: bool,
              labels: dict[str, str] | None = None) -> list[str]:
    """Tags of one host's server, IPs and volume.

    Example::

        host_tags("demo", "shard", 2, "2026-01-01T00:00:00Z", False)
        # ["ensemble", "ensemble-fleet=demo", "ensemble-role=shard", "ensemble-shard=2", "ensemble-created=..."]
    """
    tags = [TAG, fleet_tag(fleet), f"ensemble-role={role}"]
    if shard is not None:
        tags.append(f"ensemble-shard={shard}")
    tags.append(f"ensemble-created={created}")
    tags += [f"{key}={value}" for key, value in sorted((labels or {}).items())]  # the fleet's identity
    if throwaway:
        tags.append(SMOKE_TAG)
    return tags


def hostkey_tag(blob: str) -> str:
    """The tag carrying a server's SSH host key (base64 blob of an ssh-ed25519 key).

    Example::

        hostkey_tag("AAAAC3NzaC1lZDI1NTE5AAAAI...")   # "ensemble-hostkey=AAAAC3NzaC1lZDI1NTE5AAAAI..."
    """
    return f"{HOSTKEY_TAG}={blob}"


def slot_tags(fleet: str, role: str, shard: int | None) -> list[str]:
    """The tags every server filling one place of the fleet carries (the front door, or shard n): two servers
    with these tags are duplicates (two runs created the same host at once).

    Example::

        slot_tags("demo", "shard", 2)   # ["ensemble-fleet=demo", "ensemble-role=shard", "ensemble-shard=2"]
    """
    return [fleet_tag(fleet), f"ensemble-role={role}"] + ([f"ensemble-shard={shard}"] if shard is not None else [])


def creation_order(created: datetime | str | None, ident: str) -> tuple[str, str]:
    """The order every runner agrees on among duplicates: the first created (then the smallest id) is kept.

    Example::

        min(servers, key=lambda s: creation_order(s.creation_date, s.id))   # the one that stays
    """
    if isinstance(created, datetime):
        created = created.astimezone(UTC).isoformat()
    return (created or "9999", ident)


def tag_values(tags: Iterable[str]) -> dict[str, str]:
    """{"ensemble-fleet": "demo", "ensemble-smoke": "", ...} from a tag list.

    Example::

        tag_values(["ensemble-fleet=demo", "ensemble-smoke"])   # {"ensemble-fleet": "demo", "ensemble-smoke": ""}
    """
    values = {}
    for tag in tags:
        key, _, value = tag.partition("=")
        values[key] = value
    return values


def parse_time(value: str | None) -> datetime | None:
    """An ISO time as an aware datetime (UTC if it names no zone); None if empty or malformed.

    Example::

        parse_time("2026-01-01T00:00:00Z")   # datetime(2026, 1, 1, tzinfo=UTC)
    """
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def now_iso() -> str:
    """Now, as the ensemble-created tag says it. Example: now_iso() -> "2026-01-01T12:00:00Z"."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def old_enough(tags: list[str] | None, cutoff: datetime | None, fallback: datetime | None = None) -> bool:
    """True without a cutoff; else True when the resource's ensemble-created time (or `fallback`) is before it.

    Example::

        old_enough(["ensemble-created=2026-01-01T00:00:00Z"], parse_time("2026-01-02T00:00:00Z"))   # True
    """
    if cutoff is None:
        return True
    created = parse_time(tag_values(tags or []).get("ensemble-created")) or fallback
    return created is not None and created < cutoff


def firewall_rules(ssh_cidrs: list[str], role: str, spec: FleetSpec | None = None
                   ) -> list[tuple[str, int, int, str]]:
    """(protocol, first port, last port, source range) a role's security group lets in; all else is
    dropped. The public ports are `public_ports(role, spec)`, the very list the host firewall opens;
    SSH is open to `ssh_cidrs` only.

    Example::

        firewall_rules(["198.51.100.0/24"], "frontdoor")
        # [("tcp", 80, 80, "0.0.0.0/0"), ("tcp", 80, 80, "::/0"), ("tcp", 443, 443, "0.0.0.0/0"), ...,
        #  ("tcp", 22, 22, "198.51.100.0/24")]: no UDP, nothing behind a media port here
    """
    tcp, udp = public_ports(role, spec)
    public = [("tcp", *port_range(p)) for p in tcp] + [("udp", *port_range(p)) for p in udp]
    rules = []
    if role == "shard":
        # the shards' occupancy port is let through the group (set before the front door has an
        # address); each shard's nftables then accepts it from the front door's addresses only
        public.append(("tcp", paths.OCCUPANCY_PORT, paths.OCCUPANCY_PORT))
    for protocol, first_port, last_port in public:
        rules += [(protocol, first_port, last_port, "0.0.0.0/0"), (protocol, first_port, last_port, "::/0")]
    rules += [("tcp", 22, 22, cidr) for cidr in ssh_cidrs]
    return rules


def image_kind(commercial_type: str) -> str:
    """The marketplace image type a commercial type boots. Example: image_kind("PRO2-S") -> "instance_sbs"."""
    return "instance_sbs" if commercial_type.split("-")[0] in SBS_FAMILIES else "instance_local"


def wanted_hosts(spec: FleetSpec, existing: list[Host], throwaway: bool) -> list[WantedHost]:
    """What the spec asks for and is not there yet: shards by number, then (unless throwaway) the front
    door by role, first.

    Example::

        [w.name for w in wanted_hosts(spec, [], throwaway=False)]   # ["meet.example.org", "demo-1...", ...]
    """
    settings = spec.provider.scaleway
    have = {h.shard for h in existing if h.role == "shard"}
    wanted = [WantedHost(spec.shard_name(n), "shard", n, settings.commercial_type)
              for n in range(1, spec.fleet.shards + 1) if n not in have]
    if not throwaway and not any(h.role == "frontdoor" for h in existing):
        wanted.insert(0, WantedHost(spec.fleet.domain, "frontdoor", None, settings.frontdoor_commercial_type))
    return wanted
