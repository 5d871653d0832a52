"""A signed, flat apt repository of TEST STAND-INS for Jitsi's packages (not Jitsi's software).

download.jitsi.org is out of reach where ensemble is tested, so the `local` provider serves this
repository instead. The packages have the real names, dependency shape, users, directories, debconf
questions and systemd unit names; their services are one small Python program (ensemble/standins/
jitsi/bin/standin_service.py) answering the loopback endpoints ensemble reads. The layout is the
one of download.jitsi.org (`stable/` with Packages, Release, InRelease; `jitsi-key.gpg.key` at the
root), so the deploy's production path (key download, fingerprint check, signed-by keyring, deb822
source with `Suites: stable/`) runs unchanged against it. Production never uses it.

Example:
    repo = build_standin_repo()                      # cached by content hash, fast the second time
    repo.path / "stable" / "InRelease"               # signed by a throwaway key made once
    repo.apt_settings("http://10.1.2.1:8081")        # values for the spec's [jitsi] section
"""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path

from ensemble.errors import EnsembleError

DEFAULT_CACHE_DIR = Path("/var/cache/ensemble/jitsi-standin")
SUITE = "stable/"
KEY_FILE = "jitsi-key.gpg.key"
KEY_UID = "ensemble TEST STAND-IN for the Jitsi repository key (not Jitsi's) <jitsi-standin@ensemble.invalid>"
# Fixed timestamps make the .deb files and the Release file reproducible (and never "not valid yet").
SOURCE_DATE_EPOCH = 1767225600  # 2026-01-01T00:00:00Z
RELEASE_DATE = "Thu, 01 Jan 2026 00:00:00 UTC"
MAINTAINER = "ensemble test stand-ins <jitsi-standin@ensemble.invalid>"
NOT_JITSI = "(ensemble); not Jitsi's software"

# The versions the stand-ins carry: real-looking numbers marked as stand-ins.
MEET_VERSION = "2.0.10590-1+ensemble.standin"
JVB_VERSION = "2.3-250-g0e5c6f1-1+ensemble.standin"
JICOFO_VERSION = "1.0-1140-1+ensemble.standin"

# The legacy set (profiles debian-buster, ubuntu-bionic): upstream's exact version strings, because the
# metapackage jitsi-meet 2.0.8719-1 depends on these exact versions and the profiles pin them.
LEGACY_MEET_VERSION = "2.0.8719-1"
LEGACY_WEB_VERSION = "1.0.7322-1"  # jitsi-meet-web, jitsi-meet-web-config, jitsi-meet-prosody
LEGACY_JVB_VERSION = "2.3-25-g1da507fa-1"
LEGACY_JICOFO_VERSION = "1.0-1038-1"

SERVICE_PROGRAM = "bin/standin_service.py"
JVB_PROGRAM = "/usr/share/jitsi-videobridge/standin-jvb.py"
JICOFO_PROGRAM = "/usr/share/jicofo/standin-jicofo.py"
PLUGIN_DIR = "/usr/share/jitsi-meet/prosody-plugins"

