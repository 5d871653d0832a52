"""The fleet's own certificate authority: how the front door knows it reads a real shard.

Generated once on the operator side and kept in the secrets store: the CA (key + certificate) in the
``"fleet-ca"`` entry (kept on the front door only: a shard never holds the CA key), and each shard's
occupancy certificate (key + certificate for the shard's name, issued by the CA) in the shard's own
entry. The shard's nginx presents that certificate on its private occupancy listener
(paths.OCCUPANCY_PORT); the refresher verifies it against the fleet CA with a host name check in every
TLS mode, so whoever else answers for a shard's name is refused. Nothing is re-issued while the CA
and the certificates are present and match, so a second run changes nothing.

Operator-side only (imports `cryptography`): the front door's on-host code reads the CA certificate
as a plain file.

Example::

    added = complete_fleet_ca(store, ["demo-1.meet.example.org"])
    store["fleet-ca"]["cert"].startswith("-----BEGIN CERTIFICATE-----")    # True
"""

from __future__ import annotations

import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_ENTRY = "fleet-ca"  # the store's entry holding {"key", "cert"}: the front door keeps it (= secrets.CA_ENTRY)
SHARD_CERT = "occupancy_tls_cert"  # names in a shard's entry (= secrets.SHARD_CERT/SHARD_KEY)
SHARD_KEY = "occupancy_tls_key"
CA_DAYS = 36500  # the CA outlives the fleet: no renewal to forget
SHARD_DAYS = 3650  # re-issued by a deploy once less than RENEW_DAYS are left
RENEW_DAYS = 90


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def new_ca(fleet: str) -> dict[str, str]:
    """A new fleet CA: {"key": PEM, "cert": PEM} (ECDSA P-256, CA:TRUE pathlen 0, cert signing only).

    Example::

        new_ca("demo")["cert"]
    """
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ensemble fleet CA {fleet}"[:64])])
    now = _now()
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return {"key": _key_pem(key), "cert": cert.public_bytes(serialization.Encoding.PEM).decode()}


def issue(ca: dict[str, str], name: str) -> dict[str, str]:
    """A server certificate for `name` issued by the CA: {SHARD_KEY: PEM, SHARD_CERT: PEM}.

    Example::

        issue(new_ca("demo"), "demo-1.meet.example.org")[SHARD_CERT]
    """
    ca_key = serialization.load_pem_private_key(ca["key"].encode(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca["cert"].encode())
    key = ec.generate_private_key(ec.SECP256R1())
    now = _now()
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=SHARD_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return {SHARD_KEY: _key_pem(key), SHARD_CERT: cert.public_bytes(serialization.Encoding.PEM).decode()}


def _valid_for(ca_cert: x509.Certificate, entry: dict[str, str], name: str) -> bool:
    """Whether the entry holds a certificate for `name`, issued by this CA, not near its end."""
    try:
        cert = x509.load_pem_x509_certificate(entry[SHARD_CERT].encode())
        serialization.load_pem_private_key(entry[SHARD_KEY].encode(), password=None)
        cert.verify_directly_issued_by(ca_cert)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
            x509.DNSName)
    except (KeyError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
        return False
    return names == [name] and cert.not_valid_after_utc - _now() > datetime.timedelta(days=RENEW_DAYS)


def complete_fleet_ca(store: dict[str, dict[str, str]], shard_names: list[str], fleet: str = "") -> bool:
    """Create the CA when missing, issue each shard's occupancy certificate when missing, for another
    name, from another CA or close to its end; True if anything was added.

    Example::

        complete_fleet_ca(store, spec.shard_names(), spec.fleet.name)
    """
    added = False
    ca = store.get(CA_ENTRY) or {}
    try:
        ca_cert = x509.load_pem_x509_certificate(ca["cert"].encode())
        serialization.load_pem_private_key(ca["key"].encode(), password=None)
    except (KeyError, ValueError, TypeError, AttributeError):
        ca = store[CA_ENTRY] = new_ca(fleet)
        ca_cert = x509.load_pem_x509_certificate(ca["cert"].encode())
        added = True
    for name in shard_names:
        entry = store.setdefault(name, {})
        if not _valid_for(ca_cert, entry, name):
            entry.update(issue(ca, name))
            added = True
    return added
