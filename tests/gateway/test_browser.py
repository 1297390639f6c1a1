"""The web page in headless Chromium against the real gateway and encoder on loopback: draw with real
pointer events, type a query, pick a collection, share a search by its URL, go back."""

from __future__ import annotations

import base64
import csv
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import numpy as np
import pytest

from clipsearch.encoder_client import EncoderClient
from clipsearch.media import MediaStore
from clipsearch.store import CAPTION_VECTOR, IMAGE_VECTOR, Point, open_store
from services.gateway.app import create_app
from services.gateway.search import MEDIA_KEY_FIELD
from services.gateway.settings import GatewaySettings
from tests.gateway.conftest import (
    Indexed,
    build_index,
    embed_in_thread,
    run_in_thread,
    serve_http,
    settings_for,
)

if TYPE_CHECKING:
    from playwright.sync_api import Browser, BrowserType, Page

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
# Concepts of the small emoji collection: things people draw, two of them close ("bell", "bell with slash").
EMOJI_NAMES = ("bell", "bell with slash", "cat face", "pencil", "hot beverage", "blossom")
EMOJI_STYLES = ("google", "twitter", "openmoji", "openmoji-line")
# What the collection records for its images' licences (the text the emoji indexer writes).
EMOJI_ATTRIBUTION = (
    "Emoji images: Noto Emoji by Google, Apache License 2.0 (https://github.com/googlefonts/noto-emoji); "
    "Twemoji by Twitter, Inc and other contributors, CC BY 4.0 "
    "(https://github.com/jdecked/twemoji, https://creativecommons.org/licenses/by/4.0/); "
    "OpenMoji, the open-source emoji and icon project, CC BY-SA 4.0 "
    "(https://openmoji.org, https://creativecommons.org/licenses/by-sa/4.0/)."
)
ORPHAN_MODEL = "retired-model"
# A "7": a top bar, then a diagonal down (fractions of the canvas).
SEVEN = [[(0.25, 0.2), (0.75, 0.2), (0.45, 0.85)]]
# A bell: the dome, the rim, the clapper.
BELL = [
    [(0.3, 0.7), (0.32, 0.35), (0.5, 0.2), (0.68, 0.35), (0.7, 0.7)],
    [(0.2, 0.72), (0.8, 0.72)],
    [(0.47, 0.82), (0.53, 0.82)],
]


@pytest.fixture(scope="module")
def browser_type() -> Iterator[BrowserType]:
    if not CHROMIUM.exists():
        pytest.skip(f"headless Chromium not found at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with sync_api.sync_playwright() as playwright:
        yield playwright.chromium


@contextmanager
def _served(settings: GatewaySettings) -> Iterator[str]:
    """The gateway served by uvicorn on a loopback port, in a background thread: its page's URL."""
    with serve_http(create_app(settings)) as base:
        yield f"{base}/"


@pytest.fixture
def page_url(indexed: Indexed, encoder_target: str) -> Iterator[str]:
    with _served(settings_for(indexed, encoder_target, collection="digits")) as url:
        yield url


@contextmanager
def _browser(browser_type: BrowserType) -> Iterator[Browser]:
    browser = browser_type.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    try:
        yield browser
    finally:
        browser.close()


def _draw(page: Page, strokes: list[list[tuple[float, float]]]) -> None:
    """Strokes drawn on the canvas with real mouse (pointer) events."""
    box = page.locator("#sketch").bounding_box()
    assert box is not None
    mouse = page.mouse
    for stroke in strokes:
        x0, y0 = stroke[0]
        mouse.move(box["x"] + x0 * box["width"], box["y"] + y0 * box["height"])
        mouse.down()
        for x, y in stroke[1:]:
            mouse.move(box["x"] + x * box["width"], box["y"] + y * box["height"], steps=12)
        mouse.up()


def _wait_for_images(page: Page, at_least: int) -> None:
    page.wait_for_function(f"document.querySelectorAll('#grid .card img').length >= {at_least}")
    page.wait_for_function(
        "Array.from(document.querySelectorAll('#grid .card img')).every(i => i.complete && i.naturalWidth > 0)"
    )


def _rendering(page: Page) -> set[str]:
    """The image-rendering every result image gets."""
    return set(
        page.evaluate(
            "Array.from(document.querySelectorAll('#grid .card img')).map(i => getComputedStyle(i).imageRendering)"
        )
    )


def _query(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def test_drawing_a_digit_shows_result_images(browser_type: BrowserType, page_url: str) -> None:
    with _browser(browser_type) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 800})
        page.goto(page_url)
        page.wait_for_selector("#model-badge:not(.muted)")
        # The tabs follow the keyboard pattern: an arrow key moves to the next one.
        page.focus("#tab-text")
        page.keyboard.press("ArrowRight")
        page.locator("#pane-draw").wait_for(state="visible")
        assert page.evaluate("document.activeElement.id") == "tab-draw"
        _draw(page, SEVEN)
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
        _wait_for_images(page, 5)
        # MNIST's 28x28 digits are shown as their pixels, with their labels.
        assert _rendering(page) == {"pixelated"}
        assert page.locator("#grid .card .label").first.inner_text().startswith("label ")
        # Without caption vectors, "you drew" names the digits of the top hits.
        drew = page.locator("#drew")
        drew.wait_for(state="visible")
        assert drew.inner_text().startswith("You drew: ")
        assert page.locator("#drew .name").first.inner_text() in [str(d) for d in range(10)]
        page.screenshot(path=str(SCREENSHOT_DIR / "clipsearch-gateway-sketch.png"), full_page=True)
        page.click("#clear-canvas")
        page.click("#sketch-submit")
        assert "Draw something first" in page.inner_text("#status")