# Plugin names a Jitsi virtual host file may load. The stand-in ships working modules where their effect
# is observable (census, conference duration, anonymous auth, roster command, brewery filter, hidden rooms,
# the components' identities: OWN_PLUGINS), and a do-nothing module for every other name so prosody starts
# cleanly. A name upstream no longer ships is not shipped either: prosody then logs "Unable to load module",
# as with upstream's packages, and the tests that read prosody's log fail.
# Names prosody 0.12+ ships itself (bosh, websocket, smacks, external_services, ...) are left out on
# purpose: a placeholder in plugin_paths would shadow the real module.
OWN_PLUGINS = (
    "mod_muc_census.lua", "mod_conference_duration.lua", "mod_auth_jitsi-anonymous.lua", "mod_roster_command.lua",
    "mod_muc_filter_access.lua", "mod_muc_hide_all.lua", "mod_features_identity.lua", "standin_component.lib.lua",
    "mod_speakerstats_component.lua", "mod_end_conference.lua", "mod_av_moderation_component.lua",
)
# Components that came after 2.0.8719 (room metadata 2024, polls as a component 2025).
CURRENT_ONLY_PLUGINS = ("mod_room_metadata_component.lua", "mod_polls_component.lua")
PLACEHOLDER_PLUGINS = (
    "client_proxy", "filter_iq_jibri", "filter_iq_rayo",
    "fmuc", "jibri_session", "jiconop", "jitsi_permissions", "jitsi_session", "limits_exception",
    "measure_message_count", "muc_allowners", "muc_auth_ban", "muc_breakout_rooms", "muc_domain_mapper",
    "muc_end_meeting", "muc_kick_participant", "muc_limit_messages",
    "muc_lobby_rooms", "muc_max_occupants", "muc_meeting_id", "muc_password_check", "muc_password_whitelist",
    "muc_poltergeist", "muc_rate_limit", "muc_resource_validate", "muc_size", "muc_visitors",
    "muc_wait_for_host", "persistent_lobby", "presence_identity", "rate_limit",
    "room_destroy", "room_metadata", "s2s_whitelist", "s2sout_override",
    "secure_interfaces", "system_chat_message", "token_verification",
    "turncredentials", "visitors", "visitors_component",
)
# Modules jitsi-meet-prosody 1.0.7322 (the legacy set) still shipped and upstream removed in 2025: only the
# legacy package has them (as placeholders).
LEGACY_ONLY_PLACEHOLDERS = ("speakerstats", "av_moderation", "polls", "conference_duration_component")


@dataclass(frozen=True)
class StandinPackage:
    """What one stand-in .deb contains: control fields, files (guest path -> data file or text), scripts.

    Example: StandinPackage("jicofo", JICOFO_VERSION, "the Jitsi Conference Focus", depends=("python3",))
    """

    name: str
    version: str
    what: str  # the real package this stands in for, in words
    depends: tuple[str, ...] = ()
    pre_depends: tuple[str, ...] = ()
    recommends: tuple[str, ...] = ()
    files: dict[str, str] = field(default_factory=dict)  # guest path -> "data:<file>" or literal text
    modes: dict[str, int] = field(default_factory=dict)  # guest path -> mode (default 0644)
    scripts: tuple[str, ...] = ()  # maintainer scripts / debconf files under jitsi/debian/<name>.<script>
    legacy: bool = False  # of the legacy set: its scripts lack the blocks marked "# >>> since 2025"

    def description(self) -> str:
        return (f"TEST STAND-IN for {self.what} {NOT_JITSI}\n"
                f" Package-shaped stand-in built by ensemble for tests where download.jitsi.org is out of\n"
                f" reach: same package name, users, directories and units as the real package.")


def _unit(description: str, user: str, program: str, role: str, env_file: str) -> str:
    """A systemd unit running the stand-in service program as the real unit's user."""
    return f"""# TEST STAND-IN {NOT_JITSI}
[Unit]
Description={description} (TEST STAND-IN, ensemble; not Jitsi's software)
After=network-online.target prosody.service
Wants=network-online.target

[Service]
Type=simple
User={user}
Group=jitsi
EnvironmentFile=-{env_file}
ExecStart=/usr/bin/python3 {program} {role}
Restart=on-failure
RestartSec=2

[Install]
WantedBy=multi-user.target
"""


def _placeholder_plugin(name: str) -> str:
    """Lua text of a do-nothing prosody module standing in for Jitsi's mod_<name>."""
    return (f"-- TEST STAND-IN (ensemble) for Jitsi's mod_{name}; not Jitsi's software.\n"
            f"-- A placeholder so a Jitsi virtual host file that loads \"{name}\" starts cleanly; it does nothing.\n"
            f"module:log(\"debug\", \"TEST STAND-IN placeholder mod_{name} loaded on %s\", module.host);\n")


def _readme(name: str) -> str:
    return (f"{name}: TEST STAND-IN {NOT_JITSI}.\nBuilt by ensemble (ensemble/standins/jitsi_repo.py) for tests "
            f"where download.jitsi.org is out of reach.\nNever install it on a production server.\n")


def _web_files() -> dict[str, str]:
    root = "/usr/share/jitsi-meet"
    names = ["index.html", "base.html", "title.html", "body.html", "plugin.head.html", "interface_config.js",
             "libs/app.bundle.min.js", "libs/lib-jitsi-meet.min.js", "css/all.css", "images/favicon.svg",
             "images/watermark.svg", "lang/main.json", "lang/main-fr.json"]
    return {f"{root}/{n}": f"data:web/{n}" for n in names}


