"""Headless Chromium for browser tests, and what it contacted.

Example::

    driver = headless_chromium(tmp_path, "MAP meet.test 10.1.2.3, MAP * ~NOTFOUND", insecure=True,
                               network_log=True)
    driver.get("https://meet.test/Planning")
    contacted(driver)        # {"https://meet.test/Planning": "10.1.2.3", ...}
"""

from __future__ import annotations

import json
import shutil

CHROMEDRIVER = "/usr/bin/chromedriver"


def headless_chromium(tmp_path, resolver_rules: str, *, insecure: bool = False, network_log: bool = False,
                      profile: str = "chromium-profile"):
    """A headless Chromium (its own profile `tmp_path/profile`) resolving names only by `resolver_rules`.

    `insecure`: accept the test fleet's self-signed certificates (pages, fetch and WebSocket alike).
    `network_log`: keep Chromium's performance log, read by `contacted()`.
    """
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    flags = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
             "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
             f"--user-data-dir={tmp_path / profile}", f"--host-resolver-rules={resolver_rules}"]
    if insecure:
        flags.append("--ignore-certificate-errors")
        options.accept_insecure_certs = True
    for flag in flags:
        options.add_argument(flag)
    if network_log:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def contacted(driver) -> dict[str, str]:
    """{url: remote address} of every request the browser sent since the last call (performance log:
    documents, scripts, fetch, WebSocket handshakes; address "" when no response reported one (WebSockets),
    "failed: <Chromium's error>" for a request that failed)."""
    seen: dict[str, str] = {}
    urls: dict[str, str] = {}  # request id -> url
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        method = message.get("method")
        if method == "Network.requestWillBeSent":
            urls[params["requestId"]] = params["request"]["url"]
            seen.setdefault(params["request"]["url"], "")
        elif method == "Network.loadingFailed" and params.get("requestId") in urls:
            seen[urls[params["requestId"]]] = f"failed: {params.get('errorText', '')}"
        elif method == "Network.responseReceived":
            seen[params["response"]["url"]] = params["response"].get("remoteIPAddress", "")
        elif method == "Network.webSocketCreated":
            seen.setdefault(params["url"], "")
    return seen
