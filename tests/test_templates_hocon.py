"""jicofo.conf and jvb.conf parsed by a HOCON parser (pyhocon), with the keys that make a shard work, and by
the parser jicofo and the videobridge themselves use (Typesafe Config on Java, Debian's libtypesafe-config-java)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
from pyhocon import ConfigFactory

from ensemble.profiles import PROFILES
from ensemble.providers.base import Host
from ensemble.render import shard_files
from ensemble.secrets import complete_secrets
from ensemble.spec import spec_from_dict


def _render(profile="debian-bookworm", host=None, **sections):
    spec = spec_from_dict({"fleet": {"os": profile}, **sections})
    store: dict = {}
    complete_secrets(store, spec)
    files = {f.path: f for f in shard_files(spec, 1, store, host=host)}
    return spec, store[spec.shard_name(1)], files


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_jicofo_conf(profile):
    spec, secrets, files = _render(profile)
    d = spec.shard_name(1)
    item = files["/etc/jitsi/jicofo/jicofo.conf"]
    assert (item.mode, item.group, item.service) == (0o640, "jitsi", "jicofo")
    conf = ConfigFactory.parse_string(item.content)
    client = conf["jicofo.xmpp.client"]
    assert client["password"] == secrets["focus_password"]
    assert f'password = "{secrets["focus_password"]}"' in item.content  # quoted
    assert (client["username"], client["domain"], client["xmpp-domain"]) == ("focus", f"auth.{d}", d)
    assert client["client-proxy"] == f"focus.{d}"
    assert conf["jicofo.bridge.brewery-jid"] == f"JvbBrewery@internal.auth.{d}"
    assert conf["jicofo.health.enabled"] is True
    assert (conf["jicofo.rest.host"], conf["jicofo.rest.port"]) == ("127.0.0.1", 8888)
    if not PROFILES[profile].legacy:
        assert conf["jicofo.conference.shared-document.use-random-name"] is True


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_jvb_conf_with_placeholder_nat(profile):
    spec, secrets, files = _render(profile)
    d = spec.shard_name(1)
    item = files["/etc/jitsi/videobridge/jvb.conf"]
    assert (item.mode, item.group, item.service) == (0o640, "jitsi", "jitsi-videobridge2")
    conf = ConfigFactory.parse_string(item.content)
    shard = conf["videobridge.apis.xmpp-client.configs.shard"]
    assert shard["PASSWORD"] == secrets["jvb_password"]
    assert f'PASSWORD = "{secrets["jvb_password"]}"' in item.content
    assert (shard["USERNAME"], shard["DOMAIN"]) == ("jvb", f"auth.{d}")
    assert shard["MUC_JIDS"] == f"JvbBrewery@internal.auth.{d}"
    assert d in shard["MUC_NICKNAME"]
    # REST stats and graceful shutdown, on loopback only
    assert conf["videobridge.apis.rest.enabled"] is True
    assert conf["videobridge.rest.shutdown.enabled"] is True
    assert conf["videobridge.http-servers.private.host"] == "127.0.0.1"
    assert conf["videobridge.http-servers.private.port"] == 8080
    assert conf["videobridge.http-servers.public.port"] == -1
    # colibri websockets off, consistently with the nginx site (no /colibri-ws there)
    assert conf["videobridge.websockets.enabled"] is False
    assert "colibri-ws" not in files[f"/etc/nginx/sites-available/{d}.conf"].content
    assert conf["videobridge.ice.udp.port"] == 10000
    (mapping,) = conf["ice4j.harvest.mapping.static-mappings"]
    assert (mapping["local-address"], mapping["public-address"]) == ("192.0.2.1", "203.0.113.1")
    assert conf["ice4j.harvest.mapping.stun.addresses"] == []


def test_jvb_nat_mapping_follows_the_host():
    host = Host(name="demo-1.meet.example.org", role="shard", shard=1, address="198.51.100.7",
                public_ipv4="198.51.100.7", private_ipv4="10.1.2.3")
    _, _, files = _render(host=host)
    conf = ConfigFactory.parse_string(files["/etc/jitsi/videobridge/jvb.conf"].content)
    (mapping,) = conf["ice4j.harvest.mapping.static-mappings"]
    assert (mapping["local-address"], mapping["public-address"]) == ("10.1.2.3", "198.51.100.7")


def test_jvb_without_nat_uses_the_spec_stun_servers():
    host = Host(name="demo-1.meet.example.org", role="shard", shard=1, address="10.213.0.11")
    _, _, files = _render(host=host, jitsi={"stun_servers": ["stun:stun.example.org", "turn.example.org:443"]})
    conf = ConfigFactory.parse_string(files["/etc/jitsi/videobridge/jvb.conf"].content)
    assert conf["ice4j.harvest.mapping.static-mappings"] == []
    assert conf["ice4j.harvest.mapping.stun.addresses"] == ["stun.example.org:3478", "turn.example.org:443"]


def test_passwords_differ_between_components_and_shards():
    spec = spec_from_dict({})
    store: dict = {}
    complete_secrets(store, spec)
    one = {f.path: f.content for f in shard_files(spec, 1, store)}
    two = {f.path: f.content for f in shard_files(spec, 2, store)}
    p1 = ConfigFactory.parse_string(one["/etc/jitsi/jicofo/jicofo.conf"])["jicofo.xmpp.client.password"]
    p2 = ConfigFactory.parse_string(two["/etc/jitsi/jicofo/jicofo.conf"])["jicofo.xmpp.client.password"]
    assert p1 != p2


# Jitsi's components read their HOCON with Typesafe Config: parse every rendered file with it, print JSON.
HOCON_TO_JSON = """
import com.typesafe.config.*;
import java.io.File;

