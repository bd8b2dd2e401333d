#!/usr/bin/env python
"""Open a saehealth report.html in headless Chromium and save a screenshot of it.

    python scripts/screenshot_report.py reports/demo/report.html docs/images/latent_browser.png [--latent 311] [--full]

Needs Debian's `chromium` and `chromium-driver` (apt-get install -y chromium chromium-driver) and
Selenium (the `dev` extra). The page is opened from a file:// URL with networking refused, as a reader
who opens the file offline would; `--latent` shows that latent's card first (default: the page's own
first pick). The browser test (tests/integration/test_report_html_browser.py) drives the same browser
through `chromium()`.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from pathlib import Path

# Flags for a root user in a container without a display, no first-run UI and no background traffic.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--hide-scrollbars",
)


def chromium_paths() -> tuple[str, str] | None:
    """(chromium binary, chromedriver) when both are installed, else None."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def chromium(width: int = 1280, height: int = 1000):
    """A Selenium WebDriver for headless Chromium with a fresh profile, performance and browser logs on
    (the test reads every network request and console message from them)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = chromium_paths()
    if paths is None:
        raise RuntimeError("chromium and chromedriver are not installed: apt-get install -y chromium chromium-driver")
    browser, driver_path = paths
    profile = tempfile.mkdtemp(prefix="saehealth-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(
    html: Path, png: Path, latent: int | None = None, width: int = 1280, height: int = 1100, full: bool = False
) -> Path:
    """Save a screenshot of `html` as `png`: the window scrolled to the latent browser, or the whole page."""
    from selenium.webdriver.common.by import By

    with chromium(width=width, height=height) as driver:
        driver.get(Path(html).resolve().as_uri())
        if latent is not None:
            search = driver.find_element(By.ID, "latent-search")
            search.clear()
            search.send_keys(str(latent))
            driver.find_element(By.ID, "latent-search-button").click()
        if full:
            page = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(width, min(int(page) + 100, 16000))
        else:
            driver.execute_script("document.getElementById('latents').scrollIntoView()")
        png.parent.mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(png))
    return png


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("html", type=Path, help="a report.html")
    parser.add_argument("png", type=Path, help="where to save the screenshot")
    parser.add_argument("--latent", type=int, help="show this latent's card")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--full", action="store_true", help="the whole page instead of the latent browser")
    args = parser.parse_args()
    print(save_screenshot(args.html, args.png, args.latent, args.width, args.height, args.full))


def save_screenshot(html: Path, png: Path, *args) -> Path:
    """`screenshot`; saved into a saehealth result folder, it goes through the folder's staged write, so that the
    folder's manifest lists the picture and the folder stays saehealth's own (a regenerated result replaces
    it: retake it then); anywhere else the file is simply written."""
    from saehealth.output import is_own_folder, read_manifest, staged

    folder = png.resolve().parent
    if not (folder.is_dir() and is_own_folder(folder, "result")):
        return screenshot(html, png, *args)
    kept = [entry for entry in read_manifest(folder).files if entry != png.name]
    with tempfile.TemporaryDirectory() as scratch:
        taken = screenshot(html, Path(scratch) / png.name, *args)
        with staged(folder, "result", keep=kept) as staging:
            shutil.copyfile(taken, staging / png.name)
    return png


if __name__ == "__main__":
    main()
