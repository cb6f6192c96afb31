"""Multilabel data (--task multilabel): per-class mask folders and multi-band masks decode to
the planes written, 0/255 and 0/1 both read, bad values and missing masks are named, and
layouts with one class per pixel refuse the task."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch

from tests.data.fixtures import make_multilabel, write_gray
from unet_resnet.data import DataError
from unet_resnet.data.datasets import pad_collate
from unet_resnet.data.layouts import SplitOptions, check_layout, open_split
from unet_resnet.data.multilabel import MultiLabelFolder, decode_plane
from unet_resnet.data.transforms import build_train_transform

ML = SplitOptions(task="multilabel")


def _planes_written(root, split, k):
    """The planes as the fixture wrote them, read back independently of the dataset."""
    from PIL import Image

    folders = root / split / "masks"
    if (folders / "outer").is_dir():
        return np.stack(
            [np.asarray(Image.open(folders / n / f"img{k}.png")) // 255 for n in ("outer", "inner")]
        )
    return tifffile.imread(folders / f"img{k}.tif")


@pytest.mark.parametrize("layout", ["folders", "bands"])
def test_both_layouts_decode_to_the_planes_written(tmp_path, layout):
    root = make_multilabel(tmp_path / "d", np.random.default_rng(0), layout=layout)
    dataset = open_split(root, "train", "folder", ML)
    assert isinstance(dataset, MultiLabelFolder)
    assert dataset.classes.names == ["outer", "inner"]
    for k in range(len(dataset)):
        image, planes = dataset.load(k)
        assert planes.shape == (2, *image.shape[:2]) and planes.dtype == np.int64
        np.testing.assert_array_equal(planes, _planes_written(root, "train", k))
    overlap = (planes == 1).all(0)
    assert overlap.any() and ((planes[0] == 1) & ~overlap).any()  # the fixture overlaps


def test_class_folders_name_the_classes_without_classes_json(tmp_path):
    root = make_multilabel(tmp_path / "d", np.random.default_rng(1))
    (root / "classes.json").unlink()
    dataset = open_split(root, "train", "folder", ML)
    assert dataset.classes.names == ["inner", "outer"]  # sorted folder names
    _, planes = dataset.load(0)
    np.testing.assert_array_equal(planes, _planes_written(root, "train", 0)[::-1])


def test_a_missing_class_file_is_an_empty_plane_and_ignore_is_kept(tmp_path):
    root = make_multilabel(tmp_path / "d", np.random.default_rng(2))
    (root / "train" / "masks" / "inner" / "img0.png").unlink()
    plane = np.zeros((40, 48), np.uint8)
    plane[:5] = 1
    plane[5:8] = 255  # 0/1 masks: 255 is ignore_index
    write_gray(root / "train" / "masks" / "outer" / "img0.png", plane)
    _, planes = open_split(root, "train", "folder", ML).load(0)
    assert (planes[1] == 0).all()
    assert (planes[0, :5] == 1).all() and (planes[0, 5:8] == 255).all()
    assert (planes[0, 8:] == 0).all()


def test_decode_plane_rules():
    np.testing.assert_array_equal(decode_plane(np.array([[0, 255]]), "m", 255), [[0, 1]])
    np.testing.assert_array_equal(decode_plane(np.array([[0, 1, 255]]), "m", 255), [[0, 1, 255]])
    with pytest.raises(DataError, match=r"m\.png has values \[7\]"):
        decode_plane(np.array([[0, 7]]), "m.png", 255)


def test_check_data_names_each_problem(tmp_path):
    root = make_multilabel(tmp_path / "d", np.random.default_rng(3))
    masks = root / "train" / "masks"
    (masks / "outer" / "img1.png").unlink()
    (masks / "inner" / "img1.png").unlink()  # img1 now has no mask at all
    write_gray(masks / "inner" / "ghost.png", np.zeros((40, 48), np.uint8))
    write_gray(masks / "trees" / "img0.png", np.zeros((40, 48), np.uint8))
    write_gray(masks / "outer" / "img2.png", np.full((40, 48), 9, np.uint8))
    report = check_layout(root, "folder", ML, progress=False)
    text = "\n".join(map(str, report.problems))
    assert not report.ok
    assert "Image without masks" in text and "img1.png" in text
    assert "Mask without image" in text and "ghost.png" in text
    assert "trees" in text and "matches no class" in text
    assert "img2.png has values [9]" in text
    clean = make_multilabel(tmp_path / "clean", np.random.default_rng(4), layout="bands")
    good = check_layout(clean, "folder", ML, progress=False)
    assert good.ok, good.summary()
    assert (good.splits["train"].class_pixels > 0).all()


def test_bad_values_and_band_count_are_named(tmp_path):
    root = make_multilabel(tmp_path / "d", np.random.default_rng(5), layout="bands")
    tifffile.imwrite(
        root / "train" / "masks" / "img0.tif",
        np.zeros((3, 40, 48), np.uint8),
        photometric="minisblack",
    )
    with pytest.raises(DataError, match=r"img0\.tif has 3 band\(s\) for 2 classes"):
        open_split(root, "train", "folder", ML).load(0)


def test_layouts_with_one_class_per_pixel_refuse_the_task(tmp_path):
    with pytest.raises(DataError, match="'nifti' layout has one class per pixel.*folder, coco"):
        open_split(tmp_path, "train", "nifti", ML)


def test_transforms_and_collate_keep_planes_aligned(tmp_path):
    root = make_multilabel(tmp_path / "d", np.random.default_rng(6))
    dataset = open_split(root, "train", "folder", ML)
    torch.manual_seed(0)
    dataset.transform = build_train_transform("strong", size=56, ignore_index=255)
    batch = [dataset[k] for k in range(3)]
    for image, planes in batch:
        assert planes.shape == (2, 56, 56)
        # The image's red channel marks class 0: geometry moved image and planes together.
        labelled = planes[0] != 255
        red = image[0][labelled]
        on = planes[0][labelled] == 1
        assert red[on].mean() > red[~on].mean() + 0.3
    images, masks = pad_collate(batch, ignore_index=255)
    assert images.shape == (3, 3, 56, 56) and masks.shape == (3, 2, 56, 56)