public class HoconToJson {
    public static void main(String[] args) {
        StringBuilder out = new StringBuilder("[");
        for (int i = 0; i < args.length; i++) {
            ConfigParseOptions strict = ConfigParseOptions.defaults().setAllowMissing(false);
            Config config = ConfigFactory.parseFile(new File(args[i]), strict).resolve();
            out.append(i > 0 ? "," : "").append(config.root().render(ConfigRenderOptions.concise()));
        }
        System.out.println(out.append("]"));
    }
}
"""
TYPESAFE_JAR = "/usr/share/java/typesafe-config.jar"


def _typesafe(tmp_path, paths) -> list[dict]:
    source = tmp_path / "HoconToJson.java"
    source.write_text(HOCON_TO_JSON)
    java = shutil.which("java") or "/usr/bin/java"
    run = subprocess.run([java, "-cp", TYPESAFE_JAR, str(source), *map(str, paths)], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return json.loads(run.stdout)


@pytest.mark.needs_tool("java", TYPESAFE_JAR)
def test_typesafe_config_reads_every_profile_like_pyhocon(tmp_path):
    """One JVM for all profiles (it is slow to start): Jitsi's own parser agrees with pyhocon on every file."""
    paths, expected = [], []
    for profile in sorted(PROFILES):
        _, _, files = _render(profile)
        for name in ("/etc/jitsi/jicofo/jicofo.conf", "/etc/jitsi/videobridge/jvb.conf"):
            path = tmp_path / f"{profile}-{name.rsplit('/', 1)[1]}"
            path.write_text(files[name].content)
            paths.append(path)
            expected.append(json.loads(json.dumps(ConfigFactory.parse_string(files[name].content))))
    parsed = _typesafe(tmp_path, paths)
    assert parsed == expected
    assert all(p.get("jicofo", p.get("videobridge")) for p in parsed)


@pytest.mark.needs_tool("java", TYPESAFE_JAR)
def test_typesafe_config_rejects_a_broken_file(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text('jicofo { xmpp { client { password = "x" }\n')
    source = tmp_path / "HoconToJson.java"
    source.write_text(HOCON_TO_JSON)
    run = subprocess.run([shutil.which("java") or "/usr/bin/java", "-cp", TYPESAFE_JAR, str(source), str(bad)],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "ConfigException" in run.stderr
