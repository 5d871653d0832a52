"""The stand-in packages' real postinst scripts, run on the files ensemble renders, in a private mount
namespace (overlays on /etc, /var/log and /var/lib/prosody: this machine is untouched).

A first configure makes the users and defaults, ensemble's files are put as a deploy puts them, then every
postinst configures again, as on an upgrade: ensemble's files must come out byte-, owner- and mode-identical.
The same run with the files ensemble wrote before (owner root, client-proxy quoted, no marker keys) shows
the fights the stand-ins reproduce: the check would catch a regression. Fast; the chain on a real host is
tests/test_package_upgrade.py.

Only what would reach outside the namespace is replaced by a logging shim: systemctl and the
deb-systemd helpers, sysctl, update-ca-certificates, and prosodyctl (it says the jvb account exists).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from ensemble.render import shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict
from ensemble.standins import build_standin_repo

pytestmark = [pytest.mark.needs_root("mount namespaces and overlays (unshare -m)"),
              pytest.mark.needs_tool("unshare", "hocon")]

PACKAGES = ("jitsi-videobridge2", "jicofo", "jitsi-meet-prosody")
SHIMS = ("systemctl", "deb-systemd-helper", "deb-systemd-invoke", "sysctl", "update-ca-certificates")

SANDBOX = r"""
set -e
W=$1
mount -t tmpfs ensemble-test "$W/ov"
for d in /etc /var/log /var/lib/prosody /usr/local/share/ca-certificates; do
    n=$(echo "$d" | tr / _)
    mkdir -p "$W/ov/$n/upper" "$W/ov/$n/work"
    mount -t overlay overlay -o "lowerdir=$d,upperdir=$W/ov/$n/upper,workdir=$W/ov/$n/work" "$d"
done
mount --bind "$W/confmodule" /usr/share/debconf/confmodule
export PATH="$W/bin:$PATH"
configure() {
    for p in $2; do
        bash "$W/$p.postinst" configure "$1" >>"$W/postinst.log" 2>&1
    done
}
state() {
    while read -r mode owner group path; do stat -c '%a %U %G %n' "$path"; sha256sum "$path"; done < "$W/owned.txt"
}
configure "" "jitsi-videobridge2 jicofo"   # first install: users, directories, defaults
mkdir -p /etc/prosody/conf.avail /etc/prosody/conf.d
for host in "$2" "auth.$2"; do                # the certificates the first install made
    touch "/var/lib/prosody/$host.key" "/var/lib/prosody/$host.crt"
done
while read -r mode owner group path; do    # ensemble's deploy
    install -D -m "$mode" -o "$owner" -g "$group" "$W/files$path" "$path"
