"""The concept studio page in a real headless Chromium: generate, read a token's concepts,
steer one, compare; the keyboard path; the screenshot the README shows (written to
``$COCOMIX_SCREENSHOT`` when set)."""

import os
import shutil
from pathlib import Path

import pytest

from conftest import WEIGHTS, start_server, stop_server

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
BROWSER = next((p for p in (os.environ.get("COCOMIX_CHROMIUM"), shutil.which("chromium"),
                            shutil.which("chromium-browser"), shutil.which("google-chrome"))
                if p), None)
pytestmark = pytest.mark.skipif(BROWSER is None, reason="no Chromium on this machine "
                                "(apt-get install chromium, or set COCOMIX_CHROMIUM)")


@pytest.fixture(scope="module")
def page():
    url, proc = start_server("--model", WEIGHTS / "cocomix", "--concepts",
                             WEIGHTS / "concepts.json")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=BROWSER, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(url + "/")
        page.wait_for_selector("body[data-ready='1']")
        page.errors = errors
        yield page
        browser.close()
    stop_server(proc)


def test_generate_read_steer_compare(page, tmp_path):
    assert "cocomix" in page.inner_text("#model") and "2048 concepts" in page.inner_text("#model")
    page.fill("#prompt", "The whale swam")
    page.fill("#max-tokens", "30")
    page.click("#generate")
    page.wait_for_selector("body[data-generated='1']", timeout=120_000)
    chips = page.locator(".chip")
    assert chips.count() > 30
    assert page.locator(".chip.prompt").count() == 4  # "The", " whale", " sw", "am"
    chips.nth(5).hover()
    concepts = page.locator("#concepts .concept")
    assert concepts.count() == 8
    first = concepts.first.inner_text()
    assert "#" in first and float(first.split()[-2]) != 0
    page.locator("#concepts .steer").first.click()
    slider = page.locator("#steering input[type=range]")
    assert slider.count() == 1
    slider.fill("8")
    assert page.inner_text("#steering output") == "8.0"
    page.click("#generate-steered")
    page.wait_for_selector("body[data-compared]", timeout=120_000)
    plain, steered = page.inner_text("#plain"), page.inner_text("#steered")
    assert plain.startswith("The whale swam") and steered.startswith("The whale swam")
    assert plain != steered and page.get_attribute("body", "data-compared") == "different"
    page.fill("#search", "whale")
    page.wait_for_function("document.querySelectorAll('#results .result').length > 0")
    chips.nth(5).hover()
    shot = Path(os.environ.get("COCOMIX_SCREENSHOT") or tmp_path / "studio.png")
    page.screenshot(path=str(shot))
    assert shot.stat().st_size > 20_000
    assert page.errors == []


def test_keyboard_only(page):
    """Tab to a token, read its concepts, add one with Enter, change α with the arrow keys."""
    page.reload()
    page.wait_for_selector("body[data-ready='1']")
    page.fill("#prompt", "Call me")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_selector("body[data-generated='1']", timeout=120_000)
    page.focus(".chip >> nth=2")
    token = page.locator(".chip").nth(2).inner_text()
    assert page.inner_text("#concept-token") == token
    page.keyboard.press("Tab")  # onto the first concept's "steer" button, in reading order
    while not page.evaluate("document.activeElement.classList.contains('steer')"):
        page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    assert page.evaluate("document.activeElement.type") == "range"
    for _ in range(3):
        page.keyboard.press("ArrowRight")
    assert page.inner_text("#steering output") == "6.5"
    assert page.locator("#generate-steered").is_enabled()
