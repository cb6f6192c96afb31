"""A real Label Studio (``make test-slow`` installs it in its own venv) on 127.0.0.1 with our
ML backend connected: a BrushLabels project made through its SDK, images uploaded, Label
Studio retrieves predictions from us (fetching the uploads with its token) and the masks it
stored, decoded by its own converter, equal our prediction of each image."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.serve.live_server import LiveServer, _free_port, wait_until_healthy
from tests.serve.ls_client import PYTHON
from unet_resnet import Segmenter
from unet_resnet.integrations.label_studio import LabelStudioSettings
from unet_resnet.serve import create_app

pytestmark = pytest.mark.slow
FLOW = Path(__file__).with_name("ls_live_flow.py")
TOKEN = "0123456789abcdef0123"


@pytest.fixture
def label_studio(tmp_path):
    server = PYTHON.with_name("label-studio")
    if not server.exists():
        pytest.skip("Label Studio is not installed; run make label-studio-server")
    port = _free_port()
    env = os.environ | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(tmp_path / "ls-data"),
        "ML_BLOCK_LOCAL_IP": "false",  # our backend is on 127.0.0.1 too
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
    }
    args = [str(server), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    args += ["--port", str(port), "--username", "test@example.com", "--password", "pw-123456"]
    args += ["--user-token", TOKEN, "--enable-legacy-api-token"]
    log = open(tmp_path / "ls.log", "w")  # noqa: SIM115
    process = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(
            f"{url}/health", process, 240, lambda: (tmp_path / "ls.log").read_text()[-3000:]
        )
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_real_label_studio_stores_our_masks(label_studio, checkpoint, demo_data, tmp_path):
    images = sorted((demo_data / "val" / "images").glob("*.png"))[:2]
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    settings = LabelStudioSettings(url=label_studio, api_key=TOKEN, model_version="live")
    with LiveServer(create_app(segmenter, label_studio_settings=settings)) as ours:
        out = tmp_path / "stored.json"
        subprocess.run(
            [str(PYTHON), str(FLOW), label_studio, TOKEN, f"{ours}/label-studio", str(out)]
            + [str(p) for p in images],
            check=True,
            timeout=600,
        )
    stored = json.loads(out.read_text())
    assert stored["backend_state"] == "CO"  # connected: our /setup accepted the project
    assert len(stored["tasks"]) == len(images)
    by_name = {p.name: p for p in images}
    for upload, masks in stored["tasks"].items():
        source = next(p for n, p in by_name.items() if upload.endswith("-" + n))
        image = np.asarray(Image.open(io.BytesIO(source.read_bytes())).convert("RGB"))
        labels = segmenter.predict(image)
        assert masks["_model_version"] == "live" and 0 < masks["_score"] <= 1
        present = {segmenter.classes.names[i] for i in np.unique(labels) if i}
        assert set(masks) - {"_score", "_model_version"} == present
        for name in present:
            index = segmenter.classes.names.index(name)
            np.testing.assert_array_equal(np.asarray(masks[name]), labels == index)
