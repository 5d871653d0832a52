"""Cloud-init user data for new cloud hosts: the ops SSH key, and nothing secret.

The text is public in the provider's metadata service to any process on the host, so it
carries only the public key (secrets reach hosts over SSH during the deploy).

Example::

    user_data("ssh-ed25519 AAAA... ops@laptop", "demo-1.meet.example.org")
    # b"#cloud-config\\n..." (bytes: the Scaleway SDK JSON-quotes a str and breaks cloud-init)
"""

from __future__ import annotations

import json


def user_data(public_key: str, hostname: str) -> bytes:
    """A #cloud-config that installs the ops key for root and sets the host name."""
    key = public_key.strip()
    # JSON strings are valid YAML scalars: no quoting surprises whatever the key comment holds.
    lines = [
        "#cloud-config",
        f"hostname: {json.dumps(hostname.split('.')[0])}",
        f"fqdn: {json.dumps(hostname)}",
        "disable_root: false",
        "ssh_pwauth: false",
        "ssh_authorized_keys:",
        f"  - {json.dumps(key)}",
        "users:",
        "  - name: root",
        "    ssh_authorized_keys:",
        f"      - {json.dumps(key)}",
    ]
    return ("\n".join(lines) + "\n").encode("utf-8")


def read_public_key(path: str, key_name: str) -> str:
    """The one-line OpenSSH public key at path; UsageError naming key_name when unusable."""
    from pathlib import Path

    from ensemble.errors import UsageError
    from ensemble.userfiles import read_user_text

    p = Path(path).expanduser()
    if not p.exists():
        raise UsageError(f"{key_name}: no SSH public key {p} (create one with ssh-keygen -t ed25519)")
    text = read_user_text(p, key_name, limit=16384).strip()
    if not text.startswith(("ssh-ed25519 ", "ssh-rsa ", "ecdsa-sha2-", "sk-")) or "\n" in text:
        raise UsageError(f"{key_name}: {p} is not a one-line OpenSSH public key (e.g. ssh-ed25519 AAAA... ops)")
    return text
