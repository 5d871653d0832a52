"""The fleet CA: issued once on the operator side, kept in the secrets store, the same on every run;
the CA key stays on the front door; each shard's occupancy certificate names that shard only."""

from __future__ import annotations

import copy
import json

from cryptography import x509

from ensemble import paths
from ensemble.fleetca import CA_ENTRY, SHARD_CERT, SHARD_KEY, complete_fleet_ca, issue, new_ca
from ensemble.providers.base import Host
from ensemble.render import fleet_files, kept_secrets
from ensemble.secrets import complete_secrets, load_or_create_secrets, merge_secrets
from ensemble.spec import spec_from_dict


def _dns_names(pem: str) -> list[str]:
    cert = x509.load_pem_x509_certificate(pem.encode())
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)


def test_issued_once_and_the_same_on_every_run(tmp_path):
    spec = spec_from_dict({"fleet": {"shards": 3}})
    path = tmp_path / "secrets.json"
    first = load_or_create_secrets(path, spec)
    written = path.read_bytes()
    assert load_or_create_secrets(path, spec) == first and path.read_bytes() == written  # nothing re-issued
    ca = x509.load_pem_x509_certificate(first[CA_ENTRY]["cert"].encode())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    for name in spec.shard_names():
        cert = x509.load_pem_x509_certificate(first[name][SHARD_CERT].encode())
        cert.verify_directly_issued_by(ca)
        assert _dns_names(first[name][SHARD_CERT]) == [name]
    # a fourth shard (scale up) gets its certificate from the same CA; the others stay as they were
    bigger = spec_from_dict({"fleet": {"shards": 4}})
    store = copy.deepcopy(first)
    assert complete_secrets(store, bigger)
    assert store[CA_ENTRY] == first[CA_ENTRY]
    assert all(store[n] == first[n] for n in spec.shard_names())
    assert _dns_names(store[bigger.shard_name(4)][SHARD_CERT]) == [bigger.shard_name(4)]


def test_a_certificate_for_another_name_or_from_another_ca_is_reissued():
    spec = spec_from_dict({})
    store: dict = {}
    complete_secrets(store, spec)
    one, two = spec.shard_names()
    store[one].update(issue(new_ca("other"), one))  # another CA's certificate for the right name
    store[two][SHARD_CERT] = store[one][SHARD_CERT]  # a certificate for another shard
    store[two][SHARD_KEY] = "junk"
    assert complete_fleet_ca(store, spec.shard_names())
    ca = x509.load_pem_x509_certificate(store[CA_ENTRY]["cert"].encode())
    for name in (one, two):
        x509.load_pem_x509_certificate(store[name][SHARD_CERT].encode()).verify_directly_issued_by(ca)
        assert _dns_names(store[name][SHARD_CERT]) == [name]
    assert not complete_fleet_ca(store, spec.shard_names())


def test_the_ca_key_stays_on_the_front_door_and_comes_back_from_it():
    spec = spec_from_dict({})
    store: dict = {}
    complete_secrets(store, spec)
    door = Host(spec.fleet.domain, "frontdoor", None, "10.0.0.10")
    shards = [Host(n, "shard", i, f"10.0.0.{10 + i}") for i, n in enumerate(spec.shard_names(), 1)]
    for shard in shards:
        kept = kept_secrets(store, shard)
        assert CA_ENTRY not in kept and store[CA_ENTRY]["key"] not in json.dumps(kept)
    assert kept_secrets(store, door)[CA_ENTRY] == store[CA_ENTRY]
    remote = {h.name: json.dumps(kept_secrets(store, h)) for h in [*shards, door]}
    again, added = merge_secrets(spec, remote, [*shards, door])
    assert not added and again == store
    # the shard's files: its occupancy pair (key 0600); the front door: the CA certificate, never its key
    files = fleet_files(spec, store, [*shards, door])
    shard_files = {f.path: f for f in files[shards[0].name]}
    assert shard_files[paths.OCCUPANCY_TLS_KEY].mode == 0o600
    assert shard_files[paths.OCCUPANCY_TLS_CERT].content == store[shards[0].name][SHARD_CERT]
    door_files = {f.path: f for f in files[door.name]}
    assert door_files[paths.FLEET_CA_CERT].content == store[CA_ENTRY]["cert"]
    assert not any(store[CA_ENTRY]["key"] in f.content for f in files[shards[0].name] if isinstance(f.content, str))

