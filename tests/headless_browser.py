"""Opening a report in headless Chromium (Debian's chromium + chromedriver) through selenium."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

CHROMIUM_FLAGS = (  # without these, Chromium waits on network it cannot reach
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1000",
)


@dataclass
class PageCheck:
    console_errors: list[str]
    charts: list[dict]  # id, rendered width/height, natural (decoded image) width/height
    sections: list[str]
    loaded_urls: list[str]


def browser_unavailable_reason() -> str | None:
    """Why the browser test cannot run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (scripts/test.sh installs it)"
    for binary in ("chromium", "chromedriver"):
        if shutil.which(binary) is None:
            return f"{binary} not found (Debian: apt-get install chromium chromium-driver)"
    return None


def open_page(page: Path, screenshot: Path) -> PageCheck:
    """Load `page`, measure every chart, collect console errors, save a full-page screenshot."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    # The test run preloads OpenBLAS (rasft_mlx.runtime.blas); Chromium's renderer fails to start with it.
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "OPENBLAS_CORETYPE")}
    service = Service(shutil.which("chromedriver"), env=env)
    driver = webdriver.Chrome(options=options, service=service)
    try:
        driver.set_page_load_timeout(60)
        driver.get(page.resolve().as_uri())
        driver.execute_script("return document.fonts ? document.fonts.ready : null")
        charts = driver.execute_script(
            """return Array.from(document.querySelectorAll('figure.chart')).map(f => {
                 const img = f.querySelector('img'); const box = img.getBoundingClientRect();
                 return {id: f.id, width: box.width, height: box.height,
                         natural_width: img.naturalWidth, natural_height: img.naturalHeight,
                         complete: img.complete};
               });"""
        )
        sections = driver.execute_script(
            "return Array.from(document.querySelectorAll('section')).map(s => s.id);"
        )
        loaded = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name);"
        )
        errors = [
            entry["message"]
            for entry in driver.get_log("browser")
            if entry.get("level") in ("SEVERE", "ERROR")
        ]
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 100, 16000))
        driver.save_screenshot(str(screenshot))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    return PageCheck(errors, charts, sections, loaded)
