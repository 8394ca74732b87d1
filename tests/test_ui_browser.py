"""`trilemma ui` in a real headless browser (Playwright + the system's Chromium): type a prompt, click
Generate, see the image; switch to Sample and draw a grid; no console errors on the way."""

import shutil
import socket
from pathlib import Path

import pytest

pytest.importorskip("gradio", reason="the `ui` extra (gradio) is not installed")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")

CHROMIUM = next((p for p in ["/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")]
                 if p and Path(p).is_file()), None)
pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary (apt-get install chromium)"),
              pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),     # pandas 3 inside Gradio's plots
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    from helpers import small_shapes

    from trilemma.diffusion.schedule import ScheduleConfig
    from trilemma.t2i import train as t2i
    from trilemma.ui.app import launch
    from trilemma.ui.paths import ServedPaths

    runs = tmp_path_factory.mktemp("runs")
    with small_shapes(96, 32, 2, cache=tmp_path_factory.mktemp("cache")):
        t2i.train_t2i(runs / "t2i", data="shapes", steps=4, preset="tiny", batch_size=8,
                      schedule=ScheduleConfig(T=100), progress=False, device="cpu")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        demo, address = launch(ServedPaths.from_args([], str(runs)), port=port, device="cpu", block=False,
                               quiet=True)
        yield address
        demo.close()


def test_text_to_image_then_sample_in_a_browser(url):
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.get_by_role("tab", name="Text to image").click()
            page.locator("#t2i-prompt textarea").fill("a red circle left of a blue square")
            page.locator("#t2i-generate").click()
            page.locator("#t2i-grid img").wait_for(timeout=30_000)
            sync_api.expect(page.locator("#t2i-summary")).to_contain_text("NFE 100 per image")  # 50 steps × 2

            page.get_by_role("tab", name="Sample").click()
            page.locator("#sample-generate").click()
            page.locator("#sample-grid img").wait_for(timeout=30_000)
            sync_api.expect(page.locator("#sample-summary")).to_contain_text("16 images")
            assert page.locator("#sample-grid img").evaluate("img => img.naturalWidth") > 100
            assert errors == []
        finally:
            browser.close()
