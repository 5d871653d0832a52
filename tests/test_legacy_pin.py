"""The legacy profiles pin jitsi-meet 2.0.8719-1 AND the exact versions its metapackage depends on, in an
apt preferences file rendered with the shard's apt files (so later installs and upgrades keep the set),
and name prosody's line (prosody.im's "prosody" follows the newest release).

Real apt against the stand-in repository that carries the legacy set beside newer versions:
tests/test_package_upgrade.py::test_apt_picks_the_pinned_legacy_set_on_a_real_host.
"""

from __future__ import annotations

import re
import subprocess

import pytest

from ensemble import paths
from ensemble.contexts import shard_packages
from ensemble.hostfiles import jitsi_preferences, shard_pins
from ensemble.profiles import LEGACY_JITSI_PINS, PROFILES
from ensemble.render import fleet_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict
from ensemble.standins.jitsi_repo import legacy_packages


def _shard_files(os_profile: str, **jitsi) -> dict[str, object]:
    spec = spec_from_dict({"fleet": {"os": os_profile}, "jitsi": jitsi} if jitsi else {"fleet": {"os": os_profile}})
    store: dict = {}
    complete_secrets(store, spec)
    return {f.path: f for f in fleet_files(spec, store)[spec.shard_name(1)]}


@pytest.mark.parametrize("profile", [name for name, p in PROFILES.items() if p.legacy])
def test_legacy_profiles_render_the_whole_pinned_set(profile):
    pref = _shard_files(profile)[paths.JITSI_PREFERENCES]
    assert pref.component == "apt" and pref.mode == 0o644  # put before the package install
    text = pref.content
    pinned = dict(re.findall(r"^Package: (\S+)\nPin: version (\S+)\nPin-Priority: 1001$", text, re.M))
    assert pinned == {"jitsi-meet": "2.0.8719-1", "jitsi-videobridge2": "2.3-25-g1da507fa-1", "jicofo": "1.0-1038-1",
                      "jitsi-meet-web": "1.0.7322-1", "jitsi-meet-web-config": "1.0.7322-1",
                      "jitsi-meet-prosody": "1.0.7322-1"}
    spec = spec_from_dict({"fleet": {"os": profile}})
    packages = shard_packages(spec)
    assert "jitsi-meet=2.0.8719-1" in packages
    assert "prosody-0.11" in packages and "prosody" not in packages  # the line, not prosody.im's newest


def test_the_pins_are_the_metapackage_dependencies():
    """The pinned set is exactly what the (stand-in of the) metapackage 2.0.8719-1 depends on, by = version."""
    (meta,) = [p for p in legacy_packages() if p.name == "jitsi-meet"]
    wanted = dict(re.findall(r"(\S+) \(= (\S+)\)", ", ".join(meta.pre_depends + meta.depends)))
    assert {**wanted, "jitsi-meet": meta.version} == dict(LEGACY_JITSI_PINS)


def test_current_profiles_pin_nothing_and_a_chosen_version_pins_the_metapackage():
    assert paths.JITSI_PREFERENCES not in _shard_files("debian-bookworm")
    assert shard_packages(spec_from_dict({}))[-1] == "jitsi-meet"
    chosen = _shard_files("debian-bookworm", version="2.0.10590-1")[paths.JITSI_PREFERENCES].content
    assert "Package: jitsi-meet\nPin: version 2.0.10590-1\n" in chosen and chosen.count("Package:") == 1
    # a legacy profile given another version pins only that (its dependencies are not known here)
    assert shard_pins(spec_from_dict({"fleet": {"os": "debian-buster"}, "jitsi": {"version": "2.0.9000-1"}})) == [
        ("jitsi-meet", "2.0.9000-1")]


@pytest.mark.needs_tool("apt-cache")
def test_apt_reads_the_preferences_file(tmp_path):
    """apt itself parses the rendered file (a broken one makes every apt command on the host complain)."""
    def policy(text: str) -> subprocess.CompletedProcess:
        prefs = tmp_path / str(len(list(tmp_path.iterdir())))
        prefs.mkdir()
        (prefs / "ensemble-jitsi.pref").write_text(text)
        return subprocess.run(["apt-cache", "-o", f"Dir::Etc::PreferencesParts={prefs}", "policy"],
                              capture_output=True, text=True)

    run = policy(jitsi_preferences(LEGACY_JITSI_PINS))
    assert run.returncode == 0 and not run.stderr.strip(), run.stderr
    broken = policy(jitsi_preferences(LEGACY_JITSI_PINS).replace("Pin-Priority: 1001", "Pin-Priority: high"))
    assert broken.returncode != 0 and "E:" in broken.stderr  # the check above would see a broken file
