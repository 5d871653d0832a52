"""The files every host gets besides its components' configuration: secrets, apt sources and
keyrings, debconf answers, unattended upgrades, firewall, sysctl, the certbot hook. Pure, no I/O.

`ensemble.render` adds them to each host's files, so `ensemble render` shows the firewall and the
apt sources exactly as deploy writes them, and the base component only puts what it is given.

Example::

    files = base_files(spec, host, env, {"fleet": {...}}, keyring=b"...", role="shard")
    [f.path for f in files if f.component == "firewall"]     # ["/etc/nftables.conf"]
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterable

from ensemble import paths
from ensemble.profiles import PROSODY_IM_REPO
from ensemble.providers.base import DeployEnv, Host
from ensemble.publicports import public_ports
from ensemble.spec import FleetSpec, spec_json
from ensemble.templating import RenderedFile, render_template
from ensemble.turn import turn_context

PROSODY_KEYRING = "/usr/share/keyrings/prosody-keyring.gpg"
PROSODY_SOURCE = "/etc/apt/sources.list.d/prosody.sources"
ACCOUNTS_DIGEST = "/etc/ensemble/prosody-accounts.sha256"
# Components of these files: "apt" is put before the package install, the others after it.
BEFORE_INSTALL = ("secrets", "apt")


def nftables_conf(ssh_cidrs: Iterable[str], udp_ports: Iterable[int] = (paths.JVB_MEDIA_PORT,),
                  tcp_ports: Iterable[int] = (80, 443), occupancy_from: Iterable[str] = ()) -> str:
    """The host firewall: drop inbound except established, loopback, ICMP, web, JVB media (shards; the
    front door passes no UDP port: nothing of it listens there), SSH from CIDRs, and on shards the
    private occupancy port (paths.OCCUPANCY_PORT) from the front door's addresses only.

    Example::

        "tcp dport 22" in nftables_conf(["10.0.0.0/8"])    # True
    """
    udp = tuple(udp_ports)
    v4 = [c for c in ssh_cidrs if ipaddress.ip_network(c, strict=False).version == 4]
    v6 = [c for c in ssh_cidrs if ipaddress.ip_network(c, strict=False).version == 6]
    ssh = []
    sources = [ipaddress.ip_address(a) for a in occupancy_from]
    for version, family in ((4, "ip"), (6, "ip6")):
        addresses = sorted({str(a) for a in sources if a.version == version})
        if addresses:
            ssh.append(f"        {family} saddr {{ {', '.join(addresses)} }} tcp dport {paths.OCCUPANCY_PORT} accept")
    if v4:
        ssh.append(f"        ip saddr {{ {', '.join(v4)} }} tcp dport 22 accept")
    if v6:
        ssh.append(f"        ip6 saddr {{ {', '.join(v6)} }} tcp dport 22 accept")
    lines = [
        "#!/usr/sbin/nft -f",
        "# Managed by ensemble: changes here are overwritten on the next deploy.",
        "flush ruleset",
        "table inet ensemble {",
        "    chain input {",
        "        type filter hook input priority filter; policy drop;",
        "        ct state established,related accept",
        "        ct state invalid drop",
        '        iifname "lo" accept',
        "        meta l4proto { icmp, icmpv6 } accept",
        f"        tcp dport {{ {', '.join(map(str, tcp_ports))} }} accept",
        *([f"        udp dport {{ {', '.join(map(str, udp))} }} accept"] if udp else []),
        *ssh,
        "    }",
        "    chain forward {",
        "        type filter hook forward priority filter; policy drop;",
        "    }",
        "}",
        "",
    ]
    return "\n".join(lines)


def sysctl_conf() -> str:
    """JVB's UDP buffer sizes (jitsi-videobridge's own recommendation).

    Example::

        "net.core.rmem_max" in sysctl_conf()    # True
    """
    return "# Managed by ensemble: UDP buffers for jitsi-videobridge\nnet.core.rmem_max = 10485760\n" \
           "net.core.netdev_max_backlog = 100000\n"


def auto_upgrades_conf() -> str:
    """Unattended security upgrades, daily.

    Example::

        "Unattended-Upgrade" in auto_upgrades_conf()   # True
    """
    return 'APT::Periodic::Update-Package-Lists "1";\nAPT::Periodic::Unattended-Upgrade "1";\n'


def jitsi_source(repo: str, suite: str) -> str:
    """deb822 source of Jitsi's flat repository, trusted through its own keyring only.

    Example::

        jitsi_source("https://download.jitsi.org", "stable/")
    """
    return f"Types: deb\nURIs: {repo}\nSuites: {suite}\nSigned-By: {paths.JITSI_KEYRING}\n"


def jitsi_preferences(pins: Iterable[tuple[str, str]]) -> str:
    """apt preferences pinning Jitsi's packages to exact versions: kept by every later install and upgrade.

    Priority 1001 also brings a host that holds newer versions back to the pinned set.

    Example::

        jitsi_preferences([("jicofo", "1.0-1038-1")]).splitlines()[1:4]
        # ["Package: jicofo", "Pin: version 1.0-1038-1", "Pin-Priority: 1001"]
    """
    stanzas = [f"Package: {name}\nPin: version {version}\nPin-Priority: 1001\n" for name, version in pins]
    return "# Managed by ensemble: the Jitsi release this OS profile pins, as one set.\n" + "\n".join(stanzas)


def shard_pins(spec: FleetSpec) -> list[tuple[str, str]]:
    """The (package, version) pins of a shard: the profile's whole set for its own release, else only
    jitsi-meet at the spec's version (its exact dependencies are unknown here), none when unpinned.

    Example::

        shard_pins(spec_from_dict({"fleet": {"os": "debian-buster"}}))[0]    # ("jitsi-meet", "2.0.8719-1")
    """
    version = spec.jitsi_version
    if not version:
        return []
    if version == spec.profile.jitsi_version and spec.profile.jitsi_pins:
        return list(spec.profile.jitsi_pins)
    return [("jitsi-meet", version)]


def prosody_im_source(codename: str) -> str:
    """deb822 source of prosody.im's repository (profiles whose distribution prosody is too old).

    Example::

        prosody_im_source("bullseye").splitlines()[2]    # "Suites: bullseye"
    """
    return (f"Types: deb\nURIs: {PROSODY_IM_REPO}\nSuites: {codename}\nComponents: main\n"
            f"Signed-By: {PROSODY_KEYRING}\n")


def apt_direct_conf(hosts: Iterable[str]) -> str:
    """apt settings that bypass a configured proxy for some hosts (a repository served on the bridge).

    Example::

        apt_direct_conf(["10.214.4.1"])   # 'Acquire::http::Proxy::10.214.4.1 "DIRECT";\n'
    """
    return "".join(f'Acquire::http::Proxy::{h} "DIRECT";\n' for h in hosts)


def peers_lines(peers: dict[str, str]) -> str:
    """/etc/hosts lines for the fleet's hosts, sorted (stable bytes).

    Example::

        peers_lines({"b.test": "10.0.0.2", "a.test": "10.0.0.1"})   # "10.0.0.1 a.test\n10.0.0.2 b.test"
    """
    return "\n".join(f"{address} {name}" for name, address in sorted(peers.items()))


def secrets_json(host_secrets: dict[str, dict[str, str]]) -> str:
    """The secrets a host keeps (its own entry + the fleet entry), stable bytes for idempotence.

    Example::

        secrets_json({"fleet": {"occupancy_token": "x"}})
    """
    return json.dumps(host_secrets, indent=2, sort_keys=True) + "\n"


def accounts_digest(secrets: dict[str, str]) -> str:
    """A digest of the XMPP passwords: when it changes, the accounts are registered again.

    Example::

        accounts_digest({"focus_password": "a", "jvb_password": "b"})
    """
    text = f"{secrets['focus_password']}\n{secrets['jvb_password']}\n"
    return hashlib.sha256(text.encode()).hexdigest() + "\n"


def cert_paths(domain: str) -> tuple[str, str]:
    """(fullchain, privkey) of a domain.

    Example::

        cert_paths("a.test")   # ("/etc/ensemble/tls/a.test/fullchain.pem", "/etc/ensemble/tls/a.test/privkey.pem")
    """
    return f"{paths.TLS_DIR}/{domain}/fullchain.pem", f"{paths.TLS_DIR}/{domain}/privkey.pem"


def debconf_preseed(domain: str) -> str:
    """Answers for Jitsi's packages: our hostname, our certificate paths, no JaaS.

    Example::

        "jvb-hostname string a.test" in debconf_preseed("a.test")    # True
    """
    chain, key = cert_paths(domain)
    return "".join(f"{line}\n" for line in (
        f"jitsi-videobridge2 jitsi-videobridge/jvb-hostname string {domain}",
        f"jitsi-meet-prosody jitsi-videobridge/jvb-hostname string {domain}",
        "jitsi-meet-web-config jitsi-meet/cert-choice select I want to use my own certificate",
        f"jitsi-meet-web-config jitsi-meet/cert-path-crt string {chain}",
        f"jitsi-meet-web-config jitsi-meet/cert-path-key string {key}",
        "jitsi-meet-web-config jitsi-meet/jaas-choice boolean false",
    ))


def certbot_hook(domain: str, turn: dict | None = None) -> str:
    """certbot's deploy hook (templates/tls/reload-nginx.sh.j2): nginx reloads after a renewal, and the
    shard's TURN relay gets the renewed certificate (`turn`: ensemble.turn.turn_context, shards only).

    Example::

        certbot_hook("a.test").startswith("#!/bin/sh")    # True
    """
    return render_template("tls/reload-nginx.sh.j2", {"domain": domain, "tls": {"cert": cert_paths(domain)[0]},
                                                      "turn": turn})


def coturn_start_guard() -> str:
    """A systemd drop-in: coturn starts only once its configuration requires credentials.

    Debian's package starts coturn at install with its default configuration (no authentication:
    an open relay) until the deploy puts ensemble's; this file is put before the install, so that
    never happens. Example::

        "ExecStartPre=" in coturn_start_guard()    # True
    """
    return ("# Managed by ensemble: coturn runs only with a configuration that requires credentials\n"
            "# (never the package's default one, between the install and ensemble's configuration).\n"
            "[Service]\n"
            f"ExecStartPre=/bin/grep -qx use-auth-secret {paths.COTURN_CONF}\n")


def ssh_cidrs(spec: FleetSpec, env: DeployEnv) -> list[str]:
    """Who may reach port 22: the provider's admin network (local: the bridge) or the spec's CIDRs."""
    return list(env.admin_cidrs) if env.admin_cidrs else list(spec.provider.scaleway.ssh_allowed_cidrs)


def launcher() -> str:
    """The front door's `ensemble` command: the package deploy unpacked, run by Debian's python3.

    `ensemble frontdoor refresh` (the timer's command) goes to the stdlib-only entry point
    (ensemble.frontdoor.commands.host_main), which runs on python >= 3.9 without click; the rest
    goes to the click CLI.
    """
    lib = f"{paths.ENSEMBLE_HOME}/lib"
    return (f'#!/bin/sh\n# Managed by ensemble.\n'
            f'if [ "$1" = frontdoor ] && [ "$2" = refresh ]; then\n'
            f'    shift\n    PYTHONPATH={lib} exec python3 -m ensemble.frontdoor.commands "$@"\nfi\n'
            f'PYTHONPATH={lib} exec python3 -m ensemble.cli "$@"\n')


def fleet_size_record(shards: int, spec_shards: int) -> str:
    """The front door's record of the fleet's size: the count in force and the spec's count then.

    `deploy` keeps the recorded count while the spec still says `spec_shards` (the user scaled with
    `ensemble fleet scale`); once the spec's count is edited, the spec wins.

    Example::

        fleet_size_record(3, 2)     # '{"shards": 3, "spec_shards": 2}\n'
    """
    return json.dumps({"shards": shards, "spec_shards": spec_shards}, sort_keys=True) + "\n"


def fleet_id_record(spec: FleetSpec, fleet_id: str) -> str:
    """The host's record of the fleet it belongs to and how it was deployed (paths.FLEET_ID_FILE): read back
    before the next deploy, it shows which changes would disrupt the live fleet (ensemble.identity).

    Example::

        fleet_id_record(spec, "f-3k9q2m8x1cwe")
        # '{"domain": "meet.example.org", "fleet_id": "f-3k9q2m8x1cwe", "name": "demo", "os": ..., ...}\n'
    """
    return json.dumps({"name": spec.fleet.name, "domain": spec.fleet.domain, "fleet_id": fleet_id,
                       "tls_mode": spec.tls.mode, "shard_name": spec.fleet.shard_name, "os": spec.fleet.os},
                      sort_keys=True) + "\n"


def base_files(spec: FleetSpec, host: Host, env: DeployEnv, host_secrets: dict, *,
               keyring: bytes | None = None, spec_shards: int | None = None,
               frontdoor_addresses: Iterable[str] = ()) -> list[RenderedFile]:
    """Every file of a host outside its components: secrets, apt, debconf, upgrades, firewall, sysctl, hook.

    `frontdoor_addresses` may reach a shard's private occupancy port (shards only).
    `spec_shards` is the spec file's own shard count when `spec.fleet.shards` was scaled (front door).
    `keyring` is Jitsi's dearmored, fingerprint-checked signing key (shards); without it (front
    door, or `ensemble render` offline for a shard) the keyring file is left out and the source is
    still shown. Components "secrets" and "apt" go before the package install (BEFORE_INSTALL).

    Example::

        [f.path for f in base_files(spec, door, DeployEnv(spec), {"fleet": {...}})][:1]
        # ["/etc/ensemble/secrets.json"]
    """
    shard = host.role == "shard"
    tcp, udp = public_ports(host.role, spec)
    fleet_id = str((host_secrets.get("fleet") or {}).get("fleet_id", ""))
    out = [RenderedFile(paths.SECRETS_FILE, secrets_json(host_secrets), 0o600, component="secrets"),
           RenderedFile(paths.FLEET_ID_FILE, fleet_id_record(spec, fleet_id), component="secrets")]
    if env.apt_direct:
        out.append(RenderedFile(paths.APT_DIRECT_FILE, apt_direct_conf(env.apt_direct), component="apt"))
    if shard:
        if keyring:
            out.append(RenderedFile(paths.JITSI_KEYRING, keyring, component="apt"))
        out.append(RenderedFile(paths.JITSI_SOURCE, jitsi_source(spec.jitsi.apt_repo, spec.jitsi.apt_suite),
                                component="apt"))
        if shard_pins(spec):
            out.append(RenderedFile(paths.JITSI_PREFERENCES, jitsi_preferences(shard_pins(spec)), component="apt"))
        if spec.profile.prosody_source == "prosody.im":
            out.append(RenderedFile(PROSODY_SOURCE, prosody_im_source(spec.profile.codename), component="apt"))
        out.append(RenderedFile(paths.DEBCONF_PRESEED, debconf_preseed(host.name), 0o600, component="apt"))
        if spec.turn.enabled:  # before the install too: the package would start an open relay
            out.append(RenderedFile(paths.COTURN_START_GUARD, coturn_start_guard(), component="apt"))
        out.append(RenderedFile(ACCOUNTS_DIGEST, accounts_digest(host_secrets[host.name]), 0o600,
                                component="prosody-accounts"))
    out += [
        RenderedFile(paths.AUTO_UPGRADES, auto_upgrades_conf(), component="upgrades"),
        RenderedFile(paths.NFTABLES_CONF, nftables_conf(ssh_cidrs(spec, env), udp_ports=udp, tcp_ports=tcp,
                                                      occupancy_from=frontdoor_addresses if shard else ()), 0o755,
                     component="firewall"),
    ]
    if shard:
        out.append(RenderedFile(paths.SYSCTL_FILE, sysctl_conf(), component="sysctl"))
    else:
        record = fleet_size_record(spec.fleet.shards, spec_shards or spec.fleet.shards)
        out += [RenderedFile(paths.FLEET_SIZE_FILE, record, component="secrets"),
                RenderedFile(paths.FRONTDOOR_SPEC, spec_json(spec), component="frontdoor-program"),
                RenderedFile(paths.ENSEMBLE_BIN, launcher(), 0o755, component="frontdoor-program")]
    if spec.tls.mode == "letsencrypt":
        turn = turn_context(spec, host.name) if shard else None
        out.append(RenderedFile(paths.CERTBOT_HOOK, certbot_hook(host.name, turn), 0o755, component="tls"))
    return out
