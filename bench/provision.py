"""Benchmark: provisioning 10 hosts vs 1 through the Scaleway provider, against the STAND-IN API.

Every API call takes `--latency` seconds (1 s by default, about a slow real API), servers boot in
0.3 s, and each answers SSH from a real sshd on 127.0.11.x (the tests use 127.0.10.x: a test run at
the same time would answer on the same addresses with other host keys), so the time covers
the whole create: IPs, server, volume tags, user data, power on, running, SSH, key pinning.
Creation is parallel, so 10 hosts should take at most 1.5x the time of one.

Run as root (sshd on port 22 of 127.0.11.x):

    .venv/bin/python bench/provision.py            # prints both times and the ratio
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from standins.scaleway_api import ScalewayStandIn  # noqa: E402
from standins.scaleway_env import ACCESS_KEY, PROJECT_ID, SECRET_KEY, SshdFarm, write_spec  # noqa: E402

from ensemble.providers.scaleway import ScalewayProvider  # noqa: E402
from ensemble.spec import load_spec  # noqa: E402

ADDRESS_PREFIX = "127.0.11."  # not the tests' 127.0.10. (see above)


def provision(count: int, latency: float, tmp: Path) -> float:
    """Seconds to bring `count` throwaway shards up (then they are destroyed, untimed)."""
    api = ScalewayStandIn(secret_key=SECRET_KEY, project_id=PROJECT_ID, latency=latency, page_size=50,
                          address_prefix=ADDRESS_PREFIX).start()
    farm = SshdFarm(tmp / f"sshd-{count}")
    api.on_running, api.on_gone = farm.start, farm.stop
    os.environ.update({"SCW_ACCESS_KEY": ACCESS_KEY, "SCW_SECRET_KEY": SECRET_KEY, "SCW_API_URL": api.url,
                       "SCW_DEFAULT_PROJECT_ID": PROJECT_ID, "SCW_CONFIG_PATH": str(tmp / "none.yaml"),
                       "XDG_STATE_HOME": str(tmp / f"state-{count}")})
    try:
        spec = load_spec(write_spec(tmp / f"bench-{count}.toml", tmp, shards=count, name=f"bench{count}"))
        provider = ScalewayProvider(spec, throwaway=True, poll_interval=0.2)
        started = time.monotonic()
        hosts = provider.ensure_hosts(spec)
        elapsed = time.monotonic() - started
        assert len(hosts) == count, hosts
        api.latency = 0.0
        provider.destroy_all(spec)
        assert api.resource_count() == {"servers": 0, "ips": 0, "volumes": 0, "security_groups": 0}
        return elapsed
    finally:
        api.stop()
        farm.stop_all()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds per API call")
    parser.add_argument("--many", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "ops_key")], check=True)
        one = provision(1, args.latency, tmp)
        many = provision(args.many, args.latency, tmp)
    ratio = many / one
    print(f"1 host: {one:.1f}s; {args.many} hosts: {many:.1f}s; ratio {ratio:.2f} (target <= 1.5) "
          f"with {args.latency:.1f}s per API call")
    return 0 if ratio <= 1.5 else 1


if __name__ == "__main__":
    sys.exit(main())
