"""The learning-curve benchmark's pieces: datasets read from wheels, the plain loop, a case."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
from PIL import Image

from benchmarks.quality import datasets
from benchmarks.quality.run import format_rows, run_case


def _fake_skimage_wheel(cache):
    """A wheel-shaped zip with three 512x512 'photographs' where scikit-image keeps them."""
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(cache / "scikit_image-0.26.0-cp311-none-any.whl", "w") as z:
        for k, name in enumerate(["brick", "grass", "gravel"]):
            buffer = io.BytesIO()
            photo = (rng.random((512, 512)) * 60 + 80 * k).astype(np.uint8)
            Image.fromarray(photo).save(buffer, "PNG")
            z.writestr(f"skimage/data/{name}.png", buffer.getvalue())


def test_textures_dataset_from_a_wheel_keeps_train_and_val_pixels_apart(tmp_path):
    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=4, n_val=2)
    classes = json.loads((root / "classes.json").read_text())
    assert classes["names"] == ["brick", "grass", "gravel"]
    assert len(list((root / "train" / "images").iterdir())) == 4
    mask = np.asarray(Image.open(root / "val" / "masks" / "val000.png"))
    image = np.asarray(Image.open(root / "val" / "images" / "val000.png"))
    assert mask.shape == image.shape == (128, 128) and set(np.unique(mask)) <= {0, 1, 2}
    # Each class's pixels come from its own photograph (brightness bands of the fakes).
    for k in np.unique(mask):
        values = image[mask == k]
        assert values.min() >= 80 * k and values.max() < 80 * k + 60


def test_one_case_runs_both_recipes_and_scores_them(tmp_path):
    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=8, n_val=2)
    row = run_case("textures", root, 1, tmp_path / "work", encoder="resnet18")
    for key in ("plain_miou", "ours_best_miou", "ours_last_miou"):
        assert 0 <= row[key] <= 1
    assert row["ours_augment"] == "light" and row["plain_seconds"] > 0
    assert "textures" in format_rows([row])
