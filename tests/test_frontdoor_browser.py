"""The landing page in headless Chromium: type a name, click "Lancer une réunion", land on the shard
the front door chose (shard names resolve to loopback through Chromium's --host-resolver-rules)."""

from __future__ import annotations

import re
import shutil

import pytest
from standins.shard_occupancy import FrontdoorUnderTest, OccupancyStandin, ShardsNginx
from test_frontdoor_routing import TOKEN, make_spec

from ensemble.frontdoor.rooms import room_key, split_bounds, split_choice

CHROMEDRIVER = "/usr/bin/chromedriver"
pytestmark = pytest.mark.needs_tool("chromium", CHROMEDRIVER, "nginx")


@pytest.fixture()
def browser_fleet(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    spec = make_spec()
    standin = OccupancyStandin().start()
    shards = ShardsNginx(tmp_path / "shards", spec.shard_names(), standin.port, TOKEN).start()
    door = FrontdoorUnderTest(tmp_path / "door", spec, shards, TOKEN).start()
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                 "--disable-features=HttpsUpgrades,HttpsFirstBalancedModeAutoEnable",
                 f"--user-data-dir={tmp_path / 'chromium-profile'}",
                 f"--host-resolver-rules=MAP *.{spec.fleet.domain} 127.0.0.1, MAP {spec.fleet.domain} 127.0.0.1"):
        options.add_argument(flag)
    driver = None
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        driver.set_page_load_timeout(30)
        yield spec, standin, door, driver
    finally:
        if driver:
            driver.quit()
        door.stop()
        shards.stop()
        standin.stop()


def start_meeting(driver, url: str, typed: str, button_text: str) -> str:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url)
    field = driver.find_element(By.ID, "room")
    assert driver.find_element(By.CSS_SELECTOR, "label[for=room]").text  # labelled for screen readers
    field.clear()
    field.send_keys(typed)
    button = driver.find_element(By.ID, "go")
    assert button.text == button_text
    # only our own origin was contacted by the landing page
    resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(r.startswith(url.split("/?")[0].rstrip("/")) for r in resources), resources
    button.click()
    WebDriverWait(driver, 20).until(ec.title_contains("shard="))
    return driver.current_url


def test_type_a_name_click_and_land_on_the_chosen_shard(browser_fleet):
    spec, standin, door, driver = browser_fleet
    names = spec.shard_names()
    standin.set_rooms(names[0], {f"r{i}": 1 for i in range(40)})
    result = door.refresh()
    home = f"http://{spec.fleet.domain}:{door.port}/"
    landed = start_meeting(driver, home, "Réunion d'équipe", "Lancer une réunion")
    expected = split_choice(room_key("Reunion-d-equipe"), split_bounds(result.plan.split))
    assert landed == f"http://{expected}:{door.shard_hosts.port}/Reunion-d-equipe"
    assert f"shard={expected}" in driver.title
    # empty: a random readable name, in English on the English page
    landed = start_meeting(driver, home + "?lang=en", "", "Start a meeting")
    match = re.fullmatch(rf"http://([a-z0-9.-]+):{door.shard_hosts.port}/([A-Za-z]+[0-9]+)", landed)
    assert match and match.group(1) in names, landed
    assert match.group(1) == split_choice(room_key(match.group(2)), split_bounds(result.plan.split))
