"""ensemble.components.base: the helpers every component's deploy uses."""

from __future__ import annotations

import subprocess
from pathlib import Path


def test_stale_files_compares_bytes_mode_owner_and_group(tmp_path: Path):
    from ensemble.components.base import file_state_command, stale_files
    from ensemble.templating import RenderedFile

    same = RenderedFile(str(tmp_path / "same.conf"), "a\n", 0o640, "root", "root")
    other_bytes = RenderedFile(str(tmp_path / "bytes.conf"), "new\n", 0o644, "root", "root")
    other_mode = RenderedFile(str(tmp_path / "mode.conf"), "m\n", 0o600, "root", "root")
    missing = RenderedFile(str(tmp_path / "missing.conf"), "x\n", 0o644, "root", "root")
    for item, text, mode in ((same, "a\n", 0o640), (other_bytes, "old\n", 0o644), (other_mode, "m\n", 0o644)):
        Path(item.path).write_text(text)
        Path(item.path).chmod(mode)
    items = [same, other_bytes, other_mode, missing]
    state = subprocess.run(["sh", "-c", file_state_command([f.path for f in items])], capture_output=True,
                           text=True, check=True).stdout  # the same command the deploy runs on a host
    assert stale_files(items, state) == [other_bytes, other_mode, missing]
    assert stale_files(items, "") == items


def test_a_unit_reloading_counts_as_running():
    """pyinfra's own check reads SubState, where a reload counts as stopped: a deploy meeting the front
    door's refresher mid-reload started nginx again and reported a change (seen in the browser e2e)."""
    from ensemble.components.base import RUNNING_STATES, ServiceActiveState

    fact = ServiceActiveState()
    assert fact.command("nginx") == "systemctl show --property=ActiveState --value nginx"
    assert fact.command("a b;c") == "systemctl show --property=ActiveState --value 'a b;c'"
    assert fact.process(["reloading"]) in RUNNING_STATES and fact.process(["active"]) in RUNNING_STATES
    assert fact.process(["inactive"]) not in RUNNING_STATES and fact.process([]) not in RUNNING_STATES
