"""The shard's TURN relay (coturn) as plain values: peer restrictions, certificate copies, ports.

Pure, no I/O: `ensemble.render` (coturn, nginx, prosody, config.js templates) and `ensemble.hostfiles`
(the certbot renewal hook) read the same `turn_context`, so the relay's certificate paths and copy
command are written once.

Example::

    turn_context(spec, "demo-1.meet.example.org")["allowed_peer_ranges"]     # [] by default
"""

from __future__ import annotations

import ipaddress

from ensemble import paths
from ensemble.spec import FleetSpec

# Peers the relay never reaches (coturn's denied-peer-ip): "this" network, private, shared (CGNAT),
# loopback, link-local (cloud metadata 169.254.169.254, Scaleway's 169.254.42.42), documentation,
# benchmarking, multicast and reserved ranges; IPv6 loopback, mapped, NAT64, discard, ULA, link-local,
# documentation, multicast.
DENIED_PEER_NETWORKS = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12",
    "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/4", "240.0.0.0/4",
    "::/127", "::ffff:0:0/96", "64:ff9b::/96", "100::/64", "2001:db8::/32", "fc00::/7", "fe80::/10", "ff00::/8",
)


def peer_range(network: str) -> str:
    """A CIDR as coturn's address range ("first-last"; one address alone).

    Example::

        peer_range("10.0.0.0/8")       # "10.0.0.0-10.255.255.255"
        peer_range("192.0.2.7/32")     # "192.0.2.7"
    """
    net = ipaddress.ip_network(network, strict=False)
    first, last = net[0], net[-1]
    return str(first) if first == last else f"{first}-{last}"


def coturn_cert_paths(domain: str) -> tuple[str, str]:
    """(certificate, key) coturn reads: copies of the shard's own TLS files, readable by turnserver.

    Example::

        coturn_cert_paths("a.test")[0]   # "/etc/coturn/certs/a.test.fullchain.pem"
    """
    return f"{paths.COTURN_CERT_DIR}/{domain}.fullchain.pem", f"{paths.COTURN_CERT_DIR}/{domain}.privkey.pem"


def coturn_cert_copy_command(domain: str) -> str:
    """Copy the shard's certificate and key for coturn (0640 root:turnserver), never world-readable.

    Used by the TLS deploy and the certbot renewal hook alike.

    Example::

        coturn_cert_copy_command("a.test").startswith("install -d")    # True
    """
    chain, key = f"{paths.TLS_DIR}/{domain}/fullchain.pem", f"{paths.TLS_DIR}/{domain}/privkey.pem"
    cert, pkey = coturn_cert_paths(domain)
    return (f"install -d -m 0750 -g turnserver {paths.COTURN_CERT_DIR}"
            f" && install -m 0640 -g turnserver {chain} {cert} && install -m 0640 -g turnserver {key} {pkey}")


def turn_tls_name(domain: str) -> str:
    """The name browsers reach the relay's TLS side by on 443: nginx sends this SNI to coturn and every
    other name to the web site (jitsi's handbook: a second DNS name, "turn-" + the site's name).

    Example::

        turn_tls_name("demo-1.meet.example.org")     # "turn-demo-1.meet.example.org"
    """
    return f"turn-{domain}"


def certificate_names(spec: FleetSpec, domain: str) -> list[str]:
    """Every name a shard's certificate covers: its domain, and the relay's TLS name when `[turn]` is on.

    Example::

        certificate_names(spec, "a.test")     # ["a.test", "turn-a.test"]
    """
    return [domain, turn_tls_name(domain)] if spec.turn.enabled else [domain]


def turn_context(spec: FleetSpec, domain: str) -> dict:
    """What the coturn, nginx, prosody, config.js and hook templates know of the relay.

    Example::

        turn_context(spec, "demo-1.meet.example.org")["port"]     # 3478
    """
    t = spec.turn
    cert, key = coturn_cert_paths(domain)
    return {
        "enabled": t.enabled, "port": t.port, "relay_min_port": t.relay_min_port,
        "relay_max_port": t.relay_max_port, "credential_ttl": t.credential_ttl, "user_quota": t.user_quota,
        "total_quota": t.total_quota, "max_bps": t.max_bps,
        "denied_peer_ranges": [peer_range(n) for n in DENIED_PEER_NETWORKS],
        "allowed_peer_ranges": [peer_range(n) for n in t.allowed_peer_ips],
        "tls_public_port": paths.TURN_TLS_PUBLIC_PORT, "web_port": paths.WEB_TLS_PORT,
        "strip_port": paths.TURN_TLS_STRIP_PORT, "tls_port": paths.COTURN_TLS_PORT,
        "cert": cert, "key": key, "copy_command": coturn_cert_copy_command(domain),
        "tls_name": turn_tls_name(domain),
    }
