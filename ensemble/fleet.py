"""Deploy orchestration: spec -> provider.ensure_hosts -> secrets read back -> runner -> summary.

`deploy_fleet` creates the hosts that are missing, reads each host's kept secrets over SSH
(/etc/ensemble/secrets.json), generates only what is missing (the fleet-wide occupancy token
lives on the front door and is copied to shards), then deploys every shard and the front door
in parallel. A failing host is reported; the others stay deployed. `plan_fleet` does the same
reading and a pyinfra dry run, creating and changing nothing.

Example::

    result = deploy_fleet(load_spec("examples/local.toml"))
    print(summary_table(result)); sys.exit(0 if result.ok else 1)
"""

from __future__ import annotations

import base64
import json
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ensemble.errors import EnsembleError
from ensemble.inventory import Target, targets_for
from ensemble.providers.base import Host
from ensemble.secrets import FLEET_KEY, Secrets, complete_secrets
from ensemble.spec import EtherpadSection, FleetSpec

SECRETS_FILE = "/etc/ensemble/secrets.json"
PRODUCTION_JITSI_REPO = "https://download.jitsi.org"
LOCAL_ETHERPAD_SOURCE = "npm:ep_etherpad-lite@1.8.14"


@dataclass
class FleetResult:
    """The outcome of a deploy or plan: per-host results (runner.HostResult) and what was created.

    Example::

        result.ok, result.results["demo-1.meet.test"].changed
    """

    created: list[str] = field(default_factory=list)  # hosts made by this run (plan: would be made)
    results: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    dry: bool = False

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results.values())

    @property
    def changed(self) -> int:
        return sum(r.changed for r in self.results.values())

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "dry": self.dry, "created": self.created, "seconds": round(self.seconds, 2),
                "changed": self.changed, "hosts": {n: r.as_dict() for n, r in sorted(self.results.items())}}


# ---- facts: the Jitsi signing key ----

def dearmor(armored: str) -> bytes:
    """An ASCII-armored OpenPGP block as binary (what `gpg --dearmor` writes).

    Example::

        dearmor(open("jitsi-key.gpg.key").read())[:1]    # b'\\x99' (a public key packet)
    """
    lines = armored.strip().splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.startswith("-----BEGIN PGP"))
        end = next(i for i, line in enumerate(lines) if line.startswith("-----END PGP"))
    except StopIteration:
        raise EnsembleError("jitsi.apt_key_url: the key is not an ASCII-armored OpenPGP block") from None
    body = lines[start + 1:end]
    blank = next((i for i, line in enumerate(body) if not line.strip()), -1)  # armor headers end here
    data = [line for line in body[blank + 1:] if line and not line.startswith("=")]
    return base64.b64decode("".join(data))


def key_fingerprints(key: bytes) -> list[str]:
    """Fingerprints of the keys in an OpenPGP keyring (gpg in a throwaway home, nothing imported).

    Example::

        key_fingerprints(dearmor(text))    # ["66A9CD0595D6AFA247290D3BEF8B479E2DC1389C"]
    """
    with tempfile.TemporaryDirectory() as home:
        out = subprocess.run(["gpg", "--homedir", home, "--batch", "--show-keys", "--with-colons"],
                             input=key, capture_output=True, check=False).stdout.decode(errors="replace")
    return [line.split(":")[9] for line in out.splitlines() if line.startswith("fpr:")][:1]


def jitsi_keyring(spec: FleetSpec, timeout: float = 30) -> bytes:
    """Download Jitsi's signing key, check its fingerprint against the spec, return it dearmored.

    Done once on the deploying machine, so every host gets the same checked bytes.

    Example::

        jitsi_keyring(spec)      # raises EnsembleError naming jitsi.apt_key_fingerprint on a mismatch
    """
    url = spec.jitsi.apt_key_url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (URL from the spec)
            text = response.read().decode("ascii", errors="replace")
    except OSError as exc:
        raise EnsembleError(f"jitsi.apt_key_url: cannot download {url}: {exc}") from None
    key = dearmor(text)
    expected = spec.jitsi.apt_key_fingerprint
    if expected:
        found = key_fingerprints(key)
        if expected not in found:
            raise EnsembleError(f"jitsi.apt_key_fingerprint: the key at {url} has fingerprint "
                                f"{found[0] if found else 'none'}, expected {expected}")
    return key


# ---- facts: secrets kept on the hosts ----

def merge_secrets(spec: FleetSpec, remote: dict[str, str | None], hosts: list[Host]) -> tuple[Secrets, bool]:
    """Each host's own kept secrets + the fleet entry (front door's first), completed; (store, added).

    Example::

        store, added = merge_secrets(spec, {"demo-1.meet.test": '{"demo-1.meet.test": {...}}'}, hosts)
    """
    kept: dict[str, dict] = {}
    for name, text in remote.items():
        try:
            kept[name] = json.loads(text) if text else {}
        except ValueError:
            kept[name] = {}
    store: Secrets = {}
    for name, data in kept.items():
        if isinstance(data.get(name), dict):
            store[name] = dict(data[name])
    doors = [h.name for h in hosts if h.role == "frontdoor"]
    for name in [*doors, *sorted(kept)]:  # the front door holds the fleet-wide token
        fleet = kept.get(name, {}).get(FLEET_KEY)
        if isinstance(fleet, dict) and fleet:
            store[FLEET_KEY] = dict(fleet)
            break
    added = complete_secrets(store, spec)
    return store, added


