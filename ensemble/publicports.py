"""Which ports each role opens to everyone: ONE list that both the host firewall (nftables,
ensemble.hostfiles) and the cloud firewall (a Scaleway security group per role,
ensemble.providers.scalewaytags) are built from, so the two never disagree. SSH is not in it: it is
open to the admin CIDRs only, on every role.

Example::

    public_ports("frontdoor")   # ((80, 443), ())
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ensemble import paths

if TYPE_CHECKING:
    from ensemble.spec import FleetSpec

ROLES = ("frontdoor", "shard")  # the roles of a fleet's hosts; any other opens what the front door opens


def public_ports(role: str, spec: FleetSpec | None = None) -> tuple[tuple[int | str, ...], tuple[int | str, ...]]:
    """(TCP, UDP) ports a host of this role opens to everyone (SSH is open to the admin CIDRs only):
    both firewalls open these and nothing else, README's "Security" section lists them. With the spec's
    `[turn]` on, shards also open the relay's STUN/TURN port (UDP and TCP) and its relayed media range
    ("first-last"); TURN over TLS shares 443.

    Example::

        public_ports("shard")        # ((80, 443), (10000,))
        public_ports("shard", spec)  # ((80, 443, 3478), (10000, 3478, "49152-49999")) with [turn] on
        public_ports("frontdoor")    # ((80, 443), ()): no bridge behind it, no media port
    """
    tcp: tuple[int | str, ...] = (80, 443)
    udp: tuple[int | str, ...] = (paths.JVB_MEDIA_PORT,) if role == "shard" else ()
    if role == "shard" and spec is not None and spec.turn.enabled:
        t = spec.turn
        tcp += (t.port,)
        udp += (t.port, f"{t.relay_min_port}-{t.relay_max_port}")
    return tcp, udp


def port_range(port: int | str) -> tuple[int, int]:
    """A public port or "first-last" range as (first, last). Example: port_range("49152-49999") -> (49152, 49999)."""
    if isinstance(port, int):
        return port, port
    first, _, last = port.partition("-")
    return int(first), int(last or first)
