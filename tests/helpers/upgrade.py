"""A Jitsi package upgrade on real hosts: bump the stand-in repository the hosts use, read services' states.

Example::

    point_at(served, repos[2].path)                   # the next release, at the same URL
    before = service_states(shard)
    ssh_run(shard, APT_UPGRADE, timeout=600)
    assert deploy_changes(config) == {}
"""

from __future__ import annotations

import os
from pathlib import Path

from conftest import ensemble_json, ssh_run

from ensemble.standins.jitsi_repo import KEY_FILE, SUITE

JITSI_SERVICES = ("prosody", "jicofo", "jitsi-videobridge2")
# What an operator (or unattended-upgrades) runs: the packages' scripts run, changed conffiles kept
APT_UPGRADE = ("apt-get update -qq && DEBIAN_FRONTEND=noninteractive "
               "apt-get -y -q -o Dpkg::Options::=--force-confold upgrade")
JITSI_PACKAGES = ("jitsi-meet", "jicofo", "jitsi-videobridge2", "jitsi-meet-prosody", "jitsi-meet-web",
                  "jitsi-meet-web-config")


def point_at(served: Path, repo_path: Path) -> None:
    """Serve `repo_path`'s release from `served` (the URL the hosts know stays the same).

    The suite's files are touched: the releases are built within seconds of each other, and the file
    server answers apt's If-Modified-Since by mtime (whole seconds), so the bump must look newer.
    """
    for index in (repo_path / SUITE).iterdir():
        os.utime(index)
    for name in (KEY_FILE, SUITE.rstrip("/")):
        link = served / name
        link.unlink(missing_ok=True)
        link.symlink_to(repo_path / name)


def service_states(host, services: tuple[str, ...] = JITSI_SERVICES) -> dict[str, tuple[str, str]]:
    """{service: (MainPID, ActiveEnterTimestampMonotonic)}: both change when systemd restarts it."""
    code, out, err = ssh_run(host, "for s in " + " ".join(services) + "; do "
                             "systemctl show -p MainPID -p ActiveEnterTimestampMonotonic --value $s | paste -sd' '; "
                             "done")
    assert code == 0, err
    states = dict(zip(services, (tuple(line.split()) for line in out.splitlines()), strict=True))
    assert all(pid != "0" for pid, _ in states.values()), states  # all running
    return states


def jitsi_versions(host) -> dict[str, str]:
    """{package: installed version} of Jitsi's packages."""
    code, out, err = ssh_run(host, "dpkg-query -W -f '${Package} ${Version}\\n' " + " ".join(JITSI_PACKAGES))
    assert code == 0, err
    return dict(line.split(" ", 1) for line in out.splitlines())


def failure(err: str) -> str:
    """The lines of a failed run that say what failed, then its end."""
    said = [line for line in err.splitlines() if "FAILED" in line or "rror" in line]
    return "\n".join(said[:20]) + "\n...\n" + err[-1500:]


def deploy_changes(config: Path) -> dict[str, list[str]]:
    """`ensemble deploy --config <config>` (the real CLI); {host: its changes} of the hosts it changed."""
    code, out, err = ensemble_json("deploy", "--config", str(config))
    assert code == 0, failure(err)
    return {name: h["changes"] for name, h in out["hosts"].items() if h["changed"]}