def test_typing_a_query_shows_results_on_a_phone(browser_type: BrowserType, page_url: str) -> None:
    with _browser(browser_type) as browser:
        page = browser.new_page(viewport={"width": 390, "height": 844}, has_touch=True)
        page.goto(page_url)
        page.fill("#text-query", "a handwritten three")
        page.press("#text-query", "Enter")
        _wait_for_images(page, 5)
        cards = page.locator("#grid .card")
        assert cards.count() == 20  # every indexed item (k=24 > 20 items)
        # Nothing overflows the phone's width.
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        page.select_option("#k", "12")
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 12")
        assert _query(page) == {"collection": ["digits"], "q": ["a handwritten three"], "k": ["12"]}
        page.wait_for_timeout(300)  # let the cards finish fading in
        page.screenshot(path=str(SCREENSHOT_DIR / "clipsearch-gateway-phone.png"), full_page=True)
        page.fill("#text-query", "")
        page.press("#text-query", "Enter")
        assert "Type something" in page.inner_text("#status")


# --- an emoji collection beside the digits ---


@dataclass(frozen=True)
class EmojiItem:
    id: str
    name: str
    style: str
    group: str


def _emoji_rows(emoji_dir: Path) -> list[dict[str, str]]:
    with (emoji_dir / "emoji.csv").open(encoding="utf-8", newline="") as handle:
        rows = {row["label"]: row for row in csv.DictReader(handle)}
    return [rows[name] for name in EMOJI_NAMES]


async def _captions(target: str, texts: list[str]) -> np.ndarray:
    async with EncoderClient(target) as client:
        return await client.embed_texts(texts)


@pytest.fixture(scope="module")
def emoji_index(
    tmp_path_factory: pytest.TempPathFactory, encoder_target: str, emoji_data_dir: Path
) -> tuple[Indexed, list[EmojiItem]]:
    """One store with "digits" (the default), "emoji" (real emoji images in four styles, with
    caption vectors and the credits their licences ask for) and "orphan" (built by a model no
    encoder serves), all by the tiny random model."""
    root = tmp_path_factory.mktemp("browser-emoji")
    digits = build_index(root, encoder_target)
    build_index(
        root,
        encoder_target,
        collection="orphan",
        fingerprint="f" * 64,
        shifts=(0,),
        recorded_model=ORPHAN_MODEL,
    )
    media = MediaStore(root / "media")
    rows = _emoji_rows(emoji_data_dir)
    pngs, items, payloads = [], [], []
    for row in rows:
        for style in EMOJI_STYLES:
            png = (emoji_data_dir / "images" / style / f"{row['id']}.png").read_bytes()
            item = EmojiItem(str(uuid.uuid4()), row["label"], style, row["group"])
            pngs.append(png)
            items.append(item)
            payloads.append(
                {
                    "class_name": row["label"],
                    "id": row["id"],
                    "emoji": row["emoji"],
                    "style": style,
                    "group": row["group"],
                    "subgroup": row["subgroup"],
                    "tags": row["tags"].split("|") if row["tags"] else [],
                    MEDIA_KEY_FIELD: media.put(png),
                }
            )
    vectors, fingerprint, model_name = embed_in_thread(encoder_target, pngs)
    # The label and a few keywords (the tiny model reads 32 tokens at most).
    captions = run_in_thread(
        _captions(encoder_target, [", ".join([p["class_name"], *p["tags"][:3]]) for p in payloads])
    )
    store = open_store(None, root / "qdrant")
    try:
        version = store.create_version(
            "emoji",
            dim=vectors.shape[1],
            fingerprint=fingerprint,
            vector_names=[IMAGE_VECTOR, CAPTION_VECTOR],
            source="tests",
            extra={"model_name": model_name, "attribution": EMOJI_ATTRIBUTION},
        )
        store.upsert(
            version,
            [
                Point(id=item.id, vectors={IMAGE_VECTOR: image, CAPTION_VECTOR: caption}, payload=payload)
                for item, image, caption, payload in zip(items, vectors, captions, payloads, strict=True)
            ],
        )
        store.finish_version("emoji", version, keep=1)
    finally:
        store.close()
    return digits, items


