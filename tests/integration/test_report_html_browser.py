"""report.html in a real browser: headless Chromium (Debian's chromium + chromium-driver, through Selenium)
opens the planted SAE's report from a file:// URL and clicks through it.

`.ci/run` installs the browser and sets SAEHEALTH_REQUIRE_BROWSER=1, so in CI this test runs or fails; on
a machine without chromium it is skipped.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.integration.conftest import DENSE_LATENT, TWIN_A, TWIN_B

try:
    from scripts.screenshot_report import chromium, chromium_paths
except ImportError:  # selenium missing
    chromium = chromium_paths = None


@pytest.fixture(scope="module")
def browser():
    if chromium is None or chromium_paths() is None:
        if os.environ.get("SAEHEALTH_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium, chromium-driver and selenium must be installed (see .ci/run)")
        pytest.skip("headless Chromium (apt-get install chromium chromium-driver) or selenium is not installed")
    with chromium() as driver:
        yield driver


def _requests(driver) -> list[str]:
    """URLs the page asked for since the last call (performance log: Network.requestWillBeSent)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def _card(driver):
    from selenium.webdriver.common.by import By

    return driver.find_element(By.ID, "latent-card")


def _search(driver, latent: int) -> None:
    from selenium.webdriver.common.by import By

    box = driver.find_element(By.ID, "latent-search")
    box.clear()
    box.send_keys(str(latent))
    driver.find_element(By.ID, "latent-search-button").click()


def test_report_opens_offline_and_the_latent_browser_works(latent_report, browser):
    from selenium.webdriver.common.by import By

    _, out = latent_report
    driver = browser
    driver.get("about:blank")
    _requests(driver)  # the browser's own start-up traffic is not the page's
    driver.get_log("browser")
    driver.get((out / "report.html").resolve().as_uri())

    # The health report: every headline metric in the verdict table, the overall line.
    metrics = {
        row.get_attribute("data-metric")
        for row in driver.find_elements(By.CSS_SELECTOR, "table.verdicts tr[data-metric]")
    }
    assert {"loss_recovered", "l0", "dead_fraction", "absorption_fraction"} <= metrics
    assert "metrics healthy" in driver.find_element(By.ID, "overall").text
    assert len(driver.find_elements(By.CSS_SELECTOR, "#plots ~ figure img, figure img")) >= 3

    # The latent browser: the groups, and a card already shown (the first dense latent).
    groups = [g.get_attribute("data-group") for g in driver.find_elements(By.CSS_SELECTOR, "details.group")]
    assert groups[:3] == ["dense", "dead", "duplicates"]
    assert _card(driver).get_attribute("data-latent") == str(DENSE_LATENT)

    # Clicking a near-duplicate latent shows its card with contexts and its twin as the closest decoder.
    driver.find_element(
        By.CSS_SELECTOR, f'details[data-group="duplicates"] .latent-link[data-latent="{TWIN_A}"]'
    ).click()
    card = _card(driver)
    assert f"Latent {TWIN_A}" in card.text and f"closest decoder {TWIN_B} cos 1.000" in card.text
    assert len(card.find_elements(By.CSS_SELECTOR, ".top-contexts .ctx")) == 20
    assert len(card.find_elements(By.CSS_SELECTOR, ".sample-contexts .ctx")) == 10
    focus = card.find_element(By.CSS_SELECTOR, ".top-contexts .ctx .focus")
    assert focus.get_attribute("title")  # each shaded token carries its activation on hover

    # Searching an id shows that latent's card, with its contexts.
    _search(driver, TWIN_B)
    card = _card(driver)
    assert card.get_attribute("data-latent") == str(TWIN_B) and f"Latent {TWIN_B}" in card.text
    assert card.find_elements(By.CSS_SELECTOR, ".top-contexts .ctx")
    assert "Promotes (logit lens)" in card.text
    _search(driver, 10**6)
    assert "There is no latent 1000000" in _card(driver).text

    # Nothing but the file itself and its inline images was requested; no script error was logged.
    requests = _requests(driver)
    assert requests and all(url.startswith(("file://", "data:")) for url in requests), requests
    errors = [entry for entry in driver.get_log("browser") if entry["level"] == "SEVERE"]
    assert errors == []
