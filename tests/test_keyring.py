"""ensemble.keyring: the Jitsi apt key dearmored and fingerprinted in Python, checked against gpg."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest


@pytest.mark.needs_tool("gpg")
def test_dearmor_matches_gpg(tmp_path: Path):
    from ensemble.keyring import dearmor, key_fingerprints

    home = tmp_path / "gnupg"
    home.mkdir(mode=0o700)
    gpg = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    subprocess.run([*gpg, "--quick-gen-key", "test <t@example.org>", "ed25519", "sign", "1d"], check=True,
                   capture_output=True)
    armored = subprocess.run([*gpg, "--armor", "--export"], check=True, capture_output=True).stdout.decode()
    binary = subprocess.run([*gpg, "--export"], check=True, capture_output=True).stdout
    assert dearmor(armored) == binary
    listed = subprocess.run([*gpg, "--with-colons", "--list-keys"], capture_output=True, text=True).stdout
    fingerprints = [line.split(":")[9] for line in listed.splitlines() if line.startswith("fpr")]
    assert key_fingerprints(binary) == fingerprints[:1]