@pytest.fixture
def emoji_page_url(emoji_index: tuple[Indexed, list[EmojiItem]], encoder_target: str) -> Iterator[str]:
    with _served(settings_for(emoji_index[0], encoder_target, collection="digits")) as url:
        yield url


def _drew_names(page: Page) -> list[str]:
    return page.locator("#drew .name").all_inner_texts()


def _sketch_hits(base_url: str, png: bytes) -> list[str]:
    """The ids a sketch search of the emoji collection answers, asked of the API directly."""
    reply = httpx.post(
        f"{base_url}api/v1/search/sketch",
        files={"file": ("s.png", png, "image/png")},
        data={"collection": "emoji", "k": "24"},
    )
    assert reply.status_code == 200, reply.text
    return [hit["id"] for hit in reply.json()["hits"]]


def _canvas_png(page: Page) -> bytes:
    url = page.evaluate("document.getElementById('sketch').toDataURL('image/png')")
    return base64.b64decode(url.split(",", 1)[1])


def test_emoji_collection_picked_drawn_named_credited_shared_and_back(
    browser_type: BrowserType, emoji_page_url: str, emoji_index: tuple[Indexed, list[EmojiItem]]
) -> None:
    names = {item.name for item in emoji_index[1]}
    with _browser(browser_type) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        sketch_requests: list[str] = []
        page.on("request", lambda r: sketch_requests.append(r.url) if "/search/sketch" in r.url else None)
        page.goto(emoji_page_url)
        page.wait_for_selector("#collection option[value='emoji']", state="attached")
        # The picker lists every collection, the default first selected, the orphan as unavailable.
        assert page.input_value("#collection") == "digits"
        options = dict(
            zip(
                page.locator("#collection option").evaluate_all("os => os.map(o => o.value)"),
                page.locator("#collection option").all_inner_texts(),
                strict=True,
            )
        )
        assert set(options) == {"digits", "emoji", "orphan"}
        assert "unavailable" in options["orphan"]
        assert "24 items" in options["emoji"]
        page.select_option("#collection", "orphan")
        problem = page.locator("#collection-problem")
        problem.wait_for(state="visible")
        assert ORPHAN_MODEL in problem.inner_text()
        assert _query(page) == {"collection": ["orphan"]}

        # Picking emoji: its credits, its filters, a text search with names on the results.
        page.select_option("#collection", "emoji")
        problem.wait_for(state="hidden")
        credits = page.locator("#credits")
        credits.wait_for(state="visible")
        assert credits.inner_text() == EMOJI_ATTRIBUTION.replace("https://", "")
        links = credits.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
        assert links == re.findall(r"https://[^,;)\s]+", EMOJI_ATTRIBUTION)
        assert page.locator("#filter-style option").count() == 1 + len(EMOJI_STYLES)
        assert page.locator("#filter-group option").count() >= 3
        page.fill("#text-query", "a bell")
        page.press("#text-query", "Enter")
        _wait_for_images(page, 20)
        assert _query(page) == {"collection": ["emoji"], "q": ["a bell"]}
        labels = page.locator("#grid .card .label").all_inner_texts()
        assert len(labels) == 24
        assert set(labels) == names
        # Emoji (64 and 72 px) are smoothed, not shown as squares.
        assert _rendering(page) == {"auto"}
        assert page.locator("#drew").is_hidden()

        # A drawing: emoji with names, "you drew" naming the first of them, the strokes in the URL.
        page.click("#tab-draw")
        page.uncheck("#auto-search")  # one search, when asked
        _draw(page, BELL)
        page.click("#sketch-submit")
        drew = page.locator("#drew")
        drew.wait_for(state="visible")
        _wait_for_images(page, 20)
        assert urlsplit(page.url).fragment.startswith("sketch=1")
        assert _query(page) == {"collection": ["emoji"]}
        assert len(sketch_requests) == 1
        # The page sent the canvas as drawn: the API answers the same hits for it.
        canvas = _canvas_png(page)
        ids = page.locator("#grid .card").evaluate_all("cards => cards.map(c => c.dataset.id)")
        assert ids == _sketch_hits(emoji_page_url, canvas)
        labels = page.locator("#grid .card .label").all_inner_texts()
        assert set(labels) <= names
        shown = _drew_names(page)
        assert shown == list(dict.fromkeys(labels))[:5]
        page.screenshot(path=str(SCREENSHOT_DIR / "clipsearch-gateway-emoji.png"), full_page=True)
        drawing_url = page.url

        # A style filter: only that style, in the URL, the same drawing.
        page.select_option("#filter-style", "openmoji-line")
        page.wait_for_function(
            "Array.from(document.querySelectorAll('#grid .card')).length === 6 && "
            "Array.from(document.querySelectorAll('#grid .card')).every(c => c.title.includes('openmoji-line'))"
        )
        assert _query(page) == {"collection": ["emoji"], "style": ["openmoji-line"]}
        assert urlsplit(page.url).fragment == urlsplit(drawing_url).fragment

        # Back: the drawing without the filter; back again: the text search, as it was.
        page.go_back()
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 24")
        assert page.url == drawing_url
        assert page.input_value("#filter-style") == ""
        page.go_back()
        page.wait_for_function("document.getElementById('status').textContent.includes('results in')")
        assert _query(page) == {"collection": ["emoji"], "q": ["a bell"]}
        assert page.locator("#pane-text").is_visible()
        assert page.input_value("#text-query") == "a bell"
        drew.wait_for(state="hidden")
        page.go_back()  # the emoji collection picked, nothing searched yet
        page.wait_for_function("document.querySelectorAll('#grid .card').length === 0")
        assert _query(page) == {"collection": ["emoji"]}
        page.go_back()
        page.wait_for_function("document.getElementById('collection').value === 'orphan'")
        problem.wait_for(state="visible")

        # The drawing's URL opened afresh: the same strokes redrawn, searched, named.
        shared = browser.new_page(viewport={"width": 1100, "height": 900})
        shared.goto(drawing_url)
        shared.locator("#drew").wait_for(state="visible")
        _wait_for_images(shared, 20)
        assert shared.input_value("#collection") == "emoji"
        assert _canvas_png(shared) == canvas
        assert _drew_names(shared) == shown
        # And a text search's URL.
        shared.goto(f"{emoji_page_url}?collection=emoji&q=pencil&style=google")
        shared.wait_for_function("document.querySelectorAll('#grid .card').length === 6")
        assert shared.input_value("#text-query") == "pencil"
        assert shared.input_value("#filter-style") == "google"
        assert set(
            shared.locator("#grid .card").evaluate_all("cs => cs.map(c => c.title.split(' · ')[1])")
        ) == {"google"}


