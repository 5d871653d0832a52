"""Prosody for a shard: its package source, certificates, the Jitsi virtual host, XMPP accounts.

ensemble owns the virtual host file (from templates/prosody) and the `focus`/`jvb` accounts:
they are created (`prosodyctl adduser`) or re-passworded (`prosodyctl passwd`) when missing or when
their passwords changed, the password fed to prosodyctl's prompts on stdin (never in a command line),
so re-runs and package upgrades never clobber them.

Example::

    prosody(ctx)      # inside the shard deploy, after base(ctx)
"""

from __future__ import annotations

import re

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import files, server

from ensemble.components.base import DeployContext, put_files
from ensemble.hostfiles import ACCOUNTS_DIGEST, PROSODY_KEYRING
from ensemble.paths import PROSODY_CERT_DIR
from ensemble.profiles import PROSODY_IM_KEY_URL

CERT_DIR = PROSODY_CERT_DIR


def prosody_data_dir(domain: str) -> str:
    """Prosody's folder for a host's data (it %-encodes every non-alphanumeric byte).

    Example::

        prosody_data_dir("auth.a-1.test")   # "/var/lib/prosody/auth%2ea%2d1%2etest"
    """
    return "/var/lib/prosody/" + re.sub(r"\W|_", lambda m: f"%{ord(m.group()):02x}", domain)


def cert_command(domain: str) -> str:
    """A self-signed certificate for one XMPP domain, readable by prosody.

    Example::

        cert_command("auth.a.test")
    """
    key, crt = f"{CERT_DIR}/{domain}.key", f"{CERT_DIR}/{domain}.crt"
    # EC P-256: a fraction of an RSA key's generation time, accepted by prosody and Java alike
    return (f"openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 -subj /CN={domain} "
            f"-addext subjectAltName=DNS:{domain} -keyout {key} -out {crt} 2>/dev/null"
            f" && chgrp prosody {key} && chmod 640 {key}")


@deploy("Prosody source")
def prosody_source(ctx: DeployContext) -> None:
    """prosody.im's repository for profiles whose distribution prosody is too old (before the install)."""
    if ctx.spec.profile.prosody_source != "prosody.im":
        return
    if host.get_fact(File, path=PROSODY_KEYRING) is None:
        # the source itself is a rendered file (ensemble.hostfiles), put by base before apt update
        server.shell(name="prosody.im key", commands=[
            f"curl -fsSL {PROSODY_IM_KEY_URL} | gpg --dearmor > {PROSODY_KEYRING}"])


@deploy("Prosody")
def prosody(ctx: DeployContext) -> None:
    """Certificates, virtual host, accounts; restart prosody only when something of it changed."""
    domain = ctx.host.name
    auth = f"auth.{domain}"
    changed = []
    for name in (domain, auth):
        if host.get_fact(File, path=f"{CERT_DIR}/{name}.crt") is None:
            changed.append(server.shell(name=f"prosody certificate {name}", commands=[cert_command(name)]))
    if changed:
        # jicofo and the bridge talk TLS to auth.D: trust its certificate system-wide (like Jitsi's postinst).
        # --remove-destination: the package's postinst may have linked that name to the same file
        server.shell(name="trust auth certificate", commands=[
            f"cp --remove-destination {CERT_DIR}/{auth}.crt /usr/local/share/ca-certificates/{auth}.crt",
            "update-ca-certificates >/dev/null"])
    link = files.link(name="prosody vhost enabled", path=f"/etc/prosody/conf.d/{domain}.cfg.lua",
                      target=f"/etc/prosody/conf.avail/{domain}.cfg.lua")
    put_files(ctx.files_of("prosody"), also_changed={"prosody": [link, *changed]})
    digest = put_files(ctx.files_of("prosody-accounts")).get(ACCOUNTS_DIGEST)
    missing = host.get_fact(File, path=f"{prosody_data_dir(auth)}/accounts/focus.dat") is None
    secrets = ctx.host_secrets[domain]
    when = None if missing else (digest.did_change if digest else lambda: False)
    for user, password in (("focus", secrets["focus_password"]), ("jvb", secrets["jvb_password"])):
        # the password goes through the SSH channel's stdin to prosodyctl's prompts (twice: "Retype"),
        # never into a command line, where any local user could read it in /proc/<pid>/cmdline
        command = account_command(user, auth, ctx.spec.profile.prosody_series)
        server.shell(name=f"XMPP account {user}@{auth}", commands=[command],
                     _stdin=[password, password], _if=when)
    # focus.D is jicofo's client_proxy: it needs focus@auth.D in its roster
    server.shell(name="focus roster", commands=[
        f"prosodyctl mod_roster_command subscribe focus.{domain} focus@{auth} >/dev/null 2>&1 || true"], _if=when)


def account_command(user: str, auth: str, series: str = "0.12") -> str:
    """Create or re-password an XMPP account, the password read from stdin (prosodyctl's two prompts).

    prosody 13's `adduser`/`passwd` go through the running server's admin shell (its socket, which a
    freshly restarted prosody may not have yet, and mod_admin_shell); `register USER HOST` still writes
    the account offline, creating or replacing it, with the same two prompts: used from 13 on.

    Example::

        account_command("jvb", "auth.a.test")
        # 'if [ -e .../accounts/jvb.dat ]; then prosodyctl passwd jvb@auth.a.test; else prosodyctl adduser ...'
        account_command("jvb", "auth.a.test", "13")     # 'prosodyctl register jvb auth.a.test'
    """
    if series not in ("0.11", "0.12"):
        return f"prosodyctl register {user} {auth}"
    jid = f"{user}@{auth}"
    return (f"if [ -e {prosody_data_dir(auth)}/accounts/{user}.dat ]; then prosodyctl passwd {jid}; "
            f"else prosodyctl adduser {jid}; fi")
