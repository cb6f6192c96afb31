"""The HTTP service under load, on loopback only."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch


def bench_serve(*, requests: int = 40, size: int = 256) -> list[dict[str, Any]]:
    """A live server on 127.0.0.1 (2 inference threads, queue of 4): load under its capacity
    (no errors expected) and over it (503s expected, still no errors)."""
    import io
    import socket
    import threading

    import uvicorn
    from PIL import Image

    from benchmarks.loadtest import run_load
    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder
    from unet_resnet.serve import create_app

    torch.manual_seed(0)
    seg = Segmenter(UNetWithResnet50Encoder(4, encoder_weights=None), precision="auto")
    app = create_app(seg, workers=2, queue_size=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buffer, "PNG")
    url = f"http://127.0.0.1:{port}"
    try:
        run_load(url, buffer.getvalue(), requests=4, concurrency=2)  # warm-up
        rows = [
            {
                "load": "within capacity",
                **run_load(url, buffer.getvalue(), requests=requests, concurrency=4),
            },
            {
                "load": "over capacity",
                **run_load(url, buffer.getvalue(), requests=requests, concurrency=16),
            },
        ]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    return rows
