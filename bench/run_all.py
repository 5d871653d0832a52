#!/usr/bin/env python3
"""Run every benchmark, one after the other, and print each one's ratios (`make bench`).

Each benchmark measures its own comparisons side by side in one run (this machine is a noisy
2-core box, so absolute times mean little) and exits non-zero when a target is missed.

Example::

    .venv/bin/python bench/run_all.py            # all
    .venv/bin/python bench/run_all.py frontdoor  # one
    .venv/bin/python bench/run_all.py autoscale  # the autoscaler's simulated day (exit 1: a missed target)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHES = ("provision", "frontdoor", "deploy", "autoscale")


def main(argv: list[str]) -> int:
    here = Path(__file__).resolve().parent
    chosen = argv or list(BENCHES)
    unknown = [name for name in chosen if name not in BENCHES]
    if unknown:
        print(f"run_all.py: unknown benchmark {', '.join(unknown)!s}; valid: {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    failed = []
    for name in chosen:
        print(f"=== bench/{name}.py", flush=True)
        if subprocess.run([sys.executable, str(here / f"{name}.py")]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"missed targets or failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
