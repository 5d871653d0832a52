"""Operating-system profiles: what differs between the systems a shard can run on.

One table, read by the spec (validation), the providers (image labels, debootstrap
suites) and the deploys (package sources). Legacy profiles pin the last Jitsi
release that still ran on Java 11 and prosody 0.11.
"""

from __future__ import annotations

from dataclasses import dataclass

PROSODY_IM_REPO = "http://packages.prosody.im/debian"
PROSODY_IM_KEY_URL = "https://prosody.im/files/prosody-debian-packages.key"

# jitsi-meet 2.0.8719-1 and the exact versions its Depends/Pre-Depends name (jitsi-meet-debian-meta).
LEGACY_JITSI_PINS: tuple[tuple[str, str], ...] = (
    ("jitsi-meet", "2.0.8719-1"),
    ("jitsi-videobridge2", "2.3-25-g1da507fa-1"),
    ("jicofo", "1.0-1038-1"),
    ("jitsi-meet-web", "1.0.7322-1"),
    ("jitsi-meet-web-config", "1.0.7322-1"),
    ("jitsi-meet-prosody", "1.0.7322-1"),
)


@dataclass(frozen=True)
class OSProfile:
    """One supported system.

    Example::

        PROFILES["debian-bookworm"].java_package   # "openjdk-17-jre-headless"
    """

    name: str
    family: str  # "debian" | "ubuntu"
    codename: str
    scaleway_image: str | None  # marketplace label; None when Scaleway no longer offers it
    prosody_source: str  # "distribution" | "prosody.im"
    java_package: str
    jitsi_version: str  # apt version constraint for jitsi-meet ("" = newest in the repo)
    node_source: str  # where Etherpad's Node comes from: "distribution" | "nodesource"
    legacy: bool = False  # end of life: warn, pin old Jitsi
    # {package: exact version} apt pins with jitsi_version: the metapackage depends on exact versions
    # of these, and apt tries only each dependency's newest version, so all of them are pinned
    jitsi_pins: tuple[tuple[str, str], ...] = ()
    prosody_package: str = "prosody"  # prosody.im: "prosody" follows the newest line; "prosody-0.11" etc. stay

    @property
    def prosody_series(self) -> str:
        """Which prosody the profile runs: "0.11" (legacy, prosody.im), "13" (prosody.im's newest line, or
        trixie's own), else the distribution's "0.12" (bookworm, noble).

        Example::

            PROFILES["debian-trixie"].prosody_series    # "13"
        """
        if self.legacy:
            return "0.11"
        if self.prosody_source == "prosody.im" or self.codename in ("trixie",):
            return "13"
        return "0.12"

    @property
    def eol_warning(self) -> str | None:
        if not self.legacy:
            return None
        return (
            f"OS profile {self.name} is end of life: no security updates, Jitsi pinned to "
            f"{self.jitsi_version}; plan a move to debian-bookworm"
        )


PROFILES: dict[str, OSProfile] = {
    p.name: p
    for p in (
        OSProfile("debian-bullseye", "debian", "bullseye", "debian_bullseye", "prosody.im",
                  "openjdk-17-jre-headless", "", "nodesource"),
        OSProfile("debian-bookworm", "debian", "bookworm", "debian_bookworm", "distribution",
                  "openjdk-17-jre-headless", "", "nodesource"),
        OSProfile("debian-trixie", "debian", "trixie", "debian_trixie", "distribution",
                  "openjdk-21-jre-headless", "", "distribution"),
        OSProfile("ubuntu-jammy", "ubuntu", "jammy", "ubuntu_jammy", "prosody.im",
                  "openjdk-17-jre-headless", "", "nodesource"),
        OSProfile("ubuntu-noble", "ubuntu", "noble", "ubuntu_noble", "distribution",
                  "openjdk-17-jre-headless", "", "nodesource"),
        # Legacy: 2.0.8719 (June 2023) is the last stable jitsi-meet whose components ran on
        # Java 11 with prosody 0.11 from prosody.im.
        OSProfile("debian-buster", "debian", "buster", None, "prosody.im",
                  "openjdk-11-jre-headless", "2.0.8719-1", "nodesource", legacy=True,
                  jitsi_pins=LEGACY_JITSI_PINS, prosody_package="prosody-0.11"),
        OSProfile("ubuntu-bionic", "ubuntu", "bionic", None, "prosody.im",
                  "openjdk-11-jre-headless", "2.0.8719-1", "nodesource", legacy=True,
                  jitsi_pins=LEGACY_JITSI_PINS, prosody_package="prosody-0.11"),
    )
}

DEFAULT_PROFILE = "debian-bookworm"
