"""TLS for a host's public domain, in the three modes of `tls.mode`.

Every mode ends with the same two paths, which the nginx site reads:
``/etc/ensemble/tls/<D>/fullchain.pem`` and ``privkey.pem``.

- self-signed: a certificate made on the host once (kept across runs).
- provided: the spec's cert_path/key_path, copied from the deploying machine.
- letsencrypt: a self-signed placeholder first (nginx needs a certificate to start), then
  `certbot certonly --webroot` against `tls.acme_directory` once nginx serves the ACME webroot;
  the paths become links to certbot's live files, certbot's timer renews them and the deploy
  hook (templates/tls) reloads nginx. `tls.acme_ca_bundle` (test CAs such as pebble) is added to
  the host's trust store so certbot talks to that ACME server.

Example::

    tls_files(ctx)     # before the nginx site
    acme(ctx)          # after nginx serves the webroot (letsencrypt mode only)
"""

from __future__ import annotations

import shlex

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.operations import files, server, systemd

from ensemble.components.base import DeployContext, put_files
from ensemble.hostfiles import cert_paths
from ensemble.paths import ACME_CA, ACME_WEBROOT, TLS_DIR
from ensemble.turn import certificate_names, turn_tls_name

WEBROOT = ACME_WEBROOT
__all__ = ["acme", "cert_paths", "tls_files"]


def self_signed_command(domain: str, extra_names: tuple[str, ...] = ()) -> str:
    """Make a self-signed certificate for a domain (and extra names, e.g. the TURN relay's) at its paths.

    Example::

        self_signed_command("a.test", ("turn-a.test",))
    """
    chain, key = cert_paths(domain)
    sans = ",".join(f"DNS:{name}" for name in (domain, *extra_names))
    return (f"install -d -m 755 {TLS_DIR}/{domain} && openssl req -x509 -newkey ec "
            f"-pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 -subj /CN={domain} "
            f"-addext subjectAltName={sans} -keyout {key} -out {chain} 2>/dev/null && chmod 600 {key}")


def certbot_command(domain: str, directory: str, email: str, extra_names: tuple[str, ...] = ()) -> str:
    """certbot certonly over HTTP-01 (webroot), then point ensemble's paths at the live files.

    Example::

        certbot_command("a.test", "https://acme-v02.api.letsencrypt.org/directory", "")
    """
    chain, key = cert_paths(domain)
    account = f"--email {shlex.quote(email)}" if email else "--register-unsafely-without-email"
    live = f"/etc/letsencrypt/live/{domain}"
    names = " ".join(f"-d {name}" for name in (domain, *extra_names))
    expand = " --expand" if extra_names else ""
    return (f"certbot certonly --non-interactive --agree-tos {account} --server {shlex.quote(directory)} "
            f"--cert-name {domain} --webroot -w {WEBROOT} {names}{expand} --keep-until-expiring "
            "--no-random-sleep-on-renew -q"
            f" && ln -sfn {live}/fullchain.pem {chain} && ln -sfn {live}/privkey.pem {key}"
            " && systemctl reload nginx")


@deploy("TLS certificate files")
def tls_files(ctx: DeployContext) -> None:
    """Make sure the certificate paths hold a certificate before nginx reads its site."""
    domain = ctx.host.name
    chain, key = cert_paths(domain)
    mode = ctx.spec.tls.mode
    if mode == "provided":
        files.put(name="provided certificate", src=ctx.spec.tls.cert_path, dest=chain, mode="644",
                  create_remote_dir=True)
        files.put(name="provided key", src=ctx.spec.tls.key_path, dest=key, mode="600", create_remote_dir=True)
        return
    present = host.get_fact(Command, command=f"test -e {chain} && test -e {key} && echo yes || echo no")
    if present != "yes":
        what = "self-signed certificate" if mode == "self-signed" else "placeholder until ACME issues one"
        # the relay's TLS name too (turn-<shard>): coturn presents this certificate on 443
        server.shell(name=what, commands=[self_signed_command(domain, tuple(certificate_names(ctx.spec, domain)[1:]))])


@deploy("ACME certificate")
def acme(ctx: DeployContext) -> None:
    """letsencrypt mode: trust the ACME CA if asked, run certbot once, keep its renewal timer on."""
    tls = ctx.spec.tls
    if tls.mode != "letsencrypt":
        return
    domain = ctx.host.name
    put_files(ctx.files_of("tls"))  # the renewal deploy hook (reloads nginx)
    env = {}
    if tls.acme_ca_bundle:
        ca = files.put(name="trust the ACME server's CA", src=tls.acme_ca_bundle, dest=ACME_CA, mode="644")
        server.shell(name="update-ca-certificates", commands=["update-ca-certificates >/dev/null"],
                     _if=ca.did_change)
        env = {"REQUESTS_CA_BUNDLE": "/etc/ssl/certs/ca-certificates.crt"}
    chain, _ = cert_paths(domain)
    issued = host.get_fact(Command, command=f"test -L {chain} && test -e {chain} && echo yes || echo no")
    if issued != "yes":
        # the relay's name only where the operator says DNS has it (HTTP-01 must reach it)
        extra = (turn_tls_name(domain),) if ctx.spec.turn.enabled and ctx.spec.turn.tls_name_in_dns else ()
        server.shell(name=f"certbot certonly {domain}", commands=[certbot_command(domain, tls.directory_url,
                                                                                   tls.email, extra)], _env=env)
    systemd.service(name="certbot renewal timer", service="certbot.timer", running=True, enabled=True)
