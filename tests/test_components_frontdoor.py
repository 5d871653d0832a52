"""ensemble.components.frontdoor: what the front door's deploy puts there besides render's files."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys


def test_front_door_package_archive_is_byte_stable():
    from ensemble.components.frontdoor import package_archive

    assert package_archive() == package_archive()
    # and across processes: another hash seed (set and dict orders) and another time zone
    probe = ("import hashlib, sys; from ensemble.components.frontdoor import package_archive;"
             "sys.stdout.write(hashlib.sha256(package_archive()).hexdigest())")
    other = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "PYTHONHASHSEED": "2", "TZ": "Pacific/Chatham"})
    assert other.returncode == 0, other.stderr
    assert other.stdout == hashlib.sha256(package_archive()).hexdigest()
