"""Whole-image prediction (PNG/JPEG in, PNG out, overlay) stays within its stated memory
bound, and chunking does not change the result."""

from __future__ import annotations

import tracemalloc

import numpy as np
import torch
from PIL import Image

from unet_resnet import Segmenter
from unet_resnet.data import ClassInfo
from unet_resnet.data.demo import make_demo_sample
from unet_resnet.inference.files import predict_image_file


class CheapSegmenter:
    """Probabilities from pixel values, allocated with numpy (so tracemalloc sees them)."""

    classes = ClassInfo(["a", "b", "c", "d"])
    in_channels, tile_size, overlap = 3, 512, 0.25

    def image_probabilities(self, image):
        scores = np.stack([image[..., 0], image[..., 1], image[..., 2], 255 - image[..., 0]])
        probs = scores.astype(np.float32) / 255
        return torch.from_numpy(probs)


def _peak(tmp_path, h: int, w: int, **outputs) -> int:
    """Traced peak memory of predicting an ``h x w`` noise image in 1024-pixel chunks."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(tmp_path / "big.png")
    tracemalloc.start()
    predict_image_file(
        CheapSegmenter(), tmp_path / "big.png", tmp_path / "out.png", chunk_size=1024, **outputs
    )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return peak


def test_peak_memory_is_the_image_a_label_plane_and_a_chunk(tmp_path):
    h, w = 3000, 4000
    peak = _peak(tmp_path, h, w, overlay=tmp_path / "overlay.png")
    pixels = h * w
    # Stated bound: decoded image (3 B/px) + label plane (1) + overlay and its canvas (3 + 3)
    # + one chunk's probabilities; the old path held 4 classes x 4 B/px of probabilities and
    # float32 overlay copies (over 50 B/px).
    chunk = 4 * 4 * (1024 + 2 * 512) ** 2
    assert peak < 10 * pixels + 3 * chunk, f"{peak / pixels:.1f} bytes per pixel"
    labels = np.asarray(Image.open(tmp_path / "out.png"))
    assert labels.shape == (h, w)
    assert Image.open(tmp_path / "overlay.png").size[0] == w


def test_the_uncertainty_map_adds_one_byte_per_pixel(tmp_path):
    """Same bound as the labels' with the 8-bit uncertainty plane: no float map of the image."""
    h, w = 3000, 4000
    peak = _peak(tmp_path, h, w, uncertainty=tmp_path / "u.png")
    pixels = h * w
    chunk = 4 * 4 * (1024 + 2 * 512) ** 2
    # decoded image (3 B/px) + label plane (1) + uncertainty plane (1) + one chunk
    assert peak < 6 * pixels + 3 * chunk, f"{peak / pixels:.1f} bytes per pixel"
    unsure = np.asarray(Image.open(tmp_path / "u.png"))
    assert unsure.shape == (h, w) and unsure.dtype == np.uint8 and unsure.max() > 0


def test_chunking_does_not_change_the_prediction(checkpoint, tmp_path):
    # A scene like the training data (a demo sample, 256 px, cropped to 200x260's frame), so the
    # model is confident: on noise its classes nearly tie and tile positions flip them at will.
    image, _ = make_demo_sample(np.random.default_rng(1), 260)
    Image.fromarray(image[:200]).save(tmp_path / "i.png")
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64, overlap=16)
    results = []
    for chunk_size in (96, 4096):
        out = tmp_path / f"m{chunk_size}.png"
        proba = tmp_path / f"p{chunk_size}.npy"
        predict_image_file(segmenter, tmp_path / "i.png", out, probabilities=proba,
                           chunk_size=chunk_size)  # fmt: skip
        results.append((np.asarray(Image.open(out)), np.load(proba)))
    (labels_a, probs_a), (labels_b, probs_b) = results
    # Tiles start at each chunk's corner, so a pixel's tiles (and their context) differ
    # between chunkings; the margin keeps every pixel away from a chunk edge, so the results
    # agree up to those tile positions (as for streamed GeoTIFFs).
    mean_difference = np.abs(probs_a.astype(np.float32) - probs_b.astype(np.float32)).mean()
    assert mean_difference < 0.05
    assert (labels_a == labels_b).mean() > 0.95
    assert results[0][1].shape == (4, 200, 260) and results[0][1].dtype == np.float16
