"""The service under hostile input: memory bounded by the limits, not by what a client sends;
only accepted formats decoded; slow clients cannot lock others out."""

from __future__ import annotations

import io
import socket
import threading
import time
import tracemalloc

import httpx
import numpy as np
import pytest
import tifffile
from fastapi.testclient import TestClient

from tests.serve.test_live import LiveServer, _png
from unet_resnet import Segmenter
from unet_resnet.serve import create_app


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)


@pytest.fixture(scope="module")
def client(segmenter):
    app = create_app(segmenter, max_upload_mb=1, max_pixels=200_000)
    with TestClient(app) as c:
        yield c


def test_chunked_upload_over_the_limit_is_cut_off_while_streaming(segmenter):
    """A 200 MB chunked upload (no Content-Length) is refused after about the limit, and the
    server never holds more than the limit of it."""
    app = create_app(segmenter, max_upload_mb=1)
    sent = {"bytes": 0}

    def body():
        chunk = b"\x89PNG" + b"0" * (1 << 20)
        for _ in range(200):
            sent["bytes"] += len(chunk)
            yield chunk

    tracemalloc.start()
    try:
        with LiveServer(app) as url:
            try:
                r = httpx.post(f"{url}/predict", content=body(), timeout=30)
                status = r.status_code
                assert "over 1" in r.json()["error"]
            except httpx.HTTPError:  # the server may close the connection mid-upload
                status = 413
            _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 413
    assert peak < 40 * 2**20, f"peak traced memory {peak / 2**20:.0f} MiB"


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_upload_limit_holds_for_raw_and_multipart_bodies(client, kind):
    big = b"\x89PNG" + b"0" * 1_200_000
    if kind == "raw":
        r = client.post("/predict", content=big, headers={"content-type": "image/png"})
    else:
        r = client.post("/predict", files={"file": ("x.png", big)})
    assert r.status_code == 413


def _tiff_bomb(shape, dtype) -> bytes:
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.zeros(shape, dtype), compression="zlib")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("shape", "dtype"),
    [((400, 400, 8), np.float64), ((300, 300, 6), np.float64), ((16, 300, 300), np.float32)],
)
def test_decoded_size_is_limited_before_decoding(client, shape, dtype):
    """Small compressed files whose decoded arrays are large: refused from the header."""
    data = _tiff_bomb(shape, dtype)
    assert len(data) < 100_000
    r = client.post("/predict", content=data)
    assert r.status_code == 413 and "MiB" in r.json()["error"]


@pytest.mark.parametrize(
    "payload",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",
        b"GIF89a\x01\x00\x01\x00\x00\x00\x00;",
        b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    ],
    ids=["eps", "gif", "svg"],
)
def test_only_accepted_formats_are_decoded(client, payload):
    r = client.post("/predict", content=payload)
    assert r.status_code == 415 and "accepted format" in r.json()["error"]


@pytest.mark.parametrize("alpha", ["nan", "inf", "-0.5", "2"])
def test_out_of_range_query_values_are_400(client, alpha):
    r = client.post(f"/predict?format=overlay&alpha={alpha}", content=_png())
    assert r.status_code == 400 and "alpha" in r.json()["error"]


def _slow_client(port: int, stop: threading.Event) -> None:
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 100000\r\n\r\n"
        )
        while not stop.is_set():
            try:
                s.sendall(b"0")
            except OSError:
                return
            time.sleep(0.2)


def test_slow_clients_do_not_take_slots_and_time_out(segmenter):
    app = create_app(segmenter, workers=1, queue_size=0, body_timeout_s=2.0)  # capacity 1
    server = LiveServer(app)
    with server as url:
        stop = threading.Event()
        slow = [threading.Thread(target=_slow_client, args=(server.port, stop)) for _ in range(4)]
        for t in slow:
            t.start()
        time.sleep(0.5)
        try:
            assert httpx.get(f"{url}/health").json()["in_flight"] == 0
            r = httpx.post(f"{url}/predict", content=_png(), timeout=30)
            assert r.status_code == 200  # four trickling uploads lock nobody out
        finally:
            stop.set()
            for t in slow:
                t.join(timeout=10)
        # A body that does not arrive in time gets 408.
        with socket.create_connection(("127.0.0.1", server.port)) as s:
            s.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n0"
            )
            s.settimeout(10)
            reply = s.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")
