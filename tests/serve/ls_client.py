"""Label Studio's own SDK, run from its own venv (``make label-studio-client``; its pins clash
with ours): decodes brush RLE exactly as Label Studio's converter does."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = Path(os.environ.get("UNET_RESNET_LS_PYTHON", ROOT / ".venv-labelstudio/bin/python"))

_DECODE = """
import json, sys
import numpy as np
from label_studio_sdk.converter.brush import decode_rle
cases = json.load(open(sys.argv[1]))
out = []
for rle, height, width in cases:
    out.append(np.reshape(decode_rle(rle), [height, width, 4])[:, :, 3].tolist())
json.dump(out, open(sys.argv[2], "w"))
"""


def sdk_decode(cases: list[tuple[list[int], int, int]], tmp_path: Path) -> list[np.ndarray]:
    """``(rle, height, width)`` -> the alpha plane Label Studio's SDK decodes."""
    if not PYTHON.exists():
        pytest.skip(f"label-studio-sdk's venv is missing ({PYTHON}); run make label-studio-client")
    src, dst = tmp_path / "rle.json", tmp_path / "decoded.json"
    src.write_text(json.dumps(cases))
    subprocess.run([str(PYTHON), "-c", _DECODE, str(src), str(dst)], check=True, timeout=300)
    return [np.asarray(a, dtype=np.uint8) for a in json.loads(dst.read_text())]