def test_switching_collections_keeps_the_drawing_and_sizes_results_for_each(
    browser_type: BrowserType, emoji_page_url: str, emoji_index: tuple[Indexed, list[EmojiItem]]
) -> None:
    """Draw once, compare collections: MNIST's digits pixelated, emoji smooth with their names."""
    with _browser(browser_type) as browser:
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(f"{emoji_page_url}?collection=digits")
        page.wait_for_selector("#model-badge:not(.muted)")
        page.click("#tab-draw")
        _draw(page, SEVEN)
        _wait_for_images(page, 20)
        page.wait_for_function(
            "document.querySelector('#grid .card .label').textContent.startsWith('label ')"
        )
        assert _rendering(page) == {"pixelated"}
        assert page.locator("#credits").is_hidden()
        page.select_option("#collection", "emoji")
        page.wait_for_function("document.getElementById('status').textContent.includes('· emoji')")
        _wait_for_images(page, 20)
        assert _rendering(page) == {"auto"}
        assert set(page.locator("#grid .card .label").all_inner_texts()) <= {i.name for i in emoji_index[1]}
        assert page.locator("#credits").is_visible()
        assert _query(page) == {"collection": ["emoji"]}
        assert urlsplit(page.url).fragment.startswith("sketch=1")
        page.go_back()
        page.wait_for_function("document.getElementById('status').textContent.includes('· digits')")
        assert page.input_value("#collection") == "digits"
