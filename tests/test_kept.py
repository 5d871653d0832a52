"""What the hosts keep and the fleet's size decided from it (ensemble.kept): pure parts."""

from __future__ import annotations

import pytest

from ensemble.errors import EnsembleError, UsageError
from ensemble.kept import SIZE_MARK, fleet_size, parse_kept, refuse_shards_beyond, require_all_read, size_notes
from ensemble.providers.base import Host
from ensemble.spec import spec_from_dict


def _spec(shards: int):
    return spec_from_dict({"fleet": {"name": "t-f", "domain": "t-f.test", "shards": shards}})


def test_scale_decision_is_kept_while_the_spec_says_what_it_said():
    assert fleet_size(_spec(2), None) == 2
    assert fleet_size(_spec(2), {"shards": 3, "spec_shards": 2}) == 3
    assert fleet_size(_spec(2), {"shards": 1, "spec_shards": 2}) == 1
    assert fleet_size(_spec(4), {"shards": 3, "spec_shards": 2}) == 4  # the spec was edited: it wins
    assert size_notes(_spec(2), 2) == [] and "has 3 shard(s)" in size_notes(_spec(2), 3)[0]


def test_deploy_never_shrinks_the_fleet():
    spec = _spec(2)
    hosts = [Host(spec.shard_name(n), "shard", n, f"10.0.0.{n}") for n in (1, 2, 3)]
    refuse_shards_beyond(spec, 3, hosts)
    with pytest.raises(UsageError, match=r"fleet.shards: .*t-f-3.t-f.test.*fleet scale 2.*nothing changed"):
        refuse_shards_beyond(spec, 2, hosts)


def test_parse_kept_reads_secrets_and_only_a_sane_front_door_record():
    spec = _spec(2)
    door = Host(spec.fleet.domain, "frontdoor", None, "10.0.0.10")
    shard = Host(spec.shard_name(1), "shard", 1, "10.0.0.1")
    outputs = {door.name: f'{{"fleet": {{}}}}\n\n{SIZE_MARK}\n{{"shards": 3, "spec_shards": 2}}\n',
               shard.name: f"\n{SIZE_MARK}\n{{\"shards\": 9, \"spec_shards\": 9}}"}  # only the door's record counts
    kept = parse_kept(outputs, [door, shard])
    assert kept.recorded == {"shards": 3, "spec_shards": 2}
    assert kept.secrets == {door.name: '{"fleet": {}}', shard.name: ""} and kept.unreachable == ()
    for junk in ("not json", "[3]", '{"shards": -3, "spec_shards": 2}', '{"shards": true, "spec_shards": 2}',
                 '{"shards": 100000, "spec_shards": 2}', '{"shards": 3}'):
        assert parse_kept({door.name: f"{SIZE_MARK}\n{junk}"}, [door]).recorded is None, junk


def test_an_unreachable_host_stops_the_deploy_before_secrets_are_regenerated():
    spec = _spec(1)
    shard = Host(spec.shard_name(1), "shard", 1, "10.0.0.1")
    kept = parse_kept({shard.name: None}, [shard])
    assert kept.unreachable == (shard.name,) and shard.name not in kept.secrets
    with pytest.raises(EnsembleError, match="t-f-1.t-f.test.*nothing deployed"):
        require_all_read(kept)
