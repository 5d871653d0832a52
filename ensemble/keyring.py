"""Jitsi's apt signing key: downloaded once on the deploying machine, fingerprint-checked, dearmored.

Every shard then gets the same checked bytes (a rendered file, see ensemble.hostfiles).

Example::

    key = jitsi_keyring(spec)          # raises EnsembleError naming jitsi.apt_key_fingerprint on a mismatch
"""

from __future__ import annotations

import base64
import subprocess
import tempfile
import urllib.request

from ensemble.errors import EnsembleError
from ensemble.spec import FleetSpec


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

    Example::

        jitsi_keyring(spec)      # raises EnsembleError naming jitsi.apt_key_fingerprint on a mismatch
    """
    url = spec.jitsi.apt_key_url
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (URL from the spec)
            text = response.read(1 << 20).decode("ascii", errors="replace")
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
