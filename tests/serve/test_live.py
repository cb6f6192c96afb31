"""A real server on 127.0.0.1: the bounded queue, and the web page in headless Chromium."""

from __future__ import annotations

import io
import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.serve.live_server import LiveServer
from unet_resnet import Segmenter
from unet_resnet.serve import create_app

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _png(seed=0, size=(48, 64)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(
        buffer, "PNG"
    )
    return buffer.getvalue()


def test_full_queue_answers_503_with_retry_after(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    original = seg.predict

    def slow_predict(image, **options):
        time.sleep(0.5)
        return original(image, **options)

    seg.predict = slow_predict
    app = create_app(seg, workers=1, queue_size=1)  # capacity 2
    with LiveServer(app) as url, ThreadPoolExecutor(6) as pool:

        def post(_):
            return httpx.post(f"{url}/predict", content=_png(), timeout=30)

        responses = list(pool.map(post, range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and set(codes) <= {200, 503}
        busy = [r for r in responses if r.status_code == 503]
        assert busy and busy[0].headers["retry-after"] == "1"
        assert "busy" in busy[0].json()["error"]
        # Capacity frees up again afterwards.
        assert httpx.post(f"{url}/predict", content=_png(), timeout=30).status_code == 200


@pytest.mark.skipif(
    CHROMIUM is None, reason="Debian's chromium is not installed (make test installs it)"
)
def test_web_page_in_headless_chromium(checkpoint, tmp_path):
    from playwright.sync_api import sync_playwright

    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    image = tmp_path / "upload.png"
    image.write_bytes(_png(size=(96, 128)))
    with LiveServer(create_app(seg)) as url, sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        page = browser.new_page()
        page.goto(url)
        page.wait_for_function(
            "document.getElementById('model-info').textContent.includes('classes')"
        )
        page.set_input_files("#file", str(image))
        page.wait_for_selector("body[data-state=done]", timeout=60_000)
        rows = page.locator("#legend tbody tr")
        assert rows.count() == 4
        assert "background" in rows.nth(0).inner_text()
        size = page.evaluate(
            "(m => [m.naturalWidth, m.naturalHeight])(document.getElementById('mask'))"
        )
        assert size == [128, 96]
        page.fill("#opacity", "20")
        page.dispatch_event("#opacity", "input")
        assert page.evaluate("document.getElementById('mask').style.opacity") == "0.2"
        shot = tmp_path / "page.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 5000
