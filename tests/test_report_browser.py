"""report.html in headless Chromium: it loads with no console errors and no failed requests
(offline: every request is a file:// one in the report's folder), shows the colour bar,
scale bars, disclaimer, version and crops, never the raw `<image>` token, and is screenshotted.

Needs Debian's chromium (/usr/bin/chromium; `launch/test.sh` installs it when apt-get is
there) and the `playwright` package (requirements-dev.txt); skips with the reason otherwise.
"""
import os

import pytest

from report_fixtures import build_report

CHROMIUM = os.environ.get("PATHREASONER_CHROMIUM", "/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
SCREENSHOT_COPY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs",
                               "report_screenshot.png")


@pytest.fixture(scope="module")
def browser():
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed "
                                                                  "(pip install -r requirements-dev.txt)")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        except Exception as e:  # a Chromium that cannot start here is an environment matter
            pytest.skip(f"Chromium at {CHROMIUM} does not start: {str(e).splitlines()[0]}")
        yield b
        b.close()


def save_docs_copy(shot) -> None:
    """The committed picture of the page (docs/): full colour (a 256-colour palette would band
    the colour bar it documents), opaque RGB, maximum PNG compression."""
    from PIL import Image

    os.makedirs(os.path.dirname(SCREENSHOT_COPY), exist_ok=True)
    tmp = SCREENSHOT_COPY + ".tmp.png"
    Image.open(shot).convert("RGB").save(tmp, optimize=True)
    os.replace(tmp, SCREENSHOT_COPY)


def open_report(browser, path):
    """→ (page, console errors, failed or non-file requests) after the page has loaded."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors, failed = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("requestfailed", lambda r: failed.append(f"{r.url}: {r.failure}"))
    page.on("request", lambda r: None if r.url.startswith(("file://", "data:")) else failed.append(r.url))
    page.goto("file://" + os.path.abspath(path), wait_until="load")
    return page, errors, failed


@pytest.mark.timeout(120)
def test_report_renders_offline_in_chromium(browser, tmp_path):
    from pathreasoner_jax import __version__

    path = build_report(str(tmp_path / "out"), str(tmp_path), from_slide=True)
    page, errors, failed = open_report(browser, path)
    assert errors == [] and failed == [], (errors, failed)
    # every image decoded (naturalWidth 0 = broken)
    broken = page.eval_on_selector_all("img", "els => els.filter(e => !e.complete || e.naturalWidth === 0)"
                                              ".map(e => e.getAttribute('src'))")
    assert broken == []
    text = page.inner_text("body")
    assert "<image>" not in text and "For research use only; not for clinical diagnosis." in text
    assert page.inner_text("footer .version") == __version__ and "2025-01-02T03:04:05+00:00" in text
    assert page.locator(".colorbar img").count() == 2 and "supports" in page.inner_text(".colorbar")
    assert page.locator("figure.crop img").count() == 3  # Adenocarcinoma's three supporting regions
    assert "no positive support for Necrosis" in text
    assert [h.strip() for h in page.locator("h2").all_inner_texts()].count("Reasoning") == 1
    # the scale bar on the thumbnail: 200 µm = 50 image px, drawn at 480/256 CSS px per image px
    bar = page.locator("figure").first.locator(".scalebar")
    assert bar.inner_text() == "200 µm"
    assert bar.bounding_box()["width"] == pytest.approx(50 * 480 / 256, abs=1.0)
    shot = tmp_path / "report.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    save_docs_copy(shot)
    page.close()


@pytest.mark.timeout(120)
def test_malformed_answer_and_unknown_scale_in_chromium(browser, tmp_path):
    path = build_report(str(tmp_path / "bad"), str(tmp_path), from_slide=False, mpp=None, embed=True,
                        completion="<observe>glands</observe><think>adenocarcinoma</think><|im_end|>")
    page, errors, failed = open_report(browser, path)
    assert errors == [] and failed == [], (errors, failed)
    warn = page.locator(".answer.warn")
    assert warn.count() == 1 and "No valid answer" in warn.inner_text()
    assert page.locator("p.answer").count() == 0  # no empty green box
    assert page.locator(".scalebar").count() == 0 and page.locator("#no-scale").count() == 1
    assert page.locator("figure.crop img").count() == 3  # crops of the thumbnail
    page.screenshot(path=str(tmp_path / "bad.png"), full_page=True)
    page.close()