def _prosody_files(legacy: bool = False) -> dict[str, str]:
    """The files of jitsi-meet-prosody: the plugins of the current release, or of the legacy one (1.0.7322)."""
    placeholders = PLACEHOLDER_PLUGINS + (LEGACY_ONLY_PLACEHOLDERS if legacy else ())
    out = {f"{PLUGIN_DIR}/mod_{n}.lua": _placeholder_plugin(n) for n in placeholders}
    for own in OWN_PLUGINS + (() if legacy else CURRENT_ONLY_PLUGINS):
        out[f"{PLUGIN_DIR}/{own}"] = f"data:prosody-plugins/{own}"
    out["/usr/share/jitsi-meet-prosody/prosody.cfg.lua-jvb.example"] = "data:prosody/prosody.cfg.lua-jvb.example"
    return out


def revised(version: str, revision: int) -> str:
    """The version of a stand-in package in repository revision `revision` (1 = the base version).

    A later revision sorts after the earlier ones (dpkg --compare-versions), as an upstream release does.

    Example: revised("1.0-1140-1+ensemble.standin", 2) -> "1.0-1140-1+ensemble.standin.2"
    """
    return version if revision <= 1 else f"{version}.{revision}"


def standin_packages(revision: int = 1) -> list[StandinPackage]:
    """The stand-in packages, in dependency order (facts only; building is below).

    `revision` > 1 gives the same packages with newer versions (an upstream release to upgrade to).

    Example: [p.version for p in standin_packages(2)][-1]    # "2.0.10590-1+ensemble.standin.2"
    """
    jvb_version, jicofo_version, meet_version = (revised(v, revision) for v in
                                                  (JVB_VERSION, JICOFO_VERSION, MEET_VERSION))
    return _packages(jvb_version, jicofo_version, meet_version, meet_version, legacy=False)


def legacy_packages() -> list[StandinPackage]:
    """The legacy set: jitsi-meet 2.0.8719-1 with its exact Depends, the versions upstream released with it.

    Example: {p.name: p.version for p in legacy_packages()}["jicofo"]    # "1.0-1038-1"
    """
    return _packages(LEGACY_JVB_VERSION, LEGACY_JICOFO_VERSION, LEGACY_WEB_VERSION, LEGACY_MEET_VERSION,
                     legacy=True)


