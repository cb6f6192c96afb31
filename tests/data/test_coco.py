"""COCO annotations: both export layouts, polygons, RLE (compressed and not), crowd regions,
the overlap rule, check-data's findings, and a training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from unet_resnet.cli import main
from unet_resnet.data.layouts import SplitOptions, check_layout, open_split

mask_utils = pytest.importorskip("pycocotools.mask")

H, W = 32, 40


def _rect(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE written by hand: run lengths in column-major order, zeros first."""
    flat = mask.T.reshape(-1).astype(np.uint8)
    counts, value, run = [], 0, 0
    for pixel in flat:
        if pixel == value:
            run += 1
        else:
            counts.append(run)
            value, run = pixel, 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _write_split(folder, annotation_file, *, with_problems: bool = False):
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    expected = {}
    images, annotations = [], []
    disk = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    disk[(yy - 16) ** 2 + (xx - 20) ** 2 <= 36] = 1
    band = np.zeros((H, W), np.uint8)
    band[20:26, 5:35] = 1
    for i in range(4):
        name = f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(folder / name)
        images.append({"id": i + 1, "file_name": name, "height": H, "width": W})
        expected[name] = np.zeros((H, W), np.int64)
    # img0: a small square (category 2) listed before the large one (category 1) it lies on:
    # the larger is painted first, so the smaller stays on top.
    annotations += [
        {"id": 1, "image_id": 1, "category_id": 2, "segmentation": _rect(10, 10, 16, 15),
         "area": 30, "iscrowd": 0},
        {"id": 2, "image_id": 1, "category_id": 1, "segmentation": _rect(2, 3, 30, 25),
         "area": 616, "iscrowd": 0},
    ]  # fmt: skip
    expected["img0.png"][3:25, 2:30] = 1
    expected["img0.png"][10:15, 10:16] = 2
    # img1: compressed RLE (category 2), uncompressed RLE (category 1), and a crowd region.
    compressed = mask_utils.encode(np.asfortranarray(disk))
    compressed["counts"] = compressed["counts"].decode()
    annotations += [
        {"id": 3, "image_id": 2, "category_id": 2, "segmentation": compressed,
         "area": int(disk.sum()), "iscrowd": 0},
        {"id": 4, "image_id": 2, "category_id": 1, "segmentation": _uncompressed_rle(band),
         "area": int(band.sum()), "iscrowd": 0},
        {"id": 5, "image_id": 2, "category_id": 1, "segmentation": _rect(0, 0, 6, 4),
         "area": 24, "iscrowd": 1},
    ]  # fmt: skip
    expected["img1.png"][band.astype(bool)] = 1
    expected["img1.png"][disk.astype(bool)] = 2  # smaller area: on top
    expected["img1.png"][0:4, 0:6] = 255
    # img2: two polygons of one object (category 1); img3: no annotations.
    annotations.append(
        {"id": 6, "image_id": 3, "category_id": 1,
         "segmentation": _rect(0, 0, 5, 5) + _rect(30, 20, 40, 32), "area": 145, "iscrowd": 0}
    )  # fmt: skip
    expected["img2.png"][0:5, 0:5] = 1
    expected["img2.png"][20:32, 30:40] = 1
    categories = [
        {"id": 1, "name": "road", "color": "#804080"},
        {"id": 2, "name": "car", "color": "#00008e"},
    ]
    if with_problems:
        categories.append({"id": 7, "name": "bridge", "color": "#ff0000"})
        annotations.append(
            {"id": 99, "image_id": 42, "category_id": 1, "segmentation": _rect(0, 0, 2, 2),
             "area": 4, "iscrowd": 0}
        )  # fmt: skip
        annotations.append(
            {"id": 77, "image_id": 3, "category_id": 2, "segmentation": _rect(35, 0, 48, 5),
             "area": 25, "iscrowd": 0}
        )  # fmt: skip
    annotation_file.parent.mkdir(parents=True, exist_ok=True)
    annotation_file.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    return expected


@pytest.fixture
def roboflow(tmp_path):
    root = tmp_path / "roboflow"
    expected = {}
    for split in ("train", "valid", "val"):
        if split == "valid":
            continue
        expected[split] = _write_split(root / split, root / split / "_annotations.coco.json")
    return root, expected


