"""The public datasets' own trees, read as they are: Pascal VOC 2012, Oxford-IIIT Pet and
Cityscapes (``--dataset voc|pet|cityscapes``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unet_resnet.data.classes import ClassInfo, DataError
from unet_resnet.data.datasets import PairedSegmentationDataset
from unet_resnet.data.layouts.base import SplitOptions, register_layout

__all__ = [
    "CITYSCAPES_CLASSES",
    "VOC_CLASSES",
    "Cityscapes",
    "OxfordIIITPet",
    "VOCSegmentation",
]


# Pascal VOC 2012 -----------------------------------------------------------------------------
VOC_CLASSES = ClassInfo(
    names=[
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ]
)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"Missing split file {path}.")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


class VOCSegmentation(PairedSegmentationDataset):
    """Pascal VOC 2012: ``JPEGImages``, palette masks in ``SegmentationClass`` (255 = void),
    split lists in ``ImageSets/Segmentation/{train,val,trainval}.txt``. ``root`` may be the
    ``VOC2012`` folder or a folder above it (``VOCdevkit``)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", *, transform=None) -> None:
        root = Path(root)
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "JPEGImages").is_dir():
                root = candidate
                break
        else:
            raise DataError(f"{root} does not look like Pascal VOC 2012 (no JPEGImages folder).")
        ids = _read_ids(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        pairs = [
            (root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        super().__init__(pairs, VOC_CLASSES, transform)


# Oxford-IIIT Pet -----------------------------------------------------------------------------
class OxfordIIITPet(PairedSegmentationDataset):
    """Oxford-IIIT Pet: ``images/*.jpg``, ``annotations/trimaps/*.png`` with 1 = pet,
    2 = background, 3 = border. Splits from ``annotations/trainval.txt`` (train) and
    ``annotations/test.txt`` (val/test). The border becomes ``ignore_index`` by default, or a
    third class with ``border="class"``."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        border: str = "ignore",
        transform=None,
    ) -> None:
        root = Path(root)
        if root.name != "oxford-iiit-pet" and (root / "oxford-iiit-pet").is_dir():
            root = root / "oxford-iiit-pet"
        list_file = root / "annotations" / ("trainval.txt" if split == "train" else "test.txt")
        ids = _read_ids(list_file)
        pairs = [
            (root / "images" / f"{i}.jpg", root / "annotations" / "trimaps" / f"{i}.png")
            for i in ids
        ]
        if border not in ("ignore", "class"):
            raise ValueError(f"border must be 'ignore' or 'class', got {border!r}.")
        names = ["background", "pet"] + (["border"] if border == "class" else [])
        label_map = np.full(256, 255, dtype=np.int64)
        label_map[1], label_map[2] = 1, 0
        label_map[3] = 2 if border == "class" else 255
        super().__init__(
            pairs,
            ClassInfo(names, [(0, 0, 0), (255, 128, 0), (255, 255, 255)][: len(names)]),
            transform,
            label_map,
        )


# Cityscapes ------------------------------------------------------------------------------------
# (label id, train id, name, colour) for the 19 evaluated classes
_CITYSCAPES = [
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
]
CITYSCAPES_CLASSES = ClassInfo([n for _, _, n, _ in _CITYSCAPES], [c for *_, c in _CITYSCAPES])
CITYSCAPES_LABEL_MAP = np.full(256, 255, dtype=np.int64)
for _label_id, _train_id, _, _ in _CITYSCAPES:
    CITYSCAPES_LABEL_MAP[_label_id] = _train_id


class Cityscapes(PairedSegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
    ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``; label ids map to the 19 train ids, everything
    else to 255 (ignored)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", *, transform=None) -> None:
        root = Path(root)
        image_root = root / "leftImg8bit" / split
        if not image_root.is_dir():
            raise DataError(f"{root} does not look like Cityscapes (no {image_root}).")
        pairs = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
            stem = image.name.removesuffix("_leftImg8bit.png")
            mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            pairs.append((image, mask))
        if not pairs:
            raise DataError(f"No *_leftImg8bit.png images under {image_root}.")
        super().__init__(pairs, CITYSCAPES_CLASSES, transform, CITYSCAPES_LABEL_MAP)


@register_layout("voc", "Pascal VOC 2012 (train, and val for every other split)")
def _open_voc(root: Path, split: str, options: SplitOptions):
    return VOCSegmentation(root, "train" if split == "train" else "val")


@register_layout("pet", "Oxford-IIIT Pet (trainval, and test for every other split)")
def _open_pet(root: Path, split: str, options: SplitOptions):
    return OxfordIIITPet(root, "train" if split == "train" else "test")


@register_layout("cityscapes", "Cityscapes leftImg8bit/ + gtFine/ (labelIds)")
def _open_cityscapes(root: Path, split: str, options: SplitOptions):
    if not (root / "leftImg8bit" / split).is_dir():
        return None
    return Cityscapes(root, split)
