"""check-data: every problem reported at once, exit code non-zero when training would fail."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from tests.data.fixtures import write_gray, write_rgb
from unet_resnet.cli import main
from unet_resnet.data import make_demo_dataset
from unet_resnet.data.checks import check_dataset


def test_clean_demo_dataset_passes(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "demo", 4, 2, 64, n_test=1)
    report = check_dataset(root, progress=False)
    assert report.ok and not report.problems
    assert report.splits["train"].images == 4 and report.splits["val"].pairs == 2
    assert report.splits["train"].class_pixels.sum() == 4 * 64 * 64
    assert main(["check-data", str(root), "--quiet", "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "train: 4 images" in out and "pixels per class: background" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["ok"] and data["splits"]["val"]["images"] == 2


@pytest.fixture
def broken(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "broken"
    img = lambda: rng.integers(0, 256, (16, 16, 3))  # noqa: E731
    write_rgb(root / "train/images/good.png", img())
    write_gray(root / "train/masks/good.png", np.ones((16, 16), np.uint8))
    write_rgb(root / "train/images/no_mask.png", img())
    write_gray(root / "train/masks/no_image.png", np.zeros((16, 16), np.uint8))
    write_rgb(root / "train/images/small_mask.png", img())
    write_gray(root / "train/masks/small_mask.png", np.zeros((8, 16), np.uint8))
    write_rgb(root / "train/images/bad_values.png", img())
    values = np.zeros((16, 16), np.uint8)
    values[0, :3] = [5, 7, 255]  # 5 and 7 are not classes; 255 is ignore
    write_gray(root / "train/masks/bad_values.png", values)
    write_rgb(root / "train/images/truncated.png", img())
    data = (root / "train/images/truncated.png").read_bytes()
    (root / "train/images/truncated.png").write_bytes(data[: len(data) // 2])
    write_gray(root / "train/masks/truncated.png", np.zeros((16, 16), np.uint8))
    (root / "val/images").mkdir(parents=True)
    (root / "val/masks").mkdir(parents=True)
    return root


def test_every_problem_is_reported(broken, capsys):
    report = check_dataset(broken, num_classes=3, progress=False)
    assert not report.ok
    messages = "\n".join(str(p) for p in report.problems)
    assert "Image without mask: " in messages and "no_mask.png" in messages
    assert "Mask without image: " in messages and "no_image.png" in messages
    assert "Size mismatch" in messages and "small_mask.png" in messages
    assert "bad_values.png has values [5, 7]" in messages
    assert "truncated.png" in messages and "truncated" in messages
    assert "Split 'val' is empty" in messages
    assert len(report.errors) == 6

    assert main(["check-data", str(broken), "--num-classes", "3", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "Problems (6 errors)" in out


def test_missing_classes_is_an_error(tmp_path):
    rng = np.random.default_rng(0)
    write_rgb(tmp_path / "train/images/a.png", rng.integers(0, 256, (8, 8, 3)))
    write_gray(tmp_path / "train/masks/a.png", np.zeros((8, 8), np.uint8))
    report = check_dataset(tmp_path, progress=False)
    assert not report.ok and "--num-classes" in str(report.errors[0])


def test_mixed_channel_counts_are_an_error(tmp_path):
    rng = np.random.default_rng(0)
    write_rgb(tmp_path / "train/images/a.png", rng.integers(0, 256, (8, 8, 3)))
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(
        tmp_path / "train/images/b.png"
    )
    for n in "ab":
        write_gray(tmp_path / f"train/masks/{n}.png", np.zeros((8, 8), np.uint8))
    report = check_dataset(tmp_path, num_classes=2, progress=False)
    assert any("different channel counts" in str(p) for p in report.errors)


def test_make_demo_data_command(tmp_path, capsys):
    assert (
        main(
            [
                "make-demo-data",
                str(tmp_path / "d"),
                "--n-train",
                "3",
                "--n-val",
                "2",
                "--n-test",
                "1",
                "--size",
                "48",
            ]
        )
        == 0
    )
    assert len(list((tmp_path / "d/train/images").glob("*.png"))) == 3
    assert (tmp_path / "d/classes.json").is_file()
