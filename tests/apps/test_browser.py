"""The gaze viewer in a real browser: Playwright driving Debian's Chromium (``/usr/bin/chromium``), headless.

Playwright's own browser download is never used (it is not reachable here): the test launches the
system Chromium by path. With ``CI=1`` (set by ``.ci/run``, which installs Chromium) a missing
browser is a failure; elsewhere the test is skipped with a one-line reason.
"""

import importlib.util
import os
import re
import socket
from pathlib import Path

import pytest

if importlib.util.find_spec("gradio") is None:  # found, not imported: only the tests that launch the app pay for it
    pytest.skip("the viewer's tests need the test extra (gradio, playwright)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs the test extra (playwright)")

from dermogaze.apps.serve import Viewer, launch  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"]

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.filterwarnings("ignore:.*no_silent_downcasting:Warning",
                               "ignore:The copy keyword is deprecated:Warning"),
]


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.is_file():
        message = f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "1":
            pytest.fail(f"{message}: CI must run the browser test")
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture(scope="module")
def page_url(crafted_gaze_checkpoint, pipeline_cache):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = launch(Viewer(crafted_gaze_checkpoint, pipeline_cache, device="cpu"), port=port, prevent_thread_lock=True,
                 quiet=True)
    yield app.local_url
    app.close()


def test_browser_uploads_steps_and_switches_a_gaze_off(chromium, page_url, pipeline_data, tmp_path):
    image = sorted((pipeline_data["isic"] / "ISIC-2017_Test_v2_Data").rglob("ISIC_*.jpg"))[0]
    outside = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(chromium), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("request", lambda r: outside.append(r.url)
                    if not r.url.startswith((page_url.rstrip("/"), "data:", "blob:")) else None)
            page.goto(page_url)
            page.set_input_files("#dg-upload input[type=file]", str(image))

            probability = page.locator("#dg-probability")
            probability.wait_for(timeout=60_000)
            p_full = float(probability.inner_text())
            assert p_full > 0.6  # the crafted model (conftest): melanoma at its threshold 0.6
            assert "Decision: melanoma" in page.locator("#dg-diagnosis").inner_text()
            shown = page.locator("#dg-gazes .dg-panel:visible")  # the gaze on screen, its text and pictures
            assert shown.count() == 1 and shown.locator(".dg-step-text").inner_text().startswith("Gaze 1 of 2")
            first_text = shown.inner_text()

            requests = []
            page.on("request", lambda r: requests.append(r.url))
            number = page.locator("#dg-step input[type=number]")
            for t in (2, 1, 2):  # forth, back and forth again
                number.fill(str(t))
                number.press("Enter")
                page.wait_for_function(
                    "(t) => [...document.querySelectorAll('#dg-gazes .dg-panel')].filter(p => !p.hidden)"
                    ".map(p => p.innerText).join('|').startsWith(`Gaze ${t} of 2`)", arg=t, timeout=10_000)
                assert shown.count() == 1 and page.locator("#dg-path-view .dg-panel:visible").count() == 1
                assert page.locator("#dg-path-view .dg-panel:visible figcaption").inner_text().endswith(
                    f"gaze {t} ringed)")
            text_2 = shown.inner_text()
            assert "It names" in text_2 and text_2 != first_text
            assert shown.locator("img").count() == 2  # attention and mask (an upload has no ground truth)
            assert requests == [], f"a step change went to the server: {requests[:3]}"

            page.locator("#dg-keep label", has_text="gaze 1").click()  # switch gaze 1 off
            effect = page.locator("#dg-effect")
            page.wait_for_function(
                "() => document.querySelector('#dg-effect').innerText.includes('Without gaze 1')", timeout=30_000)
            text = effect.inner_text()
            delta = float(re.search(r"ΔP = ([+-]\d\.\d{3})", text).group(1))
            assert delta == pytest.approx(0.5 - p_full, abs=1.5e-3)  # without gaze 1 the crafted P is exactly 0.5
            assert "the decision changes" in text
            page.screenshot(path=str(tmp_path / "viewer.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "viewer.png").stat().st_size > 10_000
    assert outside == [], f"the page fetched from outside the server: {outside[:3]}"
