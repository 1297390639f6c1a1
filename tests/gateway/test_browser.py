"""The web page in headless Chromium: draw a digit with real pointer events, type a query."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bench.stack import free_port
from services.gateway.app import create_app
from tests.gateway.conftest import Indexed, settings_for

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT_DIR = Path("/tmp")


@pytest.fixture(scope="module")
def browser_type() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        yield playwright.chromium


@pytest.fixture
def page_url(indexed: Indexed, encoder_target: str) -> Iterator[str]:
    """The gateway served by uvicorn on a loopback port, in a background thread."""
    port = free_port()
    app = create_app(settings_for(indexed, encoder_target, collection="digits"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def _launch(browser_type: object) -> object:
    return browser_type.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)  # type: ignore[attr-defined]


def test_drawing_a_digit_shows_result_images(browser_type: object, page_url: str) -> None:
    browser = _launch(browser_type)
    try:
        page = browser.new_page(viewport={"width": 1100, "height": 800})  # type: ignore[attr-defined]
        page.goto(page_url)
        page.wait_for_selector("#model-badge:not(.muted)")
        page.click("#tab-draw")
        box = page.locator("#sketch").bounding_box()
        assert box is not None
        # A "7": a top bar, then a diagonal down, drawn with real mouse (pointer) events.
        strokes = [
            [(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)],
        ]
        for stroke in strokes:
            x0, y0 = stroke[0]
            page.mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
            page.mouse.down()
            for x, y in stroke[1:]:
                page.mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
            page.mouse.up()
        # The canvas exports black strokes on white: corner white, a stroke pixel black.
        corner, ink = page.evaluate(
            """() => {
                const c = document.getElementById('sketch').getContext('2d');
                return [Array.from(c.getImageData(2, 2, 1, 1).data),
                        Array.from(c.getImageData(140, 56, 1, 1).data)];
            }"""
        )
        assert corner == [255, 255, 255, 255]
        assert ink[:3] == [0, 0, 0]
        # Lifting the pen searches by itself ("search as I draw").
        page.wait_for_function("document.getElementById('status').textContent.includes('results in')")
        page.wait_for_function("document.querySelectorAll('#grid .card img').length >= 5")
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#grid .card img')).every(i => i.complete && i.naturalWidth > 0)"
        )
        page.screenshot(path=str(SCREENSHOT_DIR / "clipsearch-gateway-sketch.png"), full_page=True)
        page.click("#clear-canvas")
        page.click("#sketch-submit")
        assert "Draw something first" in page.inner_text("#status")
        assert page.locator("#grid .card .label").first.inner_text().startswith("label ")
    finally:
        browser.close()  # type: ignore[attr-defined]


def test_typing_a_query_shows_results_on_a_phone(browser_type: object, page_url: str) -> None:
    browser = _launch(browser_type)
    try:
        page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True)  # type: ignore[attr-defined]
        page.goto(page_url)
        page.fill("#text-query", "a handwritten three")
        page.press("#text-query", "Enter")
        page.wait_for_function("document.querySelectorAll('#grid .card img').length >= 5")
        cards = page.locator("#grid .card")
        assert cards.count() == 20  # every indexed item (k=24 > 20 items)
        # Nothing overflows the phone's width.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.select_option("#k", "12")
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 12")
        page.wait_for_timeout(300)  # let the cards finish fading in
        page.screenshot(path=str(SCREENSHOT_DIR / "clipsearch-gateway-phone.png"), full_page=True)
        page.fill("#text-query", "")
        page.press("#text-query", "Enter")
        assert "Type something" in page.inner_text("#status")
    finally:
        browser.close()  # type: ignore[attr-defined]
