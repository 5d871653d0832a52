"""The fleet spec: defaults, the example, and one-line errors for bad input (exit code 2)."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from ensemble.errors import EnsembleError, SpecError
from ensemble.profiles import PROFILES
from ensemble.spec import default_spec, iter_keys, load_spec, spec_from_dict

ROOT = Path(__file__).resolve().parents[1]
ENSEMBLE = [sys.executable, "-m", "ensemble.cli"]


def test_defaults_are_a_valid_fleet():
    spec = spec_from_dict({})
    assert spec.fleet.shards == 2
    assert spec.jitsi.language == "fr"
    assert spec.fleet.os == "debian-bookworm"
    assert spec.shard_names() == ["demo-1.meet.example.org", "demo-2.meet.example.org"]


def test_embedded_default_is_local():
    spec = default_spec()
    assert spec.provider.kind == "local"
    assert spec.source == "<embedded default>"


def test_every_profile_loads_and_legacy_ones_warn():
    for name, profile in PROFILES.items():
        spec = spec_from_dict({"fleet": {"os": name}})
        assert spec.profile is profile
        assert (spec.profile.eol_warning is not None) == (name in ("debian-buster", "ubuntu-bionic"))
    assert spec_from_dict({"fleet": {"os": "debian-buster"}}).jitsi_version.startswith("2.0.8719")


def test_every_key_has_a_doc():
    keys = list(iter_keys())
    assert len(keys) > 40
    assert all(doc for _, _, doc, _ in keys), [k for k, _, doc, _ in keys if not doc]


BAD_SPECS = [
    # (toml text, key path named in the error, a word of what is valid)
    ('[fleet]\nshards = 0\n', "fleet.shards", "1-1000"),
    ('[fleet]\nshards = 100000000\n', "fleet.shards", "1-1000"),
    ('[fleet]\nshards = "two"\n', "fleet.shards", "integer"),
    ('[fleet]\ndomain = "meet..example"\n', "fleet.domain", "DNS name"),
    ('[fleet]\ndomain = "Meet_Example.org"\n', "fleet.domain", "DNS name"),
    ('[fleet]\nos = "windows-11"\n', "fleet.os", "debian-bookworm"),
    ('[fleet]\ncolour = "blue"\n', "fleet.colour", "valid keys"),
    ('[nonsense]\nx = 1\n', "nonsense", "valid keys"),
    ('[provider.scaleway]\nssh_allowed_cidrs = ["10.0.0.0/33"]\n', "provider.scaleway.ssh_allowed_cidrs", "CIDR"),
    ('[provider]\nkind = "aws"\n', "provider.kind", "local, scaleway"),
    ('[tls]\nmode = "provided"\n', "tls.cert_path", "required"),
    ('[tls]\nemail = "not-an-email"\n', "tls.email", "e-mail"),
    ('[jitsi]\nmax_resolution = 4000\n', "jitsi.max_resolution", "720"),
    ('[jitsi]\nstun_servers = "stun.example.org"\n', "jitsi.stun_servers", "list"),
    ('[jitsi]\netherpad = "yes"\n', "jitsi.etherpad", "true or false"),
    ('[fleet]\nshard_name = "shard.{domain}"\n', "fleet.shard_name", "{n}"),
    ('[provider.scaleway]\nzone = "paris"\n', "provider.scaleway.zone", "fr-par-1"),
    ('[frontdoor]\nmode = "dns"\n', "frontdoor.mode", "redirect, proxy"),
    ('[provider]\nkind = "scaleway"\n[fleet]\nos = "debian-buster"\n', "fleet.os", "Scaleway image"),
    ('[fleet\nname = "x"\n', "not valid TOML", "TOML"),
]


@pytest.mark.parametrize(("text", "key", "hint"), BAD_SPECS, ids=[k for _, k, _ in BAD_SPECS])
def test_bad_spec_is_one_line_exit_2(tmp_path, text, key, hint):
    bad = tmp_path / "ensemble.toml"
    bad.write_text(text)
    out = tmp_path / "out"
    proc = subprocess.run([*ENSEMBLE, "render", "--config", str(bad), "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert key in lines[0] and hint in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists(), "nothing half-done: no output for a bad spec"
    assert not (tmp_path / ".ensemble").exists(), "no secrets written for a bad spec"


def test_error_names_nested_key_in_python_api():
    with pytest.raises(SpecError) as err:
        spec_from_dict({"etherpad": {"port": 70000}})
    assert err.value.key == "etherpad.port"


def test_missing_config_file_is_usage_error(tmp_path):
    proc = subprocess.run([*ENSEMBLE, "render", "--config", str(tmp_path / "nope.toml"), "--out", "x"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert "--config" in proc.stderr and "no such file" in proc.stderr


def test_unknown_command_and_missing_argument_exit_2():
    for argv in (["nope"], ["render"], ["fleet", "scale", "many"]):
        proc = subprocess.run([*ENSEMBLE, *argv], capture_output=True, text=True)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_example_spec_loads():
    spec = load_spec(ROOT / "examples" / "ensemble.toml")
    assert spec.jitsi.language == "fr"


def test_version():
    proc = subprocess.run([*ENSEMBLE, "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and "0.1.0" in proc.stdout


def test_spec_toml_loads_back_to_the_same_spec():
    """A spec written as TOML, whatever it came from (file, default, dict), loads back to the same spec."""
    import tomllib

    from ensemble.spec import spec_toml

    example = Path(__file__).resolve().parent.parent / "examples" / "ensemble.toml"
    specs = [default_spec(), load_spec(example),
             spec_from_dict({"fleet": {"name": "t-a", "domain": "t-a.test", "shards": 3},
                             "jitsi": {"stun_servers": ["stun:a.example.org:3478"]}})]
    for spec in specs:
        assert spec_from_dict(tomllib.loads(spec_toml(spec, header="a\nb"))) == spec


def test_spec_json_loads_back_to_the_same_spec(tmp_path):
    """The front door's refresher reads the spec as JSON (bullseye's python 3.9 has no tomllib)."""
    from ensemble.spec import spec_json

    example = Path(__file__).resolve().parent.parent / "examples" / "ensemble.toml"
    specs = [default_spec(), load_spec(example),
             spec_from_dict({"fleet": {"name": "t-a", "domain": "t-a.test", "shards": 3, "os": "debian-bullseye"},
                             "jitsi": {"stun_servers": ["stun:a.example.org:3478"]}})]
    for i, spec in enumerate(specs):
        path = tmp_path / f"spec{i}.json"
        path.write_text(spec_json(spec))
        assert replace(load_spec(path), source=spec.source) == spec


@pytest.mark.parametrize("text, message", [
    ("[1, 2]", "a spec is a JSON object"),
    ('{"fleet": {"shards": "3"}}', "fleet.shards"),
    ('{"nope": 1}', "unknown key"),
    ("{", "not valid JSON"),
    ("[" * 10000, "nested"),
])
def test_a_bad_json_spec_is_one_line_naming_the_problem(tmp_path, text, message):
    path = tmp_path / "ensemble.json"
    path.write_text(text)
    with pytest.raises(EnsembleError) as caught:
        load_spec(path)
    assert message in str(caught.value) and "\n" not in str(caught.value)
