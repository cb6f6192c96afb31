"""A real `unet-resnet serve` process under oversized uploads: its resident memory stays
bounded by the limits, not by what clients send (Linux: /proc/PID/status)."""

from __future__ import annotations

import io
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import tifffile

from tests.serve.live_server import wait_until_healthy

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")


def _status(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(field)


def test_server_rss_does_not_grow_with_uploads(checkpoint, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "unet_resnet.cli", "serve", "--checkpoint", str(checkpoint),
            "--host", "127.0.0.1", "--port", str(port), "--max-upload-mb", "2",
            "--max-pixels", "1000000", "--precision", "fp32"]  # fmt: skip
    server = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(
            f"{url}/health", server, 120, lambda: server.stderr.read().decode()[-2000:]
        )
        before = _status(server.pid, "VmHWM")

        def flood(_):
            def body():
                for _ in range(150):  # 150 MiB, chunked: no Content-Length to refuse early
                    yield b"\x89PNG" + b"0" * (1 << 20)

            try:
                return httpx.post(f"{url}/predict", content=body(), timeout=60).status_code
            except httpx.HTTPError:  # the server may close the connection mid-upload
                return 413

        with ThreadPoolExecutor(4) as pool:
            statuses = list(pool.map(flood, range(8)))  # 1.2 GB sent in all
        # A decompression bomb: a small deflated TIFF whose header declares 900 x 900 pixels of
        # 8 float64 samples (52 MB decoded, over 16 bytes x the 1 M pixel limit).
        bomb = io.BytesIO()
        tifffile.imwrite(bomb, np.zeros((900, 900, 8)), compression="zlib")
        assert len(bomb.getvalue()) < 2 * 2**20
        r = httpx.post(f"{url}/predict", content=bomb.getvalue(), timeout=60)
        statuses.append(r.status_code)
        assert r.status_code == 413 and "would decode to" in r.text
        after = _status(server.pid, "VmHWM")
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert set(statuses) <= {413, 503}
    grown = after - before
    # 4 concurrent bodies of at most the 2 MB limit each, plus buffers: far below what was sent.
    assert grown < 64 * 2**20, f"peak RSS grew by {grown / 2**20:.0f} MiB"
