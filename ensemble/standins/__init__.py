"""TEST STAND-INS for software ensemble cannot reach in tests (not the real software).

Only the `local` provider and the tests use them; production defaults never point here.

Example:
    from ensemble.standins import build_standin_repo
    repo = build_standin_repo()   # signed flat apt repository of Jitsi package stand-ins
"""

from ensemble.standins.jitsi_repo import StandinRepo, build_standin_repo

__all__ = ["StandinRepo", "build_standin_repo"]