def _packages(jvb_version: str, jicofo_version: str, web_version: str, meet_version: str, *,
              legacy: bool) -> list[StandinPackage]:
    service_deps = ("python3 (>= 3.9)", "adduser", "procps", "debconf (>= 0.5) | debconf-2.0")
    maint = ("templates", "config", "postinst", "prerm", "postrm")
    return [
        StandinPackage(
            "jitsi-videobridge2", jvb_version, "Jitsi Videobridge (jitsi-videobridge2)", depends=service_deps,
            files={JVB_PROGRAM: f"data:{SERVICE_PROGRAM}",
                   "/usr/lib/systemd/system/jitsi-videobridge2.service": _unit(
                       "Jitsi Videobridge", "jvb", JVB_PROGRAM, "jvb", "/etc/jitsi/videobridge/config"),
                   "/usr/share/doc/jitsi-videobridge2/README.standin": _readme("jitsi-videobridge2")},
            modes={JVB_PROGRAM: 0o755}, scripts=maint),
        StandinPackage(
            # ruby-hocon: the postinst edits jicofo.conf with `hocon`, as the real one does
            "jicofo", jicofo_version, "Jitsi Conference Focus (jicofo)", depends=(*service_deps, "ruby-hocon"),
            files={JICOFO_PROGRAM: f"data:{SERVICE_PROGRAM}",
                   "/usr/lib/systemd/system/jicofo.service": _unit(
                       "Jitsi Conference Focus", "jicofo", JICOFO_PROGRAM, "jicofo", "/etc/jitsi/jicofo/config"),
                   "/usr/share/doc/jicofo/README.standin": _readme("jicofo")},
            modes={JICOFO_PROGRAM: 0o755}, scripts=maint),
        StandinPackage(
            "jitsi-meet-web", web_version, "the Jitsi Meet web application (jitsi-meet-web)",
            files={**_web_files(), "/usr/share/doc/jitsi-meet-web/README.standin": _readme("jitsi-meet-web")}),
        StandinPackage(
            "jitsi-meet-web-config", web_version, "the Jitsi Meet web server configuration (jitsi-meet-web-config)",
            pre_depends=("nginx | nginx-full | nginx-extras | nginx-light | openresty | apache2",),
            depends=("openssl", "debconf (>= 0.5) | debconf-2.0"),
            files={"/usr/share/jitsi-meet-web-config/config.js": "data:web-config/config.js",
                   "/usr/share/jitsi-meet-web-config/jitsi-meet.example": "data:web-config/jitsi-meet.example",
                   "/usr/share/doc/jitsi-meet-web-config/README.standin": _readme("jitsi-meet-web-config")},
            scripts=("templates", "config", "postinst", "postrm")),
        StandinPackage(
            "jitsi-meet-prosody", web_version, "the Jitsi Meet prosody configuration and plugins (jitsi-meet-prosody)",
            depends=("openssl", "ca-certificates", "prosody (>= 0.12.0) | prosody-0.12 | prosody-13.0", "lua-sec",
                     "lua-basexx", "lua-luaossl", "lua-cjson", "lua-inspect", "debconf (>= 0.5) | debconf-2.0"),
            files={**_prosody_files(legacy),
                   "/usr/share/doc/jitsi-meet-prosody/README.standin": _readme("jitsi-meet-prosody")},
            scripts=("templates", "config", "postinst", "postrm"), legacy=legacy),
        StandinPackage(
            "jitsi-meet", meet_version, "the Jitsi Meet meta package (jitsi-meet)",
            pre_depends=(f"jitsi-videobridge2 (= {jvb_version})",),
            depends=(f"jicofo (= {jicofo_version})", f"jitsi-meet-web (= {web_version})",
                     f"jitsi-meet-web-config (= {web_version})", f"jitsi-meet-prosody (= {web_version})"),
            recommends=(f"jitsi-meet-turnserver (= {web_version})",),
            files={"/usr/share/doc/jitsi-meet/README.standin": _readme("jitsi-meet")}),
    ]


@dataclass(frozen=True)
class StandinRepo:
    """A built stand-in repository: serve `path` over HTTP; `suite` is the flat suite directory.

    Example:
        repo.key_url("http://10.1.2.1:8081")   # "http://10.1.2.1:8081/jitsi-key.gpg.key"
    """

    path: Path
    key_fingerprint: str
    suite: str = SUITE
    versions: dict[str, str] = field(default_factory=dict)

    def key_url(self, base_url: str) -> str:
        return f"{base_url.rstrip('/')}/{KEY_FILE}"

    def apt_settings(self, base_url: str) -> dict[str, str]:
        """Values for the spec's [jitsi] section pointing the deploy at this repository when served at base_url.

        Example: {"apt_repo": base_url, "apt_suite": "stable/", "apt_key_url": ..., "apt_key_fingerprint": ...}
        """
        return {"apt_repo": base_url.rstrip("/"), "apt_suite": self.suite, "apt_key_url": self.key_url(base_url),
                "apt_key_fingerprint": self.key_fingerprint}


# ---------------------------------------------------------------------------------------------- actions

def _data_root():
    return files("ensemble.standins").joinpath("jitsi")


def _data_bytes(relative: str) -> bytes:
    return _data_root().joinpath(relative).read_bytes()


