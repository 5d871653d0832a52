"""Cloud-init user data for new cloud hosts: the ops SSH key and, on creation, the host's own SSH host key.

The fleet's secrets never go here (they reach hosts over SSH during the deploy). The one private item is
the host's own SSH host key, made by the provider before the host exists so that the very first SSH
connection is verified (no trust on first use): Scaleway serves user data only to privileged ports on
the host (root, who can read the key on disk anyway), and the provider replaces the document with a
key-less one as soon as the host has answered with that key.

Example::

    user_data("ssh-ed25519 AAAA... ops@laptop", "demo-1.meet.example.org")
    # b"#cloud-config\\n..." (bytes: the Scaleway SDK JSON-quotes a str and breaks cloud-init)
    user_data(ops_key, name, host_key_public="ssh-ed25519 AAAA...", host_key_private="-----BEGIN OPENSSH...")
"""

from __future__ import annotations

import json


def user_data(public_key: str, hostname: str, host_key_public: str = "", host_key_private: str = "") -> bytes:
    """A #cloud-config that installs the ops key for root, sets the host name and, if given, installs this
    ed25519 host key as the host's only one (no other type generated, the image's keys deleted)."""
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
    if host_key_private:
        lines += [
            "ssh_deletekeys: true",
            "ssh_genkeytypes: []",
            "ssh_keys:",
            f"  ed25519_private: {json.dumps(host_key_private)}",
            f"  ed25519_public: {json.dumps(host_key_public.strip())}",
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
