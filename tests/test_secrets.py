"""ensemble.secrets: the secrets store merged from what the hosts already have."""

from __future__ import annotations

import json


def test_secrets_merge_keeps_what_hosts_have_and_takes_the_fleet_token_from_the_front_door():
    from ensemble.providers.base import Host
    from ensemble.secrets import merge_secrets
    from ensemble.spec import default_spec

    spec = default_spec()
    s1, door = spec.shard_name(1), spec.fleet.domain
    hosts = [Host(s1, "shard", 1, "10.0.0.11"), Host(door, "frontdoor", None, "10.0.0.10")]
    remote = {s1: json.dumps({s1: {"jvb_password": "kept"}, "fleet": {"occupancy_token": "stale"}}),
              door: json.dumps({"fleet": {"occupancy_token": "door"}}), spec.shard_name(2): ""}  # none kept yet
    store, added = merge_secrets(spec, remote, hosts)
    assert added and store[s1]["jvb_password"] == "kept" and store["fleet"]["occupancy_token"] == "door"
    assert store[spec.shard_name(2)]["focus_password"]  # generated for the host that had none
    again, added_again = merge_secrets(spec, {n: json.dumps({n: store[n], "fleet": store["fleet"]})
                                              for n in spec.shard_names()} | {door: json.dumps(
                                                  {"fleet": store["fleet"], "fleet-ca": store["fleet-ca"]})},
                                       hosts)
    assert not added_again and again == store
