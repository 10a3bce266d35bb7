"""Debian's chromium, headless, driven by selenium through Debian's chromium-driver.

Both binaries come from apt (`make test` installs them when missing); selenium is pointed at
them explicitly, so Selenium Manager never looks for (or downloads) a browser or a driver.
"""

from __future__ import annotations

import contextlib
import os
import shutil

CHROMIUM_NAMES = ("chromium", "chromium-browser")
DRIVER_NAMES = ("chromedriver", "chromium-driver")


def _which(names: tuple[str, ...], package: str) -> str:
    for name in names:
        if path := shutil.which(name):
            return path
    raise RuntimeError(f"{names[0]} is not installed: `make test` installs it (apt-get install {package})")


@contextlib.contextmanager
def chromium(width: int = 1100, height: int = 860):
    """A headless chromium WebDriver; quits on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager: never download anything
    options = webdriver.ChromeOptions()
    options.binary_location = _which(CHROMIUM_NAMES, "chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     f"--window-size={width},{height}", "--force-device-scale-factor=1",
                     "--disable-extensions", "--no-first-run", "--lang=en-US"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(_which(DRIVER_NAMES, "chromium-driver")), options=options)
    driver.set_script_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
