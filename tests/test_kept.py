"""What the hosts keep and the fleet's size decided from it (ensemble.kept): pure parts, and KEPT_COMMAND
run by a real shell."""

from __future__ import annotations

import subprocess

import pytest

from ensemble import paths
from ensemble.errors import EnsembleError, UsageError
from ensemble.kept import (
    KEPT_COMMAND,
    SECRETS_MARK,
    SIZE_MARK,
    fleet_size,
    parse_kept,
    refuse_shards_beyond,
    require_all_read,
    size_notes,
)
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
    outputs = {door.name: f'{SECRETS_MARK}\n{{"fleet": {{}}}}\n\n{SIZE_MARK}\n{{"shards": 3, "spec_shards": 2}}\n',
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


@pytest.mark.parametrize("content, problem", [
    ("", "empty"), ("\n", "empty"), ('{"t-f-1.t-f.test": {"focus_password": "ab', "not JSON"),
    ('{"fleet": {}} trailing', "not JSON"), ("[1, 2]", "not a JSON object of objects"),
    ('{"fleet": "x"}', "not a JSON object of objects"), ("\x00\x00\x00", "not JSON"),
])
def test_a_damaged_secrets_file_stops_the_deploy_instead_of_being_regenerated(tmp_path, content, problem):
    """KEPT_COMMAND run by a real shell: a missing file is "no secrets yet", an existing one that does not
    parse (a write killed half-way, emptied) is one line naming the host and file, exit code 2."""
    spec = _spec(1)
    shard = Host(spec.shard_name(1), "shard", 1, "10.0.0.1")
    kept_file = tmp_path / "secrets.json"
    command = KEPT_COMMAND.replace(paths.SECRETS_FILE, str(kept_file)).replace(paths.FLEET_SIZE_FILE,
                                                                                 str(tmp_path / "size.json"))

    def read() -> str:
        return subprocess.run(["sh", "-c", command], capture_output=True, text=True, check=True).stdout

    assert parse_kept({shard.name: read()}, [shard]).secrets == {shard.name: ""}  # missing: nothing kept yet
    good = '{"fleet": {"occupancy_token": "t"}}'
    kept_file.write_text(good + "\n")
    assert parse_kept({shard.name: read()}, [shard]).secrets == {shard.name: good}
    kept_file.write_text(content)
    with pytest.raises(UsageError) as caught:
        parse_kept({shard.name: read()}, [shard])
    message = str(caught.value)
    assert caught.value.exit_code == 2 and "\n" not in message and problem in message
    assert message.startswith(f"{shard.name}: {paths.SECRETS_FILE} is corrupt or truncated")


def test_merge_secrets_never_regenerates_over_damaged_text():
    from ensemble.secrets import merge_secrets

    spec = _spec(1)
    shard = Host(spec.shard_name(1), "shard", 1, "10.0.0.1")
    with pytest.raises(UsageError, match="t-f-1.t-f.test: its kept secrets are corrupt"):
        merge_secrets(spec, {shard.name: '{"t-f-1.t-f.test": {"jvb_pa'}, [shard])
