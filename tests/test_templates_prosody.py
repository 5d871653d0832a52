"""The prosody virtual host file, read by Lua's own parser and by `prosodyctl check config` (Debian's prosody)
for every OS profile."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ensemble.profiles import PROFILES
from ensemble.render import shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict

LUAC = shutil.which("luac5.4") or shutil.which("luac") or "luac5.4"
PROSODYCTL = shutil.which("prosodyctl") or "/usr/bin/prosodyctl"


def _prosody_file(profile: str) -> tuple[str, str]:
    spec = spec_from_dict({"fleet": {"os": profile}})
    store: dict = {}
    complete_secrets(store, spec)
    domain = spec.shard_name(1)
    (item,) = [f for f in shard_files(spec, 1, store) if f.component == "prosody"]
    assert item.path == f"/etc/prosody/conf.avail/{domain}.cfg.lua"
    return domain, item.content


@pytest.fixture
def prosody_dir():
    """A folder the 'prosody' user can read (prosodyctl drops to it; pytest's tmp_path is private)."""
    with tempfile.TemporaryDirectory(prefix="ensemble-prosody-") as folder:
        os.chmod(folder, 0o755)
        yield Path(folder)


def _prosody_root(tmp: Path, site: str) -> Path:
    """A throwaway prosody config dir: a minimal main file that includes the rendered one, as Debian's does."""
    (tmp / "conf.d").mkdir()
    (tmp / "certs").mkdir()
    (tmp / "conf.d" / "site.cfg.lua").write_text(site)
    main = tmp / "prosody.cfg.lua"
    main.write_text(f"""
admins = {{ }}
pidfile = "{tmp}/prosody.pid"
data_path = "{tmp}/data"
log = {{ info = "{tmp}/prosody.log" }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "http"; }}
Include "{tmp}/conf.d/*.cfg.lua"
""")
    return main


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.needs_tool("luac5.4")
def test_lua_parses_the_virtual_host_file(profile, tmp_path):
    _, site = _prosody_file(profile)
    path = tmp_path / "site.cfg.lua"
    path.write_text(site)
    run = subprocess.run([LUAC, "-p", str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr


@pytest.mark.needs_tool("luac5.4")
def test_luac_rejects_broken_lua(tmp_path):
    path = tmp_path / "bad.cfg.lua"
    path.write_text('VirtualHost "x"\n  modules_enabled = { "a"; \n')
    assert subprocess.run([LUAC, "-p", str(path)], capture_output=True).returncode != 0


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.needs_tool("prosodyctl")
def test_prosodyctl_check_config_passes(profile, prosody_dir):
    _, site = _prosody_file(profile)
    main = _prosody_root(prosody_dir, site)
    run = subprocess.run([PROSODYCTL, "--config", str(main), "check", "config"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "All checks passed" in run.stdout


@pytest.mark.needs_tool("prosodyctl")
def test_prosodyctl_check_config_can_fail(prosody_dir):
    """The check is not a rubber stamp: an obsolete option in the rendered file is reported."""
    _, site = _prosody_file("debian-bookworm")
    broken = site.replace("consider_bosh_secure", "cross_domain_bosh = false\nconsider_bosh_secure")
    main = _prosody_root(prosody_dir, broken)
    run = subprocess.run([PROSODYCTL, "--config", str(main), "check", "config"], capture_output=True, text=True,
                         timeout=60)
    assert run.returncode != 0
    assert "cross_domain_bosh" in run.stdout


def _section(site: str, header: str) -> str:
    """The text of one VirtualHost/Component section (up to the next one)."""
    start = site.index(header)
    following = re.search(r"^(VirtualHost|Component) ", site[start + len(header):], re.M)
    return site[start:start + len(header) + following.start()] if following else site[start:]


@pytest.mark.parametrize("profile", ["debian-bookworm", "debian-trixie", "debian-buster"])
def test_the_jitsi_essentials_are_there(profile):
    d, site = _prosody_file(profile)
    main_host = _section(site, f'VirtualHost "{d}"')
    assert '"muc_census"' in main_host  # occupancy for the front door
    assert 'authentication = "jitsi-anonymous"' in main_host
    for name in ("bosh", "websocket", "ping", "muc_lobby_rooms", "muc_breakout_rooms"):
        assert f'"{name}"' in main_host
    assert f'main_muc = "conference.{d}"' in main_host
    assert f'muc_mapper_domain_base = "{d}"' in site
    assert 'http_interfaces = { "127.0.0.1" }' in site
    assert f'Component "internal.auth.{d}" "muc"' in site
    brewery = _section(site, f'Component "internal.auth.{d}" "muc"')  # only focus/jvb of auth.D may join
    assert '"muc_filter_access"' in brewery and f'muc_filter_whitelist = {{ "auth.{d}" }}' in brewery
    assert "restrict_room_creation = true" in brewery
    assert f'Component "focus.{d}" "client_proxy"' in site
    assert f'target_address = "focus@auth.{d}"' in site
    assert 'authentication = "internal_hashed"' in _section(site, f'VirtualHost "auth.{d}"')
    legacy = PROFILES[profile].legacy
    # prosody 0.11 (legacy profiles) has no core mod_smacks
    assert ('"smacks"' in site) is not legacy


MUCS = ("conference", "breakout", "lobby")
GONE_2025 = ('"speakerstats";', '"av_moderation";', '"polls";', '"conference_duration_component"',
             "speakerstats_component =", "conference_duration_component =", "av_moderation_component =",
             "end_conference_component =")


@pytest.mark.parametrize("profile", sorted(p for p in PROFILES if not PROFILES[p].legacy))
def test_current_profiles_follow_upstreams_2025_layout(profile):
    """Upstream's current layout: features_identity and the focus as admin on the main host, every MUC hides
    its rooms, the metadata and polls components; none of the modules upstream removed in 2025."""
    d, site = _prosody_file(profile)
    main_host = _section(site, f'VirtualHost "{d}"')
    assert '"features_identity"' in main_host and '"conference_duration"' in main_host
    assert f'admins = {{ "focus@auth.{d}" }}' in main_host
    for muc in (*MUCS, "internal.auth"):
        assert '"muc_hide_all"' in _section(site, f'Component "{muc}.{d}" "muc"'), muc
    metadata = _section(site, f'Component "metadata.{d}" "room_metadata_component"')
    assert f'muc_component = "conference.{d}"' in metadata and f'breakout_rooms_component = "breakout.{d}"' in metadata
    assert f'Component "polls.{d}" "polls_component"' in site
    for kind, component in (("speakerstats", "speakerstats_component"), ("endconference", "end_conference"),
                            ("avmoderation", "av_moderation_component")):
        assert f'muc_component = "conference.{d}"' in _section(site, f'Component "{kind}.{d}" "{component}"')
    for gone in GONE_2025:
        assert gone not in site, gone
    # jitsi-meet-prosody's postinst greps for these on every upgrade: present, so it edits nothing
    assert re.search(rf'Component "conference\.{re.escape(d)}" "muc"\n    restrict_room_creation = true', site)


@pytest.mark.parametrize("profile", sorted(p for p in PROFILES if PROFILES[p].legacy))
def test_legacy_profiles_keep_the_2_0_8719_layout(profile):
    """jitsi-meet 2.0.8719 (legacy profiles) still has the modules removed in 2025 and none of the newer ones."""
    d, site = _prosody_file(profile)
    main_host = _section(site, f'VirtualHost "{d}"')
    for name in ('"speakerstats";', '"av_moderation";', '"end_conference";',
                 f'speakerstats_component = "speakerstats.{d}"'):
        assert name in main_host, name
    assert f'Component "conferenceduration.{d}" "conference_duration_component"' in site
    assert '"polls";' in _section(site, f'Component "conference.{d}" "muc"')
    for newer in ('"features_identity"', "room_metadata_component", "polls_component"):
        assert newer not in site, newer
    assert not any('"muc_hide_all"' in _section(site, f'Component "{muc}.{d}" "muc"') for muc in MUCS)


# ---------------------------------------------------------------- prosody running the rendered file

# Runs inside a private network namespace (only its own loopback): start prosody as its user, wait for
# BOSH, list listening sockets, fetch the BOSH page for the shard's virtual host, stop prosody.
RUN_IN_NETNS = r"""
set -u
ip link set lo up
runuser -u prosody -- prosody --config "$1" >"$2/prosody.out" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null http://127.0.0.1:5280/ && break
  sleep 0.1
done
sleep 0.5
echo "== listening"
ss -ltnuH | awk '{print $5}' | sort -u
echo "== bosh"
curl -s -H "Host: $3" http://127.0.0.1:5280/http-bind | grep -o '<title>[^<]*</title>'
"""


@pytest.mark.needs_root("a private network namespace (unshare -n)")
@pytest.mark.needs_tool("prosody", "unshare", "runuser", "curl", "ss", "ip", "openssl")
def test_prosody_runs_the_file_and_listens_on_loopback_only(prosody_dir):
    domain, site = _prosody_file("debian-bookworm")
    certs = prosody_dir / "certs"
    certs.mkdir()
    for name in (domain, f"auth.{domain}"):
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        f"/CN={name}", "-keyout", str(certs / f"{name}.key"), "-out", str(certs / f"{name}.crt")],
                       check=True, capture_output=True)
    for path in certs.iterdir():
        os.chmod(path, 0o644)  # the prosody user reads them
    site = site.replace("/etc/prosody/certs/", f"{certs}/")
    (prosody_dir / "conf.d").mkdir()
    (prosody_dir / "conf.d" / "site.cfg.lua").write_text(site)
    data = prosody_dir / "data"
    data.mkdir()
    shutil.chown(data, "prosody", "prosody")
    main = prosody_dir / "prosody.cfg.lua"
    main.write_text(f"""
daemonize = false
pidfile = "{data}/prosody.pid"
data_path = "{data}"
log = {{ info = "*console" }}
modules_enabled = {{ "roster"; "saslauth"; "tls"; "disco"; "ping"; "posix"; }}
Include "{prosody_dir}/conf.d/*.cfg.lua"
""")
    for path in prosody_dir.rglob("*"):
        if path.is_file():
            os.chmod(path, 0o644)
    run = subprocess.run(["unshare", "-n", "sh", "-c", RUN_IN_NETNS, "sh", str(main), str(prosody_dir), domain],
                         capture_output=True, text=True, timeout=60)
    log = (prosody_dir / "prosody.out").read_text()
    listening, _, bosh = run.stdout.partition("== bosh")
    sockets = listening.replace("== listening", "").split()
    assert "127.0.0.1:5280" in sockets, log
    assert "127.0.0.1:5222" in sockets, log  # c2s for jicofo and the bridge
    # nothing else reachable from outside the host: no wildcard, no HTTPS 5281, no s2s 5269
    assert all(s.startswith("127.0.0.1:") for s in sockets), sockets
    assert "<title>Prosody BOSH endpoint</title>" in bosh, log


# ---------------------------------------------------------------- XMPP accounts without passwords in argv

def _scram_stored_key(password: str, salt: str, iterations: int) -> str:
    """SCRAM-SHA-1 StoredKey (RFC 5802) as prosody's internal_hashed keeps it (hex)."""
    import hashlib
    import hmac
    salted = hashlib.pbkdf2_hmac("sha1", password.encode(), salt.encode(), iterations)
    return hashlib.sha1(hmac.new(salted, b"Client Key", hashlib.sha1).digest()).hexdigest()


@pytest.mark.needs_tool("prosodyctl")
@pytest.mark.parametrize("series", ["0.12", "13"])
def test_account_command_creates_then_repasswords_from_stdin(prosody_dir, series):
    """The deploy's account command reads the password from stdin (prosodyctl's prompts): created when
    missing, changed when present; the password appears in no command line. The form prosody 13 gets
    (`register`, offline: its adduser/passwd need the running server's admin shell) runs here on the
    machine's prosody too; on 13 itself it runs in tests/test_os_profiles_realhost.py (trixie)."""
    from ensemble.components.prosody import account_command, prosody_data_dir

    auth = "auth.a-1.test"
    (prosody_dir / "data").mkdir()
    shutil.chown(prosody_dir / "data", "prosody", "prosody")
    main = prosody_dir / "prosody.cfg.lua"
    main.write_text(f'pidfile = "{prosody_dir}/p.pid"\ndata_path = "{prosody_dir}/data"\n'
                    f'log = {{ info = "{prosody_dir}/p.log" }}\nVirtualHost "{auth}"\n'
                    '    authentication = "internal_hashed"\n')
    command = account_command("jvb", auth, series)
    assert "pw-" not in command
    command = command.replace("prosodyctl ", f"prosodyctl --config {main} ").replace(
        prosody_data_dir(auth), str(prosody_dir / "data" / Path(prosody_data_dir(auth)).name))
    account = prosody_dir / "data" / Path(prosody_data_dir(auth)).name / "accounts" / "jvb.dat"
    for password in ("pw-first", "pw-second"):
        done = subprocess.run(["sh", "-c", command], input=f"{password}\n{password}\n", capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        fields = dict(re.findall(r'\["(\w+)"\] = "?([^";]+)"?;', account.read_text()))
        assert fields["stored_key"] == _scram_stored_key(password, fields["salt"], int(fields["iteration_count"]))
