"""The front door's on-host refresher runs on every profile's python (>= 3.9) with Debian's packages only.

bullseye has python 3.9 (no tomllib) and click 7.1; the host's launcher sends `ensemble frontdoor
refresh` to a stdlib (argparse) entry point that reads the spec as JSON. The real thing on a bullseye
and a trixie host: tests/test_os_profiles_realhost.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_refresh_entry_point_needs_neither_click_nor_pyinfra():
    code = ("import sys, ensemble.frontdoor.commands; "
            "print(sorted(m for m in ('click', 'pyinfra', 'paramiko') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def test_the_launcher_sends_refresh_to_the_stdlib_entry_point_and_the_rest_to_the_cli():
    from ensemble.hostfiles import launcher

    text = launcher()
    assert "-m ensemble.frontdoor.commands" in text and text.rstrip().endswith('-m ensemble.cli "$@"')


@pytest.mark.parametrize("args, message", [
    (["refresh", "--shards", "0"], "--shards: must be 1-"),
    (["refresh", "--config", "/nonexistent.json"], "--config: no such file"),
    (["nope"], "invalid choice"),
])
def test_bad_arguments_are_one_line_and_exit_2(args, message):
    done = subprocess.run([sys.executable, "-m", "ensemble.frontdoor.commands", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and message in done.stderr and done.stderr.count("\n") == 1, done.stderr


def test_a_refresh_reads_the_json_spec_and_writes_the_maps(tmp_path):
    """From the JSON spec the deploy writes to the maps and the state (nginx stood in by `true`)."""
    from ensemble.frontdoor.commands import run_refresh
    from ensemble.frontdoor.refresh import NginxControl
    from ensemble.frontdoor.render import FrontdoorLayout
    from ensemble.spec import load_spec, spec_from_dict, spec_json

    spec = spec_from_dict({"fleet": {"name": "t-os-unit", "domain": "t-os-unit.test", "shards": 1,
                                     "os": "debian-bullseye"}})
    (tmp_path / "ensemble.json").write_text(spec_json(spec))
    (tmp_path / "secrets.json").write_text(json.dumps({"fleet": {"occupancy_token": "t" * 32}}))
    layout = FrontdoorLayout(routing_path=str(tmp_path / "routing.conf"), state_path=str(tmp_path / "state.json"),
                             routes_log=str(tmp_path / "routes.log"))
    ok = NginxControl(test=("true",), reload=("true",), reopen=("true",), settle=0)
    result = run_refresh(load_spec(tmp_path / "ensemble.json"), tmp_path / "secrets.json", layout, ok,
                         ca_file=str(tmp_path / "none.pem"))
    assert result.unreadable == [spec.shard_name(1)]  # no shard here: read as unreadable, the maps still written
    assert (tmp_path / "routing.conf").read_text().startswith("# Front door routing")
    assert json.loads((tmp_path / "state.json").read_text())["errors"]
