"""Open a report in headless Chromium (selenium + the system chromedriver) and say how it loaded.

Used to check that a report renders offline from disk: console errors,
failed requests, images that did not decode, a screenshot and load timings.
Needs the ``dev`` extra (selenium) and the ``chromium``/``chromium-driver``
packages.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from screenxai.errors import ScreenxaiError

WINDOW = (1400, 2400)
DRIVER_NAMES = ("chromedriver", "chromium-driver")


@dataclass
class BrowserLoad:
    """What the browser saw when it loaded a page."""

    console_errors: list[str]
    failed_requests: list[str]
    images: list[dict]
    screenshot: bytes
    load_seconds: float
    dom_seconds: float
    section_screenshots: dict[str, bytes] = field(default_factory=dict)
    figure_data: list[dict] = field(default_factory=list)
    text: str = ""


def _driver():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    path = next((p for p in map(shutil.which, DRIVER_NAMES) if p), None)
    if path is None:
        raise ScreenxaiError("no chromedriver on PATH: install the chromium and chromium-driver packages")
    options = webdriver.ChromeOptions()
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    return webdriver.Chrome(service=Service(path), options=options)


def _failed_requests(performance_log: list[dict]) -> list[str]:
    """Requests the page made that failed or answered with an HTTP error, from Chrome's network events."""
    failed = []
    for entry in performance_log:
        message = json.loads(entry["message"])["message"]
        params = message.get("params", {})
        if message.get("method") == "Network.loadingFailed":
            failed.append(f"{params.get('requestId')}: {params.get('errorText')}")
        elif message.get("method") == "Network.responseReceived" and params["response"].get("status", 200) >= 400:
            failed.append(f"{params['response']['url']}: HTTP {params['response']['status']}")
    return failed


def load_report(html: Path, sections: tuple[str, ...] = ()) -> BrowserLoad:
    """Load ``html`` from ``file://``; screenshot the page and each element id in ``sections``."""
    from selenium.webdriver.common.by import By

    driver = _driver()
    try:
        start = time.perf_counter()
        driver.get(Path(html).resolve().as_uri())
        load_seconds = time.perf_counter() - start
        timing = driver.execute_script(
            "const t = performance.getEntriesByType('navigation')[0];"
            "return [t.domContentLoadedEventEnd, t.loadEventEnd];")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.src.slice(0, 40), complete: i.complete,"
            " naturalWidth: i.naturalWidth, id: i.parentElement.id}));")
        figure_data = driver.execute_script(
            "return Array.from(document.querySelectorAll('script.figure-data'))"
            ".map(s => ({figure: s.dataset.figure, data: JSON.parse(s.textContent)}));")
        shots = {name: driver.find_element(By.ID, name).screenshot_as_png for name in sections}
        return BrowserLoad(
            console_errors=[e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"],
            failed_requests=_failed_requests(driver.get_log("performance")), images=images,
            screenshot=driver.get_screenshot_as_png(), load_seconds=load_seconds,
            dom_seconds=max(timing) / 1000, section_screenshots=shots, figure_data=figure_data,
            text=driver.execute_script("return document.body.innerText;"))
    finally:
        driver.quit()
