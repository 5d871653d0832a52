"""TEST STAND-IN for Let's Encrypt: Debian's `pebble` ACME server plus `pebble-challtestsrv` as its DNS,
both on a local fleet's bridge address, so certbot in the guests runs the real HTTP-01 flow.

Let's Encrypt is out of reach from here; production keeps its default directory URL.

- pebble listens on `<gateway>:14000` (ACME) and `:15000` (management: `/roots/0` is the issuing root).
- Its listener certificate is signed by a throwaway CA made here: guests must trust `ca_pem`
  (copy it into `/usr/local/share/ca-certificates/` + `update-ca-certificates`, or REQUESTS_CA_BUNDLE).
- HTTP-01 validation goes to port 80 of the address that challtestsrv's DNS gives for the domain:
  `add_a(domain, address)` for each host.

Example::

    acme = start_pebble("10.151.42.1", Path("/tmp/pebble"))
    acme.add_a("demo-1.meet.test", "10.151.42.11")
    acme.directory_url        # "https://10.151.42.1:14000/dir"
    acme.issuing_root()       # PEM of the root that signs issued certificates
    acme.stop()
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import ssl
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers.ports import free_port

ACME_PORT = 14000
MANAGEMENT_PORT = 15000
DNS_PORT = 8053


@dataclass
class Pebble:
    """A running pebble + challtestsrv pair (stop() ends both)."""

    gateway: str
    workdir: Path
    challtestsrv_management: str  # http://127.0.0.1:<port>
    pids: tuple[int, int]

    @property
    def directory_url(self) -> str:
        return f"https://{self.gateway}:{ACME_PORT}/dir"

    @property
    def ca_pem(self) -> Path:
        """The CA of pebble's listener certificate (what clients must trust to talk ACME)."""
        return self.workdir / "tls-ca.pem"

    def _context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_pem))

    def issuing_root(self) -> str:
        """PEM of the root that signs certificates (new at every pebble start)."""
        url = f"https://{self.gateway}:{MANAGEMENT_PORT}/roots/0"
        with urllib.request.urlopen(url, context=self._context(), timeout=5) as answer:
            return answer.read().decode()

    def add_a(self, domain: str, address: str) -> None:
        """Make pebble's DNS answer `domain` with `address` (where HTTP-01 is checked)."""
        body = json.dumps({"host": domain, "addresses": [address]}).encode()
        request = urllib.request.Request(f"{self.challtestsrv_management}/add-a", data=body, method="POST")
        with urllib.request.urlopen(request, timeout=5):
            pass

    def directory(self) -> dict:
        """The ACME directory as the host sees it."""
        with urllib.request.urlopen(self.directory_url, context=self._context(), timeout=5) as answer:
            return json.loads(answer.read())

    def stop(self) -> None:
        """Stop both processes (idempotent)."""
        for pid in self.pids:
            _stop(pid)
        self.pids = ()


def _stop(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(50):
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):
        pass


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def make_listener_certificate(workdir: Path, gateway: str) -> None:
    """A throwaway CA and pebble's listener certificate for the gateway address (Debian ships none)."""
    if (workdir / "pebble.pem").exists():
        return
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _openssl("req", "-x509", *ec, "-days", "30", "-subj", "/CN=ensemble test pebble listener CA",
             "-keyout", str(workdir / "tls-ca.key"), "-out", str(workdir / "tls-ca.pem"))
    _openssl("req", *ec, "-subj", "/CN=pebble", "-keyout", str(workdir / "pebble.key"),
             "-out", str(workdir / "pebble.csr"))
    (workdir / "ext.cnf").write_text(f"subjectAltName=IP:{gateway},IP:127.0.0.1,DNS:localhost\n"
                                     "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(workdir / "pebble.csr"), "-CA", str(workdir / "tls-ca.pem"),
             "-CAkey", str(workdir / "tls-ca.key"), "-CAcreateserial", "-days", "30",
             "-extfile", str(workdir / "ext.cnf"), "-out", str(workdir / "pebble.pem"))


def pebble_config(gateway: str, workdir: Path) -> dict:
    """pebble's settings: on the gateway, HTTP-01 checked on port 80 (its default 5002 misses nginx)."""
    return {"pebble": {
        "listenAddress": f"{gateway}:{ACME_PORT}",
        "managementListenAddress": f"{gateway}:{MANAGEMENT_PORT}",
        "certificate": str(workdir / "pebble.pem"),
        "privateKey": str(workdir / "pebble.key"),
        "httpPort": 80,
        "tlsPort": 443,
        "ocspResponderURL": "",
        "externalAccountBindingRequired": False,
    }}


def _spawn(argv: list[str], log: Path, env: dict | None = None) -> int:
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env).pid


def start_pebble(gateway: str, workdir: Path, timeout: float = 15.0) -> Pebble:
    """Start challtestsrv (DNS on gateway:8053) and pebble on the gateway; return when the directory answers."""
    for tool in ("pebble", "pebble-challtestsrv", "openssl"):
        if not shutil.which(tool):
            raise RuntimeError(f"the ACME stand-in needs {tool}: apt-get install pebble openssl")
    workdir.mkdir(parents=True, exist_ok=True)
    make_listener_certificate(workdir, gateway)
    (workdir / "pebble-config.json").write_text(json.dumps(pebble_config(gateway, workdir), indent=1))
    management_port = free_port()
    # -defaultIPv4/-defaultIPv6 "": unknown names get no answer (not 127.0.0.1)
    dns_pid = _spawn(["pebble-challtestsrv", "-defaultIPv4", "", "-defaultIPv6", "", "-dns01", f"{gateway}:{DNS_PORT}",
                      "-http01", "", "-https01", "", "-tlsalpn01", "",
                      "-management", f"127.0.0.1:{management_port}"], workdir / "challtestsrv.log")
    # no random sleep before validation, no deliberate badNonce errors
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    pebble_pid = _spawn(["pebble", "-config", str(workdir / "pebble-config.json"),
                         "-dnsserver", f"{gateway}:{DNS_PORT}", "-strict=false"], workdir / "pebble.log", env)
    acme = Pebble(gateway, workdir, f"http://127.0.0.1:{management_port}", (pebble_pid, dns_pid))
    deadline = time.monotonic() + timeout
    while True:
        try:
            acme.directory()
            acme.add_a("ready.check.invalid", "127.0.0.1")  # challtestsrv management answers too
            return acme
        except OSError as exc:
            if time.monotonic() > deadline:
                acme.stop()
                logs = [(workdir / name).read_text(errors="replace")[-300:]
                        for name in ("pebble.log", "challtestsrv.log")]
                raise RuntimeError(f"pebble did not start on {gateway}: {exc}; {logs}") from exc
            time.sleep(0.2)


@pytest.fixture
def acme_factory(tmp_path_factory):
    """Start the ACME stand-in on a gateway: `acme_factory(gateway) -> Pebble`; stopped after the test.

    Example::

        acme = acme_factory(local_provider.network(spec).gateway)
        acme.add_a(host.name, host.address)
    """
    started: list[Pebble] = []

    def start(gateway: str) -> Pebble:
        acme = start_pebble(gateway, tmp_path_factory.mktemp("pebble"))
        started.append(acme)
        return acme

    yield start
    for acme in started:
        acme.stop()
