"""The fleet's size model and what the hosts keep, read back (ensemble.fleet): pure parts."""

from __future__ import annotations

import pytest

from ensemble.errors import EnsembleError
from ensemble.fleet import SIZE_MARK, fleet_size, parse_kept, size_notes
from ensemble.providers.base import Host
from ensemble.spec import spec_from_dict


def _spec(shards: int):
    return spec_from_dict({"fleet": {"name": "t-f", "domain": "t-f.test", "shards": shards}})


def test_scale_decision_is_kept_while_the_spec_says_what_it_said():
    assert fleet_size(_spec(2), None) == 2
    assert fleet_size(_spec(2), {"shards": 3, "spec_shards": 2}) == 3
    assert fleet_size(_spec(2), {"shards": 1, "spec_shards": 2}) == 1
    assert fleet_size(_spec(4), {"shards": 3, "spec_shards": 2}) == 4  # the spec was edited: it wins


def test_notes_say_the_size_and_the_hosts_outside_it():
    spec = _spec(2)
    hosts = [Host(spec.shard_name(n), "shard", n, f"10.0.0.{n}") for n in (1, 2, 3)]
    assert size_notes(spec, 2, hosts[:2]) == []
    notes = size_notes(spec, 2, hosts)
    assert len(notes) == 1 and "t-f-3.t-f.test" in notes[0] and "fleet scale 2" in notes[0]
    assert "has 3 shard(s)" in size_notes(spec, 3, hosts)[0]


def test_parse_kept_reads_secrets_and_the_front_doors_record():
    spec = _spec(2)
    door = Host(spec.fleet.domain, "frontdoor", None, "10.0.0.10")
    shard = Host(spec.shard_name(1), "shard", 1, "10.0.0.1")
    outputs = {door.name: f'{{"fleet": {{}}}}\n\n{SIZE_MARK}\n{{"shards": 3, "spec_shards": 2}}\n',
               shard.name: f"\n{SIZE_MARK}\n{{\"shards\": 9, \"spec_shards\": 9}}"}  # only the door's record counts
    kept = parse_kept(outputs, [door, shard])
    assert kept.recorded == {"shards": 3, "spec_shards": 2}
    assert kept.secrets == {door.name: '{"fleet": {}}', shard.name: ""}
    garbage = parse_kept({door.name: f"{SIZE_MARK}\nnot json"}, [door])
    assert garbage.recorded is None


def test_an_unreachable_host_stops_the_deploy_before_secrets_are_regenerated():
    spec = _spec(1)
    shard = Host(spec.shard_name(1), "shard", 1, "10.0.0.1")
    with pytest.raises(EnsembleError, match="t-f-1.t-f.test.*nothing deployed"):
        parse_kept({shard.name: None}, [shard])
