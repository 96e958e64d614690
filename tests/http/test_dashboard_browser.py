"""The dashboard in headless Chromium (Debian's ``chromium`` and ``chromium-driver``
through selenium): every member of a 3-node loopback mesh is listed, and a SIGKILLed node
goes suspect and dead on the open page without a reload. A screenshot is kept as a test
artifact (``$MESHGPU_ARTIFACTS`` or the test's temporary directory)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon.meshprocs import MeshProcess
from tests.http.headless_chromium import MISSING, headless_chromium, installed
from tests.http.test_tritonclient import start_http_mesh

pytestmark = [pytest.mark.integration, pytest.mark.slow]

if not installed():
    pytest.skip(MISSING, allow_module_level=True)
pytest.importorskip("selenium.webdriver")


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[list[tuple[MeshProcess, int]]]:
    nodes = start_http_mesh(tmp_path, "d")
    try:
        yield nodes
    finally:
        for process, _ in nodes:
            process.stop()


@pytest.fixture
def browser() -> Iterator[object]:
    driver = headless_chromium()
    try:
        yield driver
    finally:
        driver.quit()


def artifacts(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("MESHGPU_ARTIFACTS", tmp_path))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def test_the_page_lists_every_member_and_shows_a_killed_node_die_live(
    mesh: list[tuple[MeshProcess, int]], browser: object, tmp_path: Path
) -> None:
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser  # a selenium WebDriver
    driver.get(f"http://127.0.0.1:{mesh[0][1]}/")  # type: ignore[attr-defined]

    def states() -> dict[str, str]:
        # One script call: the rows are redrawn twice a second, an element handle goes stale.
        rows = driver.execute_script(  # type: ignore[attr-defined]
            "return Array.from(document.querySelectorAll('#members tbody tr'))"
            ".map(row => [row.dataset.node, row.dataset.state])"
        )
        return dict(rows)

    wait = WebDriverWait(driver, 60, poll_frequency=0.1)
    every_alive = {"d0": "alive", "d1": "alive", "d2": "alive"}
    wait.until(lambda _: states() == every_alive)
    link = driver.execute_script("return document.getElementById('link').textContent")  # type: ignore[attr-defined]
    assert link == "live"
    driver.execute_script("window.__sameDocument = true")  # type: ignore[attr-defined]
    # What the page showed at the kill: a loaded machine may poll next only once d2 is
    # already suspect.
    seen = [states()["d2"]]
    mesh[2][0].kill()

    def dead() -> bool:
        state = states().get("d2", "")
        if not seen or seen[-1] != state:
            seen.append(state)
        return state == "dead"

    wait.until(lambda _: dead())
    timeline = driver.execute_script(  # type: ignore[attr-defined]
        "return document.getElementById('timeline').textContent"
    )
    assert "d2 suspect" in timeline and "d2 dead" in timeline, timeline
    assert driver.execute_script("return window.__sameDocument === true")  # type: ignore[attr-defined]
    assert seen[0] == "alive" and seen[-1] == "dead"
    # The survivors are shown alive (waited for: on a loaded machine one may briefly
    # suspect the other while d2's death is gossiped, and refute it).
    wait.until(lambda _: states().get("d0") == "alive" and states().get("d1") == "alive")
    shot = artifacts(tmp_path) / "dashboard.png"
    assert driver.save_screenshot(str(shot))  # type: ignore[attr-defined]
    assert shot.stat().st_size > 10_000
