"""Headless Chromium through selenium (Debian's ``chromium`` and ``chromium-driver``): the
one browser set-up of the dashboard's browser test and ``bench/dashboard.py``."""

from __future__ import annotations

import shutil
from typing import Any

CHROMIUM = shutil.which("chromium")
DRIVER = shutil.which("chromedriver")
MISSING = (
    "headless Chromium is not installed (apt-get install chromium chromium-driver; "
    ".ci/run installs them)"
)
"""Why there is no browser, when :func:`installed` is false."""

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1400,1000",
)
"""No sandbox (CI runs as root), no GPU, no background traffic that would weigh on the
measured CPU, a window large enough for the whole dashboard."""


def installed() -> bool:
    """Whether Chromium and its driver are on the PATH."""
    return CHROMIUM is not None and DRIVER is not None


def headless_chromium() -> Any:
    """A new selenium ``WebDriver`` on headless Chromium; the caller quits it."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(str(DRIVER)), options=options)