def _iter_data_files(node=None, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    node = node or _data_root()
    for child in sorted(node.iterdir(), key=lambda c: c.name):
        if child.name == "__pycache__":
            continue
        if child.is_dir():
            yield from _iter_data_files(child, f"{prefix}{child.name}/")
        else:
            yield f"{prefix}{child.name}", child.read_bytes()


def content_hash() -> str:
    """Hash of everything that goes into the packages (this module and its data files).

    Example: content_hash() -> "3f2a..." (changes when a stand-in file changes)
    """
    digest = hashlib.sha256(Path(__file__).read_bytes())
    for name, data in _iter_data_files():
        digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
    return digest.hexdigest()


# The programs the build runs, and the Debian package each comes from (named in the error when missing).
REQUIRED_TOOLS = {"dpkg-deb": "dpkg", "gpg": "gnupg", "gpgconf": "gnupg", "gpg-agent": "gnupg"}


def _require_tools() -> None:
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise EnsembleError(f"building the Jitsi stand-in repository needs the package(s) {', '.join(missing)}: "
                            f"apt-get install {' '.join(missing)}")


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a build tool with reproducible timestamps; a failure is one line naming the tool and its complaint."""
    env = dict(os.environ, SOURCE_DATE_EPOCH=str(SOURCE_DATE_EPOCH), LC_ALL="C")
    try:
        return subprocess.run(cmd, check=True, capture_output=True, env=env, **kwargs)
    except subprocess.CalledProcessError as exc:
        complaint = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
        raise EnsembleError(f"Jitsi stand-in build: {cmd[0]} failed: {complaint[-1] if complaint else exc}") from None


def _control_text(pkg: StandinPackage, installed_kib: int) -> str:
    lines = [f"Package: {pkg.name}", f"Version: {pkg.version}", "Architecture: all", f"Maintainer: {MAINTAINER}",
             f"Installed-Size: {installed_kib}", "Section: net", "Priority: optional"]
    for name, values in (("Pre-Depends", pkg.pre_depends), ("Depends", pkg.depends),
                         ("Recommends", pkg.recommends)):
        if values:
            lines.append(f"{name}: {', '.join(values)}")
    lines += ["Homepage: https://jitsi.org/meet", f"Description: {pkg.description()}"]
    return "\n".join(lines) + "\n"


def _write_tree(pkg: StandinPackage, root: Path) -> None:
    """Lay out the package's files and DEBIAN/ control area under root."""
    for guest_path, source in pkg.files.items():
        target = root / guest_path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        data = _data_bytes(source[len("data:"):]) if source.startswith("data:") else source.encode()
        target.write_bytes(data)
        target.chmod(pkg.modes.get(guest_path, 0o644))
    control = root / "DEBIAN"
    control.mkdir(parents=True, exist_ok=True)
    for script in pkg.scripts:
        target = control / script
        target.write_bytes(script_text(pkg, script).encode())
        target.chmod(0o644 if script == "templates" else 0o755)
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file() and control not in p.parents)
    (control / "control").write_text(_control_text(pkg, max(1, (size + 1023) // 1024)))
    for path in [root, *root.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
        os.utime(path, (SOURCE_DATE_EPOCH, SOURCE_DATE_EPOCH), follow_symlinks=False)


def script_text(pkg: StandinPackage, script: str) -> str:
    """A maintainer script of the package; for the legacy set without the edits upstream added in 2025
    (the blocks between "# >>> since 2025" and "# <<< since 2025").

    Example: "polls_component" in script_text(legacy_prosody_package, "postinst")   # False
    """
    text = _data_bytes(f"debian/{pkg.name}.{script}").decode()
    if pkg.legacy:
        text = re.sub(r"(?ms)^[ \t]*# >>> since 2025.*?^[ \t]*# <<< since 2025[^\n]*\n", "", text)
    return text


def build_deb(pkg: StandinPackage, out_dir: Path, work_dir: Path) -> Path:
    """Build one stand-in .deb with dpkg-deb into out_dir; returns its path.

    Example: build_deb(standin_packages()[0], Path("repo/stable"), Path("tmp")) -> .../jitsi-videobridge2_..._all.deb
    """
    root = work_dir / pkg.name
    _write_tree(pkg, root)
    deb = out_dir / f"{pkg.name}_{pkg.version}_all.deb"
    _run(["dpkg-deb", "--root-owner-group", "-Zxz", "--build", str(root), str(deb)])
    return deb


def _hashes(data: bytes) -> dict[str, str]:
    return {name: hashlib.new(name, data).hexdigest() for name in ("md5", "sha1", "sha256", "sha512")}


def packages_index(debs: list[Path], repo_root: Path) -> str:
    """The flat repository's Packages file (Filename relative to the repository root, as apt expects)."""
    stanzas = []
    for deb in debs:
        control = _run(["dpkg-deb", "--field", str(deb)]).stdout.decode().rstrip("\n")
        data = deb.read_bytes()
        digests = _hashes(data)
        stanzas.append(f"{control}\nFilename: {deb.relative_to(repo_root).as_posix()}\nSize: {len(data)}\n"
                       f"MD5sum: {digests['md5']}\nSHA1: {digests['sha1']}\nSHA256: {digests['sha256']}\n"
                       f"SHA512: {digests['sha512']}\n")
    return "\n".join(stanzas)


def release_text(suite_dir: Path, index_names: list[str]) -> str:
    """The Release file of the flat suite: origin marked as a stand-in, checksums of the indexes."""
    lines = ["Origin: ensemble TEST STAND-IN for Jitsi", "Label: Jitsi TEST STAND-IN (ensemble; not Jitsi's)",
             "Suite: stable", f"Date: {RELEASE_DATE}", "Description: TEST STAND-IN for download.jitsi.org stable/ "
             "(ensemble); not Jitsi's software"]
    contents = {n: (suite_dir / n).read_bytes() for n in index_names}
    for field_name, algo in (("MD5Sum", "md5"), ("SHA1", "sha1"), ("SHA256", "sha256"), ("SHA512", "sha512")):
        lines.append(f"{field_name}:")
        lines += [f" {hashlib.new(algo, d).hexdigest()} {len(d):>8} {n}" for n, d in contents.items()]
    return "\n".join(lines) + "\n"


def _short_home(home: Path) -> str:
    """A path of at most ~40 bytes for gpg's home: gpg-agent's socket is made inside it, and a Unix
    socket path has at most 107 bytes (a deep cache folder, e.g. a test's, fails with "No agent running").

    Example::

        _short_home(Path("/var/cache/ensemble/jitsi-standin/gnupg"))   # unchanged: already short
    """
    if len(str(home)) <= 60:
        return str(home)
    link = Path(tempfile.gettempdir()) / f"ensemble-gpg-{hashlib.sha256(str(home).encode()).hexdigest()[:16]}"
    if not (link.is_symlink() and os.readlink(link) == str(home)):
        staged = link.with_name(f"{link.name}.{os.getpid()}")
        staged.unlink(missing_ok=True)
        staged.symlink_to(home)
        staged.replace(link)  # atomic: another process may be doing the same
    return str(link)


def _gpg(home: Path, *args: str) -> subprocess.CompletedProcess:
    return _run(["gpg", "--homedir", _short_home(home), "--batch", "--quiet", "--no-tty", *args])


def _stop_gpg_agent(home: Path) -> None:
    """gpg starts an agent per home directory; stop it so nothing is left running."""
    subprocess.run(["gpgconf", "--homedir", _short_home(home), "--kill", "all"], capture_output=True, check=False)


def ensure_signing_key(cache_dir: Path) -> tuple[Path, str]:
    """The throwaway signing key (made once, kept under cache_dir/gnupg, mode 0700); returns (home, fingerprint)."""
    home = cache_dir / "gnupg"
    fingerprint_file = cache_dir / "key-fingerprint"
    if fingerprint_file.exists() and (home / "pubring.kbx").exists():
        return home, fingerprint_file.read_text().strip()
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(mode=0o700, parents=True)
    try:
        _gpg(home, "--passphrase", "", "--quick-generate-key", KEY_UID, "ed25519", "sign", "never")
        listing = _gpg(home, "--with-colons", "--list-secret-keys").stdout.decode()
    finally:
        _stop_gpg_agent(home)
    fingerprint = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr:"))
    fingerprint_file.write_text(fingerprint + "\n")
    return home, fingerprint


def _sign_suite(home: Path, fingerprint: str, suite_dir: Path) -> None:
    release = suite_dir / "Release"
    try:
        _gpg(home, "--local-user", fingerprint, "--digest-algo", "SHA512", "--clearsign",
             "--output", str(suite_dir / "InRelease"), str(release))
        _gpg(home, "--local-user", fingerprint, "--digest-algo", "SHA512", "--armor", "--detach-sign",
             "--output", str(suite_dir / "Release.gpg"), str(release))
    finally:
        _stop_gpg_agent(home)


def _build_into(repo_root: Path, home: Path, fingerprint: str, work_dir: Path, pkgs: list[StandinPackage]) -> None:
    suite_dir = repo_root / SUITE.rstrip("/")
    suite_dir.mkdir(parents=True)
    # one work folder per package: the legacy set reuses the names
    debs = [build_deb(pkg, suite_dir, work_dir / str(i)) for i, pkg in enumerate(pkgs)]
    index = packages_index(debs, repo_root).encode()
    (suite_dir / "Packages").write_bytes(index)
    (suite_dir / "Packages.gz").write_bytes(gzip.compress(index, mtime=SOURCE_DATE_EPOCH))
    (suite_dir / "Release").write_text(release_text(suite_dir, ["Packages", "Packages.gz"]))
    _sign_suite(home, fingerprint, suite_dir)
    (repo_root / KEY_FILE).write_bytes(_gpg(home, "--armor", "--export", fingerprint).stdout)
    (repo_root / "README.txt").write_text(
        "TEST STAND-IN for download.jitsi.org (ensemble); not Jitsi's software.\n"
        f"Flat repository: deb [signed-by=...] <url> {SUITE}\nSigning key fingerprint: {fingerprint}\n")
    for path in [repo_root, *repo_root.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)


# A repository asked for within this many seconds may still be served to a running fleet (another
# checkout, another test process): it is never pruned, however many there are.
RECENTLY_USED = 3 * 3600


def _prune_old_repos(cache_dir: Path, keep: Path, kept: int = 6) -> None:
    os.utime(keep)  # mtime = last asked for
    now = time.time()
    others = sorted((p for p in cache_dir.glob("repo-*") if p != keep), key=lambda p: p.stat().st_mtime)
    for old in others[:max(0, len(others) - (kept - 1))]:
        if now - old.stat().st_mtime > RECENTLY_USED:
            shutil.rmtree(old, ignore_errors=True)


def build_standin_repo(cache_dir: Path = DEFAULT_CACHE_DIR, *, revision: int = 1,
                       legacy: bool = False) -> StandinRepo:
    """Build (or reuse) the signed stand-in repository under cache_dir; idempotent and safe to run concurrently.

    The repository lives in cache_dir/repo-<content hash>-<key>[-r<revision>][-legacy]: a change to any
    stand-in file gives a new directory, an unchanged tree returns at once. Only the newest few
    repositories are kept, and none asked for in the last 3 hours (it may still be served by a running test).
    `revision` 2, 3, ...
    carries the same packages with newer versions (an upstream release to upgrade to); `legacy` adds the
    legacy set (jitsi-meet 2.0.8719-1 and the exact versions it depends on) beside the newer packages.

    Example:
        repo = build_standin_repo(Path("/var/cache/ensemble/jitsi-standin"))
        repo.path   # .../repo-1a2b3c4d5e6f7a8b-2DC1389C (holds jitsi-key.gpg.key and stable/)
        build_standin_repo(revision=2).versions["jicofo"]     # "1.0-1140-1+ensemble.standin.2"
    """
    if not isinstance(revision, int) or not 1 <= revision <= 99:
        raise EnsembleError(f"Jitsi stand-in repository revision: an integer 1..99, got {revision!r}")
    cache_dir = Path(cache_dir)
    _require_tools()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        (cache_dir / ".lock").touch()
    except OSError as exc:
        raise EnsembleError(f"Jitsi stand-in cache {cache_dir}: not writable ({exc.strerror}); run as root, as the "
                            "local provider does, or pass another cache_dir") from None
    pkgs = standin_packages(revision) + (legacy_packages() if legacy else [])
    versions = {p.name: p.version for p in standin_packages(revision)}
    suffix = (f"-r{revision}" if revision > 1 else "") + ("-legacy" if legacy else "")
    with open(cache_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two test processes building at once wait for each other
        home, fingerprint = ensure_signing_key(cache_dir)
        repo_root = cache_dir / f"repo-{content_hash()[:16]}-{fingerprint[-8:]}{suffix}"
        if not (repo_root / SUITE / "InRelease").exists():
            with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".build-") as tmp:
                staging = Path(tmp) / "repo"
                _build_into(staging, home, fingerprint, Path(tmp) / "work", pkgs)
                shutil.rmtree(repo_root, ignore_errors=True)
                staging.rename(repo_root)
        _prune_old_repos(cache_dir, keep=repo_root)
    return StandinRepo(path=repo_root, key_fingerprint=fingerprint, versions=versions)