def test_roboflow_layout_masks_equal_independent_drawings(roboflow):
    root, expected = roboflow
    dataset = open_split(root, "train", "coco")
    assert dataset.classes.names == ["background", "road", "car"]
    assert dataset.classes.colors[1] == (0x80, 0x40, 0x80)
    assert len(dataset) == 4
    for index, info in enumerate(dataset.images):
        image, mask = dataset.load(index)
        assert image.shape == (H, W, 3)
        np.testing.assert_array_equal(mask, expected["train"][info.path.name], info.path.name)


def test_crowd_can_be_its_class(roboflow):
    root, _ = roboflow
    dataset = open_split(root, "train", "coco", SplitOptions(layout={"crowd": "class"}))
    _, mask = dataset.load(1)
    assert (mask[0:4, 0:6] == 1).all()


def test_coco_and_cvat_layout_and_annotations_flag(tmp_path):
    root = tmp_path / "coco"
    expected = _write_split(root / "train2017", root / "annotations" / "instances_train2017.json")
    dataset = open_split(root, "train", "coco")
    np.testing.assert_array_equal(dataset.load(0)[1], expected["img0.png"])
    other = tmp_path / "other"
    _write_split(other / "images" / "train", other / "labels" / "train.json")
    options = SplitOptions(layout={"annotations": "labels/{split}.json"})
    assert len(open_split(other, "train", "coco", options)) == 4
    assert open_split(other, "val", "coco", options) is None


def test_check_data_names_each_problem(tmp_path, capsys):
    root = tmp_path / "bad"
    _write_split(root / "train", root / "train" / "_annotations.coco.json", with_problems=True)
    (root / "train" / "img2.png").unlink()
    report = check_layout(root, "coco", progress=False)
    text = "\n".join(str(p) for p in report.problems)
    assert not report.ok
    assert "annotation 99 points to image_id 42" in text
    assert "img3.png has no annotations" in text
    assert "'bridge' (id 7) is never used" in text
    assert "annotation 77 (img2.png) has polygon points outside" in text
    assert "img2.png does not exist" in text
    assert main(["check-data", str(root), "--dataset", "coco", "--quiet"]) == 1
    assert "annotation 99" in capsys.readouterr().out


def test_training_on_coco(roboflow, tmp_path):
    from unet_resnet.checkpoint import load_checkpoint
    from unet_resnet.training import TrainConfig, train

    root, _ = roboflow
    config = TrainConfig(
        data=str(root), dataset="coco", out=str(tmp_path / "run"), encoder="resnet18",
        encoder_weights=None, image_size=32, batch_size=2, epochs=1, workers=0,
        progress=False,
    )  # fmt: skip
    result = train(config)
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta.classes.names == ["background", "road", "car"]


def test_multilabel_keeps_overlapping_instances_of_both_categories(roboflow):
    root, expected = roboflow
    dataset = open_split(root, "train", "coco", SplitOptions(task="multilabel"))
    assert dataset.classes.names == ["road", "car"]  # no background plane
    assert dataset.classes.colors == [(0x80, 0x40, 0x80), (0x00, 0x00, 0x8E)]
    _, planes = dataset.load(0)
    assert planes.shape == (2, H, W)
    road = np.zeros((H, W), np.int64)
    road[3:25, 2:30] = 1  # the whole large square, also under the car
    car = np.zeros((H, W), np.int64)
    car[10:15, 10:16] = 1
    np.testing.assert_array_equal(planes[0], road)
    np.testing.assert_array_equal(planes[1], car)
    _, planes = dataset.load(1)
    # The crowd region (category road) is unknown for road only; car is labelled there.
    assert (planes[0, 0:4, 0:6] == 255).all() and (planes[1, 0:4, 0:6] == 0).all()
    single = expected["train"]["img1.png"]
    np.testing.assert_array_equal(planes[1] == 1, single == 2)
    report = check_layout(root, "coco", SplitOptions(task="multilabel"), progress=False)
    assert report.ok, report.summary()
    assert report.splits["train"].class_pixels.tolist()[1] > 0
