"""Datasets: folder layout and mask formats, public layouts, raster windows, collate, stats."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from tests.data.fixtures import (
    make_cityscapes,
    make_geotiff,
    make_pet,
    make_voc,
    write_gray,
    write_rgb,
)
from unet_resnet.data import (
    Cityscapes,
    ClassInfo,
    DataError,
    OxfordIIITPet,
    RasterWindowDataset,
    SegmentationFolder,
    VOCSegmentation,
    channel_stats,
    make_demo_dataset,
    pad_collate,
)


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), 6, 3, 64, seed=1, n_test=2)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_folder_dataset_on_demo(demo_root):
    ds = SegmentationFolder(demo_root, "train")
    assert len(ds) == 6 and ds.classes.names == ["background", "disk", "square", "triangle"]
    image, mask = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1
    assert mask.shape == (64, 64) and mask.dtype == torch.int64
    assert set(mask.unique().tolist()) <= {0, 1, 2, 3}
    stored = np.asarray(Image.open(demo_root / "train" / "masks" / "0000.png"))
    np.testing.assert_array_equal(mask.numpy(), stored)


def test_demo_dataset_is_deterministic_and_has_every_class(tmp_path):
    a = make_demo_dataset(tmp_path / "a", 4, 1, 64, seed=3)
    b = make_demo_dataset(tmp_path / "b", 4, 1, 64, seed=3)
    for name in ["train/images/0001.png", "train/masks/0003.png"]:
        assert (a / name).read_bytes() == (b / name).read_bytes()
    classes = json.loads((a / "classes.json").read_text())
    assert classes["names"] == ["background", "disk", "square", "triangle"]
    assert len(classes["colors"]) == 4
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((a / "train/masks").glob("*.png"))])
    assert set(np.unique(masks)) == {0, 1, 2, 3}


def test_demo_dataset_is_not_solvable_by_a_threshold(tmp_path):
    """No single channel threshold separates foreground shapes from background well."""
    root = make_demo_dataset(tmp_path, 12, 0, 64, seed=0)
    images = np.stack(
        [np.asarray(Image.open(p)) for p in sorted((root / "train/images").glob("*"))]
    )
    masks = np.stack([np.asarray(Image.open(p)) for p in sorted((root / "train/masks").glob("*"))])
    fg = masks > 0
    best = 0.0
    for c in range(3):
        values = images[..., c]
        for t in range(0, 256, 8):
            above = values > t
            balanced = 0.5 * (above[fg].mean() + (~above[~fg]).mean())
            best = max(best, balanced, 1 - balanced)
    assert best < 0.7


def test_rgb_colour_masks(tmp_path, rng):
    classes = ClassInfo(["bg", "road", "car"], [(0, 0, 0), (128, 64, 128), (0, 0, 142)])
    classes.save(tmp_path / "classes.json")
    index = rng.integers(0, 3, (20, 24))
    colour = np.array(classes.colors, dtype=np.uint8)[index]
    write_rgb(tmp_path / "train/images/x.png", rng.integers(0, 256, (20, 24, 3)))
    write_rgb(tmp_path / "train/masks/x.png", colour)
    _, mask = SegmentationFolder(tmp_path, "train")[0]
    np.testing.assert_array_equal(mask.numpy(), index)

    colour[0, 0] = (1, 2, 3)
    write_rgb(tmp_path / "train/masks/x.png", colour)
    with pytest.raises(DataError, match=r"x\.png has colours that match no class: \[\(1, 2, 3\)\]"):
        SegmentationFolder(tmp_path, "train")[0]


def test_binary_0_255_masks_with_two_classes(tmp_path, rng):
    binary = (rng.random((16, 16)) > 0.5).astype(np.uint8) * 255
    write_rgb(tmp_path / "train/images/a.png", rng.integers(0, 256, (16, 16, 3)))
    write_gray(tmp_path / "train/masks/a.png", binary)
    _, mask = SegmentationFolder(tmp_path, "train", num_classes=2)[0]
    np.testing.assert_array_equal(mask.numpy(), binary // 255)
    # With a 1 present, 255 is the ignore label, not foreground.
    binary[0, 0] = 1
    write_gray(tmp_path / "train/masks/a.png", binary)
    _, mask = SegmentationFolder(tmp_path, "train", num_classes=2)[0]
    assert mask[0, 0] == 1 and (mask == 255).sum() == (binary == 255).sum()


def test_grayscale_16bit_images(tmp_path, rng):
    for i in range(2):
        write_gray(
            tmp_path / f"train/images/{i}.png", rng.integers(0, 65536, (16, 20), dtype=np.uint16)
        )
        write_gray(tmp_path / f"train/masks/{i}.png", rng.integers(0, 2, (16, 20), dtype=np.uint8))
    ds = SegmentationFolder(tmp_path, "train", num_classes=2)
    image, _ = ds[1]
    assert image.shape == (1, 16, 20)
    mean, std = channel_stats(ds)
    pixels = np.concatenate(
        [np.asarray(Image.open(tmp_path / f"train/images/{i}.png")).ravel() for i in range(2)]
    )
    np.testing.assert_allclose(mean, [pixels.mean() / 65535], rtol=1e-5)
    np.testing.assert_allclose(std, [pixels.std() / 65535], rtol=1e-4)


def test_folder_errors_name_the_problem(tmp_path, rng):
    with pytest.raises(DataError, match="Expected the layout"):
        SegmentationFolder(tmp_path, "train", num_classes=2)
    write_rgb(tmp_path / "train/images/a.png", rng.integers(0, 256, (16, 16, 3)))
    with pytest.raises(DataError, match=r"have no mask.*a\.png"):
        SegmentationFolder(tmp_path, "train", num_classes=2)
    write_gray(tmp_path / "train/masks/a.png", np.zeros((8, 16), np.uint8))
    with pytest.raises(
        DataError, match=r"Size mismatch: image .*a\.png is 16x16 but mask .*a\.png is 16x8"
    ):
        SegmentationFolder(tmp_path, "train", num_classes=2)[0]
    with pytest.raises(DataError, match="--num-classes"):
        SegmentationFolder(tmp_path, "train")


def test_corrupt_file_in_worker_names_the_file(tmp_path, rng):
    write_rgb(tmp_path / "train/images/a.png", rng.integers(0, 256, (16, 16, 3)))
    write_gray(tmp_path / "train/masks/a.png", np.zeros((16, 16), np.uint8))
    (tmp_path / "train/images/b.png").write_bytes(b"\x89PNG broken")
    write_gray(tmp_path / "train/masks/b.png", np.zeros((16, 16), np.uint8))
    loader = DataLoader(
        SegmentationFolder(tmp_path, "train", num_classes=2), batch_size=2, num_workers=1
    )
    with pytest.raises(Exception, match=r"b\.png") as info:
        next(iter(loader))
    assert isinstance(info.value, DataError | OSError)


def test_voc(tmp_path, rng):
    root = make_voc(tmp_path, rng)
    train, val = VOCSegmentation(root, "train"), VOCSegmentation(root, "val")
    assert len(train) == 2 and len(val) == 1 and train.classes.num_classes == 21
    _, mask = train[0]
    assert (mask[0] == 255).all() and mask[1:].max() < 21


def test_oxford_pet_trimaps(tmp_path, rng):
    root = make_pet(tmp_path, rng)
    ds = OxfordIIITPet(root, "train")
    assert len(ds) == 2 and len(OxfordIIITPet(root, "test")) == 1
    trimap = np.asarray(Image.open(root / "annotations/trimaps/Abyssinian_1.png"))
    _, mask = ds[0]
    expected = np.select([trimap == 1, trimap == 2], [1, 0], 255)
    np.testing.assert_array_equal(mask.numpy(), expected)
    _, mask3 = OxfordIIITPet(root, "train", border="class")[0]
    assert (mask3.numpy()[trimap == 3] == 2).all()


def test_cityscapes_label_ids_to_train_ids(tmp_path, rng):
    root = make_cityscapes(tmp_path, rng)
    ds = Cityscapes(root, "train")
    assert len(ds) == 1 and ds.classes.num_classes == 19
    label_ids = np.asarray(Image.open(next((root / "gtFine/train").rglob("*labelIds.png"))))
    _, mask = ds[0]
    mask = mask.numpy()
    assert (mask[label_ids == 7] == 0).all()  # road
    assert (mask[label_ids == 26] == 13).all()  # car
    assert (mask[label_ids == 33] == 18).all()  # bicycle
    assert (mask[np.isin(label_ids, [0, 1, 4, 6, 9, 10, 14, 15, 16, 29, 30])] == 255).all()
    assert len(Cityscapes(root, "val")) == 1


def test_raster_windows_grid_and_random(tmp_path, rng):
    image = rng.integers(1, 10000, (4, 70, 90), dtype=np.uint16)
    labels = rng.integers(0, 3, (1, 70, 90), dtype=np.uint8)
    image[:, :5, :5] = 0  # nodata corner
    scene = make_geotiff(tmp_path / "scene.tif", image, nodata=0)
    label = make_geotiff(tmp_path / "labels.tif", labels)
    classes = ClassInfo.generic(3)

    grid = RasterWindowDataset([(scene, label)], window=32, mode="grid", classes=classes)
    assert len(grid) == 3 * 3  # starts 0, 32, 38 down and 0, 32, 58 across
    for k in range(len(grid)):
        _, top, left = grid.window_at(k)
        img, mask = grid[k]
        expected = image[:, top : top + 32, left : left + 32] / 65535
        np.testing.assert_allclose(img.numpy(), expected, rtol=1e-6)
        expected_mask = labels[0, top : top + 32, left : left + 32].astype(np.int64)
        nodata = (image[:, top : top + 32, left : left + 32] == 0).all(0)
        expected_mask[nodata] = 255
        np.testing.assert_array_equal(mask.numpy(), expected_mask)

    random = RasterWindowDataset(
        [(scene, label)], window=(24, 40), mode="random", samples_per_epoch=7, classes=classes
    )
    assert len(random) == 7
    loader = DataLoader(random, batch_size=7, num_workers=2)
    images, masks = next(iter(loader))
    assert images.shape == (7, 4, 24, 40) and masks.shape == (7, 24, 40)


def test_raster_window_beyond_small_scene_is_padded_as_ignore(tmp_path, rng):
    scene = make_geotiff(tmp_path / "s.tif", rng.integers(1, 255, (3, 20, 25), dtype=np.uint8))
    label = make_geotiff(tmp_path / "l.tif", np.ones((1, 20, 25), dtype=np.uint8))
    ds = RasterWindowDataset([(scene, label)], window=32, mode="grid", classes=ClassInfo.generic(2))
    img, mask = ds[0]
    assert img.shape == (3, 32, 32)
    assert (mask[:20, :25] == 1).all() and (mask[20:] == 255).all() and (mask[:, 25:] == 255).all()


def test_raster_label_size_mismatch(tmp_path, rng):
    scene = make_geotiff(tmp_path / "s.tif", rng.integers(1, 255, (3, 20, 25), dtype=np.uint8))
    label = make_geotiff(tmp_path / "l.tif", np.ones((1, 21, 25), dtype=np.uint8))
    with pytest.raises(DataError, match=r"l\.tif is 25x21 but scene .*s\.tif is 25x20"):
        RasterWindowDataset([(scene, label)], window=16, classes=ClassInfo.generic(2))


def test_pad_collate_pads_masks_with_ignore():
    batch = [
        (torch.ones(3, 10, 12), torch.zeros(10, 12, dtype=torch.int64)),
        (torch.ones(3, 14, 8), torch.ones(14, 8, dtype=torch.int64)),
    ]
    images, masks = pad_collate(batch, ignore_index=7)
    assert images.shape == (2, 3, 14, 12) and masks.shape == (2, 14, 12)
    assert (images[0, :, 10:] == 0).all() and (masks[0, 10:] == 7).all()
    assert (masks[1, :, 8:] == 7).all() and (masks[1, :, :8] == 1).all()
