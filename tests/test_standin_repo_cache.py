"""The stand-in repository cache never prunes a repository a running fleet may still be served."""

from __future__ import annotations

import os
import time

from ensemble.standins import jitsi_repo


def test_prune_keeps_the_newest_and_every_recently_used_repository(tmp_path):
    now = time.time()
    repos = []
    for n in range(10):
        repo = tmp_path / f"repo-{n:02d}"
        repo.mkdir()
        age = jitsi_repo.RECENTLY_USED + 100 if n < 5 else 60  # five stale, five asked for a minute ago
        os.utime(repo, (now - age - n, now - age - n))
        repos.append(repo)
    keep = repos[0]  # asked for now: its mtime is refreshed
    jitsi_repo._prune_old_repos(tmp_path, keep=keep)
    left = sorted(p.name for p in tmp_path.glob("repo-*"))
    assert left == ["repo-00", "repo-05", "repo-06", "repo-07", "repo-08", "repo-09"]
    assert time.time() - keep.stat().st_mtime < 60
