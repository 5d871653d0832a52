"""Deploy benchmark: one command, every figure measured side by side in one run (needs root).

    .venv/bin/python bench/deploy.py [--json]

On real throwaway hosts of the local provider (one fleet of 6 shard containers), with the Jitsi
stand-in packages and self-signed TLS, Etherpad off (its npm build would dominate and is cached):

1. warm-up: ensemble deploys shard 6 (fills the fleet's apt proxy cache; not measured), so every
   measured run below downloads from the same warm cache;
2. first deploy of 1 shard (shard 1) vs 3 shards at once (shards 2-4): ratio (target <= 1.5);
3. re-run vs first run on the same hosts: 0 changes, time ratio (target <= 0.2), remote commands
   per host on a re-run;
4. ensemble's first deploy of 1 shard vs a plain shell script (shard 5) that does the same package
   installs and file writes over one SSH session: the floor set by apt and the network (target <= 1.3).

The fleet is destroyed at the end, whatever happens. Exit status: 0 every target met, 1 a target
missed (a failed deploy also exits non-zero).
"""

from __future__ import annotations

import argparse
import base64
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ensemble.contexts import shard_packages  # noqa: E402
from ensemble.fleet import deploy_fleet  # noqa: E402
from ensemble.hostfiles import apt_direct_conf, debconf_preseed, jitsi_source, nftables_conf  # noqa: E402
from ensemble.keyring import jitsi_keyring  # noqa: E402
from ensemble.paths import JITSI_KEYRING, JITSI_SOURCE  # noqa: E402
from ensemble.providers.local import LocalProvider  # noqa: E402
from ensemble.render import shard_files  # noqa: E402
from ensemble.secrets import complete_secrets  # noqa: E402
from ensemble.spec import spec_from_dict  # noqa: E402

FLEET = "b-deploy"


def bench_spec():
    return spec_from_dict({
        "fleet": {"name": FLEET, "domain": f"{FLEET}.test", "shards": 6},
        "provider": {"kind": "local", "local": {"state_dir": "/run/ensemble-bench"}},
        "tls": {"mode": "self-signed"},
        "jitsi": {"etherpad": False},
    }, source="<bench/deploy.py>")


def timed_deploy(spec, provider, fleet, hosts, quiet=True) -> tuple[float, dict]:
    """Deploy `hosts` only (deploy_fleet's `only`), rendered with the whole `fleet` (as `ensemble deploy` does)."""
    started = time.monotonic()
    result = deploy_fleet(spec, provider=provider, hosts=fleet, only=[h.name for h in hosts],
                          progress=(lambda _l: None) if quiet else print)
    seconds = time.monotonic() - started
    if not result.ok:
        raise SystemExit(f"deploy failed: {json.dumps(result.as_dict(), indent=1)[:3000]}")
    return seconds, result.results


def shell_script(spec, env, host, keyring: bytes) -> str:
    """The plain script: same sources, packages, debconf, files and restarts as ensemble's shard deploy."""
    store: dict = {}
    complete_secrets(store, env.spec)
    files = shard_files(env.spec, host.shard, store, host, None)
    files = [f for f in files if f.component != "etherpad"]

    def write(path: str, data: bytes, mode: str = "644") -> str:
        b64 = base64.b64encode(data).decode()
        folder = shlex.quote(str(Path(path).parent))
        return f"mkdir -p {folder} && echo {b64} | base64 -d > {path} && chmod {mode} {path}"

    lines = ["set -e", "export DEBIAN_FRONTEND=noninteractive",
             write("/etc/apt/apt.conf.d/02ensemble-direct", apt_direct_conf(env.apt_direct).encode()),
             write(JITSI_KEYRING, keyring),
             write(JITSI_SOURCE, jitsi_source(env.spec.jitsi.apt_repo, env.spec.jitsi.apt_suite).encode()),
             "apt-get update -qq",
             write("/etc/ensemble/debconf.preseed", debconf_preseed(host.name).encode(), "600"),
             "debconf-set-selections /etc/ensemble/debconf.preseed",
             "apt-get install -y -qq --no-install-recommends " + " ".join(shard_packages(env.spec)) + " >/dev/null",
             write("/etc/nftables.conf", nftables_conf(env.admin_cidrs).encode(), "755"),
             "nft -f /etc/nftables.conf",
             f"mkdir -p /etc/ensemble/tls/{host.name} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256"
             f" -nodes -days 825 -subj /CN={host.name} -keyout /etc/ensemble/tls/{host.name}/privkey.pem"
             f" -out /etc/ensemble/tls/{host.name}/fullchain.pem 2>/dev/null",
             f"for d in {host.name} auth.{host.name}; do openssl req -x509 -newkey rsa:2048 -nodes -days 3650"
             " -subj /CN=$d -keyout /etc/prosody/certs/$d.key -out /etc/prosody/certs/$d.crt 2>/dev/null; done"]
    for f in files:
        lines.append(write(f.path, f.content.encode(), f"{f.mode:o}"))
    lines += [f"ln -sf /etc/prosody/conf.avail/{host.name}.cfg.lua /etc/prosody/conf.d/",
              f"ln -sf /etc/nginx/sites-available/{host.name}.conf /etc/nginx/sites-enabled/",
              "rm -f /etc/nginx/sites-enabled/default",
              f"prosodyctl register focus auth.{host.name} x && prosodyctl register jvb auth.{host.name} y",
              "systemctl restart prosody jicofo jitsi-videobridge2 && systemctl reload nginx"]
    return "\n".join(lines) + "\n"


