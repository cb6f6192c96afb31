"""The HTTP API: formats, uploads, and bad input answered with clear 4xx errors."""

from __future__ import annotations

import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from unet_resnet import Segmenter
from unet_resnet.serve import create_app


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


GOOD = _png(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def client(checkpoint):
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)
    with TestClient(create_app(seg, max_upload_mb=1, max_pixels=200_000)) as c:
        yield c


def test_health_and_info(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/info").json()
    assert [c["name"] for c in info["classes"]] == ["background", "disk", "square", "triangle"]
    assert info["classes"][1]["color"] == [220, 20, 60]
    assert info["in_channels"] == 3 and info["model_config"]["encoder"] == "resnet18"
    assert info["version"]


def test_predict_png_multipart_and_raw(client):
    r = client.post("/predict", files={"file": ("x.png", GOOD, "image/png")})
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    mask = Image.open(io.BytesIO(r.content))
    assert mask.mode == "P" and mask.size == (64, 48) and np.asarray(mask).max() < 4
    raw = client.post(
        "/predict", content=GOOD, headers={"content-type": "application/octet-stream"}
    )
    assert raw.status_code == 200 and raw.content == r.content


def test_predict_json_and_overlay(client):
    r = client.post("/predict?format=json&mask=true", files={"file": ("x.png", GOOD)})
    body = r.json()
    assert (body["width"], body["height"]) == (64, 48)
    assert sum(c["pixels"] for c in body["classes"]) == 64 * 48
    assert abs(sum(c["fraction"] for c in body["classes"]) - 1) < 1e-6
    assert body["mask_png"]
    # the mask's quality estimate, as predict's report has it (expected mIoU, its drivers)
    assert 0 <= body["quality"]["quality"] <= 1
    assert body["quality"]["worst_class"] in {c["name"] for c in body["classes"]}
    png = client.post("/predict", files={"file": ("x.png", GOOD)})
    assert float(png.headers["x-unet-resnet-quality"]) == pytest.approx(
        body["quality"]["quality"], abs=1e-6
    )
    r = client.post(
        "/predict?format=overlay&tta=true&tile_size=32", files={"file": ("x.png", GOOD)}
    )
    assert r.status_code == 200
    assert Image.open(io.BytesIO(r.content)).size == (64, 48)


def _truncated() -> bytes:
    return GOOD[: len(GOOD) // 2]


def _bomb() -> bytes:
    # A tiny file that decodes to 1000 x 1000 pixels: over the 200k pixel limit.
    return _png(np.zeros((1000, 1000), np.uint8))


BAD = [
    ("not an image", lambda: b"hello world, definitely not pixels", 415, "not an image"),
    ("truncated", _truncated, 400, "Could not decode"),
    ("empty", lambda: b"", 400, "Empty upload"),
    ("bomb", _bomb, 413, "over the limit"),
    ("wrong channels", lambda: _png(np.zeros((32, 32, 4), np.uint8) + 9), 200, None),
    ("two channels", lambda: _png(np.zeros((32, 32), np.uint8)), 422, "3-channel"),
    ("too big upload", lambda: b"\x89PNG" + b"0" * 1_200_000, 413, "over 1"),
]


@pytest.mark.parametrize(("name", "make", "status", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_uploads_get_clear_json_errors(client, name, make, status, message):
    r = client.post("/predict", files={"file": ("upload", make())})
    assert r.status_code == status, r.text
    if message:
        assert message in r.json()["error"]


def test_bad_requests(client):
    assert client.post("/predict?format=gif", content=GOOD).status_code == 400
    r = client.post("/predict", files={"other": ("x.png", GOOD)})
    assert r.status_code == 400 and "field 'file'" in r.json()["error"]


def test_bad_requests_interleaved_with_good_ones(client):
    """Every good request succeeds while bad ones fail around it."""
    results = []
    for _ in range(3):
        for _, make, status, _ in BAD:
            r = client.post("/predict", files={"file": ("u", make())})
            assert r.status_code == status
            good = client.post("/predict?format=json", files={"file": ("g.png", GOOD)})
            results.append(good.status_code)
    assert results == [200] * (3 * len(BAD))
    assert client.get("/health").json()["in_flight"] == 0


def test_page_served_without_external_resources(client):
    html = client.get("/").text
    assert '<script src="/static/app.js"></script>' in html
    assert "http://" not in html and "https://" not in html
    js = client.get("/static/app.js")
    assert js.status_code == 200 and 'fetch("/predict' in js.text
    assert client.get("/static/../app.py").status_code == 404


def test_error_types_map_to_statuses_in_one_table():
    from unet_resnet.errors import (
        ImageReadError,
        ImageTooLargeError,
        InputShapeError,
        NotAnImageError,
        UnetResnetError,
    )
    from unet_resnet.serve.app import status_for

    # The message text plays no part: only the type decides.
    assert status_for(ImageTooLargeError("not an image")) == 413
    assert status_for(NotAnImageError("over the limit")) == 415
    assert status_for(ImageReadError("too large")) == 400
    assert status_for(InputShapeError("x")) == 422
    assert status_for(UnetResnetError("x")) == 400