done < "$W/owned.txt"
state > "$W/deployed"
configure 1.0 "jitsi-videobridge2 jicofo jitsi-meet-prosody"   # an upgrade
state > "$W/upgraded"
while read -r mode owner group path; do cp "$path" "$W/after$(echo "$path" | tr / _)"; done < "$W/owned.txt"
"""

CONFMODULE = """# test confmodule: the answers a deploy preseeds (and the passwords the packages generated)
db_get() {
    case "$1" in
        jitsi-videobridge/jvb-hostname) RET="%(domain)s" ;;
        jicofo/jicofo-authuser) RET=focus ;;
        jicofo/jicofo-authpassword) RET=generated-focus ;;
        jitsi-videobridge/jvbsecret) RET=generated-jvb ;;
        *) RET="" ;;
    esac
}
db_set() { :; }
db_input() { :; }
db_go() { :; }
db_stop() { :; }
"""


def _extract_postinsts(work: Path) -> None:
    repo = build_standin_repo(work / "cache")
    for name in PACKAGES:
        (deb,) = (repo.path / "stable").glob(f"{name}_*_all.deb")
        control = work / f"control-{name}"
        subprocess.run(["dpkg-deb", "-e", str(deb), str(control)], check=True)
        (work / f"{name}.postinst").write_bytes((control / "postinst").read_bytes())


def _shims(work: Path) -> None:
    bin_dir = work / "bin"
    bin_dir.mkdir()
    for name in SHIMS:
        (bin_dir / name).write_text(f'#!/bin/sh\necho "{name} $*" >> "{work}/shims.log"\n')
    (bin_dir / "prosodyctl").write_text(
        f'#!/bin/sh\necho "prosodyctl $*" >> "{work}/shims.log"\n'
        '[ "$1" = adduser ] && echo "That user already exists" && exit 1\nexit 0\n')
    for shim in bin_dir.iterdir():
        shim.chmod(0o755)


def run_upgrade(work: Path, files: list, domain: str) -> tuple[str, str, dict[str, str]]:
    """(state after the deploy, state after the upgrade, {path: content after}) for `files` on `domain`."""
    work.mkdir(parents=True)
    _extract_postinsts(work)
    _shims(work)
    (work / "ov").mkdir()
    (work / "confmodule").write_text(CONFMODULE % {"domain": domain})
    lines = []
    for item in files:
        target = work / "files" / item.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(item.data)
        lines.append(f"{item.mode:o} {item.owner} {item.group} {item.path}")
    (work / "owned.txt").write_text("\n".join(lines) + "\n")
    (work / "sandbox.sh").write_text(SANDBOX)
    run = subprocess.run(["unshare", "-m", "--propagation", "private", "bash", str(work / "sandbox.sh"), str(work),
                          domain],
                         capture_output=True, text=True, timeout=120)
    log = (work / "postinst.log").read_text() if (work / "postinst.log").exists() else ""
    assert run.returncode == 0, run.stderr[-2000:] + log[-2000:]
    after = {item.path: (work / f"after{item.path.replace('/', '_')}").read_text() for item in files}
    return (work / "deployed").read_text(), (work / "upgraded").read_text(), after


@pytest.fixture(scope="module")
def rendered():
    spec = spec_from_dict({"fleet": {"name": "up", "domain": "up.test"}})
    store: dict = {}
    complete_secrets(store, spec)
    files = [f for f in shard_files(spec, 1, store) if f.component in ("prosody", "jicofo", "jvb")]
    return spec.shard_name(1), files


def test_an_upgrade_leaves_ensemble_files_untouched(rendered, tmp_path):
    domain, files = rendered
    deployed, upgraded, _ = run_upgrade(tmp_path / "run", files, domain)
    assert deployed.count("\n") == 2 * len(files)
    assert upgraded == deployed
    calls = (tmp_path / "run" / "shims.log").read_text()
    assert f"prosodyctl adduser jvb@auth.{domain}" in calls and "prosodyctl register" not in calls.split(
        "prosodyctl adduser")[-1]  # the upgrade re-registers nothing: the accounts keep ensemble's passwords
    assert "restart prosody.service" not in calls.split("prosodyctl adduser")[-1]


def test_the_postinsts_fight_files_written_without_their_edits(rendered, tmp_path):
    """What ensemble wrote before: owners root, client-proxy quoted, no marker keys, polls as a module."""
    from dataclasses import replace

    domain, files = rendered
    old = []
    for item in files:
        text = item.content
        if item.path.endswith("jicofo.conf"):
            text = text.replace(f"client-proxy = focus.{domain}", f'client-proxy = "focus.{domain}"')
            text = text.replace("    trusted-domains = []\n", "")
        if item.path.endswith("sip-communicator.properties"):
            text = "\n".join(line for line in text.splitlines() if not line.startswith("# org.")
                             and not line.startswith("# #org.")) + "\n"
        if item.path.endswith(".cfg.lua"):
            text = text.replace(f'Component "polls.{domain}" "polls_component"\n', "")
        owner = "root" if item.owner in ("jicofo", "jvb") else item.owner
        old.append(replace(item, content=text, owner=owner))
    deployed, upgraded, after = run_upgrade(tmp_path / "run", old, domain)
    assert "640 root jitsi /etc/jitsi/jicofo/jicofo.conf" in deployed
    assert "640 jicofo jitsi /etc/jitsi/jicofo/jicofo.conf" in upgraded  # chown -R
    assert "640 jvb jitsi /etc/jitsi/videobridge/jvb.conf" in upgraded
    jicofo = after["/etc/jitsi/jicofo/jicofo.conf"]
    assert f"client-proxy = focus.{domain}\n" in jicofo and f"trusted-domains: recorder.{domain}" in jicofo
    jvb_props = after["/etc/jitsi/videobridge/sip-communicator.properties"]
    assert "STUN_MAPPING_HARVESTER_ADDRESSES=meet-jit-si-turnrelay.jitsi.net:443" in jvb_props
    assert "org.jitsi.videobridge.xmpp.user.shard.PASSWORD=generated-jvb" in jvb_props
    assert "BRIDGE_MUC=JvbBrewery@internal.auth." in after["/etc/jitsi/jicofo/sip-communicator.properties"]
    assert f'Component "polls.{domain}" "polls_component"' in after[f"/etc/prosody/conf.avail/{domain}.cfg.lua"]