def run_shell(host, script: str) -> float:
    started = time.monotonic()
    subprocess.run(["ssh", "-i", host.ssh_key, "-o", f"UserKnownHostsFile={host.known_hosts}",
                    "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", f"{host.ssh_user}@{host.address}",
                    "bash -s"], input=script.encode(), check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


# figure: (comparison, threshold)
TARGETS = {"ratio_3_vs_1": ("<=", 1.5), "ratio_rerun_vs_first_1": ("<=", 0.2), "ratio_rerun_vs_first_3": ("<=", 0.2),
           "rerun_changes": ("==", 0), "ratio_ensemble_vs_shell": ("<=", 1.3)}


def missed_targets(figures: dict) -> list[str]:
    """One line per figure beyond its target.

    Example::

        missed_targets({"ratio_3_vs_1": 2.0, "rerun_changes": 0})   # ["ratio_3_vs_1 = 2.0, target <= 1.5"]
    """
    missed = []
    for key, (op, threshold) in TARGETS.items():
        if key in figures and not (figures[key] <= threshold if op == "<=" else figures[key] == threshold):
            missed.append(f"{key} = {figures[key]}, target {op} {threshold}")
    return missed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    spec = bench_spec()
    provider = LocalProvider(spec)
    provider.destroy_all(spec)
    try:
        t0 = time.monotonic()
        hosts = provider.ensure_hosts(spec)
        created = time.monotonic() - t0
        shards = {h.shard: h for h in hosts if h.role == "shard"}
        env = provider.deploy_environment(spec)
        warm, _ = timed_deploy(spec, provider, hosts, [shards[6]])
        one, _ = timed_deploy(spec, provider, hosts, [shards[1]])
        one_again, one_results = timed_deploy(spec, provider, hosts, [shards[1]])
        three, _ = timed_deploy(spec, provider, hosts, [shards[2], shards[3], shards[4]])
        three_again, three_results = timed_deploy(spec, provider, hosts, [shards[2], shards[3], shards[4]])
        script = shell_script(spec, env, shards[5], jitsi_keyring(env.spec))
        shell = run_shell(shards[5], script)
        figures = {
            "hosts_created_seconds": round(created, 1),
            "warmup_first_deploy_1_shard_s": round(warm, 1),
            "first_deploy_1_shard_s": round(one, 1),
            "first_deploy_3_shards_s": round(three, 1),
            "ratio_3_vs_1": round(three / one, 2),
            "rerun_1_shard_s": round(one_again, 1),
            "rerun_3_shards_s": round(three_again, 1),
            "ratio_rerun_vs_first_1": round(one_again / one, 3),
            "ratio_rerun_vs_first_3": round(three_again / three, 3),
            "rerun_changes": sum(r.changed for r in [*one_results.values(), *three_results.values()]),
            "rerun_remote_commands_per_host": [r.commands for r in [*one_results.values(), *three_results.values()]],
            "plain_shell_script_1_shard_s": round(shell, 1),
            "ratio_ensemble_vs_shell": round(one / shell, 2),
        }
    finally:
        provider.destroy_all(spec)
    missed = missed_targets(figures)
    if args.json:
        print(json.dumps({**figures, "missed_targets": missed}, indent=2))
    else:
        for key, value in figures.items():
            target = f"target {' '.join(map(str, TARGETS[key]))}" if key in TARGETS else ""
            print(f"{key:36} {value!s:>14}  {target}")
        print("missed targets:\n  " + "\n  ".join(missed) if missed else "every target met")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