def read_secrets(spec: FleetSpec, targets: list[Target], hosts: list[Host], progress) -> Secrets:
    """Read every host's kept secrets over SSH and complete them (nothing is written here)."""
    from ensemble.runner import run_command

    remote = run_command(targets, f"cat {SECRETS_FILE} 2>/dev/null || true", progress=lambda _line: None)
    store, _ = merge_secrets(spec, {k: v for k, v in remote.items() if v is not None}, hosts)
    return store


# ---- provider specifics ----

@dataclass(frozen=True)
class DeployEnv:
    """What the provider adds to a deploy: the spec as deployed, proxies, the admin network."""

    spec: FleetSpec
    http_proxy: str = ""
    admin_cidrs: list[str] = field(default_factory=list)
    apt_direct: list[str] = field(default_factory=list)  # repository hosts apt reaches without its proxy
    hosts_file: bool = False  # no DNS for the fleet's names: every host gets the others in /etc/hosts

    def peers_of(self, hosts: list[Host]) -> dict[str, str]:
        return {h.name: h.address for h in hosts} if self.hosts_file else {}


def local_environment(spec: FleetSpec, provider) -> DeployEnv:
    """Local provider: Jitsi's packages from the stand-in repository it serves (download.jitsi.org is
    out of reach), Etherpad from npm through its proxy (GitHub is out of reach), SSH from its bridge.
    A spec that names its own Jitsi repository or Etherpad source keeps it.

    Example::

        local_environment(spec, LocalProvider(spec)).spec.jitsi.apt_repo   # "http://10.x.y.1:PORT"
    """
    net = provider.network(spec)
    if spec.jitsi.apt_repo == PRODUCTION_JITSI_REPO:
        from ensemble.standins.jitsi_repo import build_standin_repo

        repo = build_standin_repo()
        url = provider.serve_directory(spec, "jitsi-standin", repo.path).rstrip("/")
        jitsi = replace(spec.jitsi, apt_repo=url, apt_suite=repo.suite, apt_key_url=repo.key_url(url),
                        apt_key_fingerprint=repo.key_fingerprint)
        spec = replace(spec, jitsi=jitsi)
    if spec.etherpad.source_url == EtherpadSection().source_url:
        # GitHub is out of reach too: the npm package through the fleet's npm proxy (checked by npm's integrity)
        spec = replace(spec, etherpad=replace(spec.etherpad, source_url=LOCAL_ETHERPAD_SOURCE, sha256=""))
    direct = [urllib.parse.urlsplit(spec.jitsi.apt_repo).hostname or ""]
    return DeployEnv(spec=spec, http_proxy=net.http_proxy_url, admin_cidrs=[net.subnet],
                     apt_direct=[h for h in direct if h], hosts_file=True)


def deploy_environment(spec: FleetSpec, provider) -> DeployEnv:
    if spec.provider.kind == "local":
        return local_environment(spec, provider)
    return DeployEnv(spec=spec)


# ---- actions ----

def wanted_names(spec: FleetSpec) -> list[str]:
    return [*spec.shard_names(), spec.fleet.domain]


def deploy_fleet(spec: FleetSpec, *, provider=None, dry: bool = False, progress=print,
                 hosts: list[Host] | None = None) -> FleetResult:
    """Create missing hosts (not when dry), then deploy (or dry-run) every host in parallel.

    Example::

        deploy_fleet(spec).ok
    """
    from ensemble.components.shard import fleet_host
    from ensemble.providers import get_provider
    from ensemble.runner import run_deploy

    started = time.monotonic()
    provider = provider or get_provider(spec)
    result = FleetResult(dry=dry)
    if hosts is None:
        existing = {h.name for h in provider.list_hosts(spec)}
        result.created = [n for n in wanted_names(spec) if n not in existing]
        if dry:
            hosts = list(provider.list_hosts(spec))
        else:
            if result.created:
                progress(f"creating {len(result.created)} host(s): {', '.join(result.created)}")
            hosts = provider.ensure_hosts(spec, progress=progress)
    env = deploy_environment(spec, provider) if hosts else DeployEnv(spec=spec)
    targets = targets_for(hosts)
    if targets:
        keyring = jitsi_keyring(env.spec)
        store = read_secrets(env.spec, targets, hosts, progress)
        kwargs = {"spec": env.spec, "store": store, "hosts": hosts, "keyring": keyring,
                  "http_proxy": env.http_proxy, "admin_cidrs": env.admin_cidrs, "apt_direct": env.apt_direct,
                  "peers": env.peers_of(hosts)}
        result.results = run_deploy(targets, fleet_host, kwargs, dry=dry, progress=progress)
    result.seconds = time.monotonic() - started
    return result


def summary_table(result: FleetResult) -> str:
    """The per-host summary printed at the end of deploy/plan.

    Example::

        print(summary_table(result))
    """
    verb = "would change" if result.dry else "changed"
    rows = [("host", verb, "unchanged", "failed", "commands", "status")]
    for name, r in sorted(result.results.items()):
        status = "ok" if r.ok else f"FAILED: {r.error or 'an operation failed'}"
        rows.append((name, str(r.changed), str(r.unchanged), str(r.failed), str(r.commands), status))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(widths[i]) if i < 5 else cell for i, cell in enumerate(row)) for row in rows]
    if result.created:
        lines.insert(0, f"{'hosts to create' if result.dry else 'hosts created'}: {', '.join(result.created)}")
    lines.append(f"{len(result.results)} host(s), {result.changed} change(s), {result.seconds:.1f}s, "
                 f"{'all ok' if result.ok else 'FAILURES'}")
    return "\n".join(lines)


def write_json(path: Path, result: FleetResult) -> None:
    path.write_text(json.dumps(result.as_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
