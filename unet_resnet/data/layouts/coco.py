"""COCO annotations (what CVAT, Label Studio, Roboflow and most public datasets export) as
semantic segmentation masks.

Layouts found by :func:`find_coco` (``--annotations FILE`` overrides; ``{split}`` in it is
replaced by the split name):

- Roboflow: ``DATA/SPLIT/_annotations.coco.json`` with the images beside it in ``DATA/SPLIT/``;
- COCO / CVAT: ``DATA/annotations/instances_SPLIT*.json`` with the images in ``DATA/SPLIT*/``
  or ``DATA/images/SPLIT/``.

Classes: index 0 is ``background``; the categories follow in the order of their ids (names
and, when a category has a ``color``, colours are kept). Masks are drawn from polygons and RLE
by ``pycocotools``. Overlaps: instances are painted largest first (by ``area``, then id), so a
smaller object lying on a larger one stays visible; crowd regions (``iscrowd: 1``) are painted
last as ``ignore_index`` (``crowd="class"`` paints them as their category instead).

``multilabel=True`` (``--task multilabel``): no background class; each category is a binary
plane of its own (``C x H x W``), so overlapping instances of different categories are kept
both; a crowd region marks its category's plane ``ignore_index`` where no ordinary instance
of that category lies.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from unet_resnet.data.classes import ClassInfo, DataError
from unet_resnet.data.datasets import PairedSegmentationDataset
from unet_resnet.data.layouts.base import LayoutOption, SplitOptions, register_layout
from unet_resnet.io import read_image

__all__ = ["CocoSegmentation", "check_coco", "coco_classes", "find_coco", "read_coco"]

CrowdRule = Literal["ignore", "class"]
_IMAGE_DIRS = ("{split}", "images/{split}")


def _mask_utils():
    try:
        from pycocotools import mask
    except ImportError:
        raise DataError(
            "COCO annotations need pycocotools: pip install 'unet-resnet[coco]'."
        ) from None
    return mask


def find_coco(
    root: Path, split: str, annotations: str | os.PathLike | None = None
) -> tuple[Path, Path] | None:
    """``(annotation file, image folder)`` of ``split``, or None when the split is absent."""
    if annotations is not None:
        path = Path(str(annotations).replace("{split}", split))
        if not path.is_absolute() and not path.exists():
            path = root / path
        if not path.is_file():
            return None
        for pattern in _IMAGE_DIRS:
            folder = root / pattern.format(split=split)
            if folder.is_dir():
                return path, folder
        return path, path.parent
    roboflow = root / split / "_annotations.coco.json"
    if roboflow.is_file():
        return roboflow, root / split
    candidates = sorted((root / "annotations").glob(f"instances_{split}*.json"))
    if not candidates:
        return None
    path = candidates[0]
    suffix = path.stem.removeprefix("instances_")  # e.g. train2017
    for name in (suffix, split):
        for pattern in _IMAGE_DIRS:
            folder = root / pattern.format(split=name)
            if folder.is_dir():
                return path, folder
    raise DataError(
        f"{path} has no image folder: expected {root / suffix} or {root / 'images' / split}."
    )


def read_coco(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"Cannot read COCO file {path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(data.get(key), list) for key in ("images", "annotations", "categories")
    ):
        raise DataError(
            f"{path} is not a COCO file: it needs 'images', 'annotations' and 'categories' lists."
        )
    return data


def coco_classes(
    data: dict[str, Any], ignore_index: int = 255, *, multilabel: bool = False
) -> tuple[ClassInfo, dict]:
    """``(classes, category id -> class index)``: background first (not for ``multilabel``),
    then the categories by id."""
    categories = sorted(data["categories"], key=lambda c: c["id"])
    head = [] if multilabel else ["background"]
    names = head + [str(c.get("name", c["id"])) for c in categories]
    if len(set(names)) != len(names):  # repeated names (Roboflow's supercategory): add ids
        names = head + [f"{c.get('name', '')}_{c['id']}" for c in categories]
    colors = None
    if all(isinstance(c.get("color"), list | str) for c in categories) and categories:
        colors = [(0, 0, 0)] * len(head) + [_color(c["color"]) for c in categories]
    lookup = {c["id"]: i + len(head) for i, c in enumerate(categories)}
    return ClassInfo(names, colors, ignore_index), lookup


def _color(value) -> tuple[int, int, int]:
    if isinstance(value, str):  # "#rrggbb", as CVAT and Label Studio write it
        value = value.lstrip("#")
        return tuple(int(value[i : i + 2], 16) for i in (0, 2, 4))
    return tuple(int(v) for v in value[:3])


@dataclass
class _Image:
    path: Path
    height: int
    width: int
    annotations: list[dict]


def annotation_mask(ann: dict, height: int, width: int) -> np.ndarray:
    """The binary mask of one annotation (polygons, uncompressed or compressed RLE)."""
    mask_utils = _mask_utils()
    seg = ann.get("segmentation")
    if isinstance(seg, list):  # polygons: [[x0, y0, x1, y1, ...], ...]
        polygons = [p for p in seg if len(p) >= 6]
        if not polygons:
            return np.zeros((height, width), dtype=bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
    elif isinstance(seg, dict) and isinstance(seg.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(seg, height, width)
    elif isinstance(seg, dict):  # compressed RLE
        counts = seg["counts"]
        rle = {
            "size": seg["size"],
            "counts": counts.encode() if isinstance(counts, str) else counts,
        }
    else:
        raise DataError(f"Annotation {ann.get('id')} has no segmentation (polygons or RLE).")
    return mask_utils.decode(rle).astype(bool)


class CocoSegmentation(PairedSegmentationDataset):
    """A COCO split as image / class-index mask pairs (see the module docstring)."""

    def __init__(
        self,
        annotation_file: str | os.PathLike,
        image_dir: str | os.PathLike,
        *,
        classes: ClassInfo | None = None,
        crowd: CrowdRule = "ignore",
        transform=None,
        multilabel: bool = False,
    ) -> None:
        self.annotation_file = Path(annotation_file)
        data = read_coco(self.annotation_file)
        self.multilabel = multilabel
        found, self.lookup = coco_classes(data, multilabel=multilabel)
        if classes is not None and classes.num_classes != found.num_classes:
            raise DataError(
                f"{annotation_file} has {len(self.lookup)} categories"
                f"{'' if multilabel else ' (+ background)'} but {classes.num_classes} classes "
                f"were given ({', '.join(classes.names)})."
            )
        self.crowd = crowd
        by_image: dict[Any, list[dict]] = {}
        for ann in data["annotations"]:
            by_image.setdefault(ann.get("image_id"), []).append(ann)
        self.images = [
            _Image(
                Path(image_dir) / str(info["file_name"]),
                int(info["height"]),
                int(info["width"]),
                by_image.get(info["id"], []),
            )
            for info in sorted(data["images"], key=lambda i: i["id"])
        ]
        self.data = data
        super().__init__(
            [(image.path, image.path) for image in self.images], classes or found, transform
        )

    def load_mask(self, path: Path) -> np.ndarray:  # the pair's "mask" is its image entry
        raise NotImplementedError

    def mask_of(self, index: int) -> np.ndarray:
        """``H x W`` class indices, or ``C x H x W`` planes with ``multilabel``."""
        image = self.images[index]
        shape = (image.height, image.width)
        ignore = self.classes.ignore_index
        if self.multilabel:
            planes = np.zeros((self.classes.num_classes, *shape), dtype=np.int64)
            crowd_last = sorted(image.annotations, key=lambda a: bool(a.get("iscrowd")))
            for ann in crowd_last:
                plane = planes[self._class_of(ann)]
                drawn = annotation_mask(ann, *shape)
                if ann.get("iscrowd") and self.crowd == "ignore":
                    plane[drawn & (plane != 1)] = ignore
                else:
                    plane[drawn] = 1
            return planes
        mask = np.zeros(shape, dtype=np.int64)
        ordinary = [a for a in image.annotations if not a.get("iscrowd")]
        crowds = [a for a in image.annotations if a.get("iscrowd")]
        ordinary.sort(key=lambda a: (-float(a.get("area") or 0), a.get("id", 0)))
        for ann, crowd in [(a, False) for a in ordinary] + [(a, True) for a in crowds]:
            value = ignore if crowd and self.crowd == "ignore" else self._class_of(ann)
            self._class_of(ann)  # an unknown category is an error even for a crowd
            mask[annotation_mask(ann, *shape)] = value
        return mask

    def _class_of(self, ann: dict) -> int:
        value = self.lookup.get(ann.get("category_id"))
        if value is None:
            raise DataError(
                f"{self.annotation_file}: annotation {ann.get('id')} has category_id "
                f"{ann.get('category_id')}, which is not among the categories."
            )
        return value

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image_info = self.images[index]
        image = read_image(image_info.path)
        if image.shape[:2] != (image_info.height, image_info.width):
            raise DataError(
                f"{image_info.path} is {image.shape[1]}x{image.shape[0]} but "
                f"{self.annotation_file} says {image_info.width}x{image_info.height}."
            )
        return image, self.mask_of(index)


def _polygon_out_of_bounds(ann: dict, height: int, width: int) -> bool:
    seg = ann.get("segmentation")
    if not isinstance(seg, list):
        return False
    for polygon in seg:
        xs, ys = np.asarray(polygon[0::2], float), np.asarray(polygon[1::2], float)
        if xs.size and (xs.min() < 0 or ys.min() < 0 or xs.max() > width or ys.max() > height):
            return True
    return False


def check_coco(
    root: str | os.PathLike,
    *,
    annotations: str | None = None,
    crowd: CrowdRule = "ignore",
    progress: bool = True,
    multilabel: bool = False,
):
    """``check-data`` for COCO: every mask drawn, and each of these named: images without
    annotations, annotations whose image is missing (from the file or from disk), unknown and
    never-used categories, polygons reaching outside their image."""
    from unet_resnet.data.checks import SPLITS, DataReport, SplitStats, check_samples, finish

    root = Path(root)
    report = DataReport(root=root, classes=None)
    first_classes = None
    for split in SPLITS:
        try:
            found = find_coco(root, split, annotations)
        except DataError as exc:
            report.error(str(exc))
            continue
        if found is None:
            continue
        path, image_dir = found
        try:
            data = read_coco(path)
            classes, lookup = coco_classes(data, multilabel=multilabel)
        except DataError as exc:
            report.error(str(exc))
            continue
        if first_classes is None:
            first_classes = report.classes = classes
        elif classes.names != first_classes.names:
            report.error(
                f"{path} has other categories ({', '.join(classes.names[1:])}) than the first "
                f"split ({', '.join(first_classes.names[1:])}); every split needs the same."
            )
            continue
        images = {info["id"]: info for info in data["images"]}
        used: set = set()
        annotated: set = set()
        for ann in data["annotations"]:
            info = images.get(ann.get("image_id"))
            if info is None:
                report.error(
                    f"{path}: annotation {ann.get('id')} points to image_id "
                    f"{ann.get('image_id')}, which is not in 'images'."
                )
                continue
            annotated.add(info["id"])
            if ann.get("category_id") not in lookup:
                report.error(
                    f"{path}: annotation {ann.get('id')} has unknown category_id "
                    f"{ann.get('category_id')}."
                )
                continue
            used.add(ann["category_id"])
            if _polygon_out_of_bounds(ann, int(info["height"]), int(info["width"])):
                report.warning(
                    f"{path}: annotation {ann.get('id')} ({info['file_name']}) has polygon "
                    "points outside the image; they are clipped to it."
                )
        for info in data["images"]:
            if info["id"] not in annotated:
                report.warning(
                    f"{path}: image {info['file_name']} has no annotations (all background)."
                )
        for category in data["categories"]:
            if category["id"] not in used:
                report.warning(
                    f"{path}: category {category.get('name')!r} (id {category['id']}) is never "
                    "used; it still gets an output class."
                )
        missing_files = [
            info["file_name"]
            for info in data["images"]
            if not (image_dir / str(info["file_name"])).is_file()
        ]
        for name in missing_files[:20]:
            report.error(f"{path}: image {image_dir / name} does not exist.")
        stats = report.splits[split] = SplitStats(images=len(data["images"]))
        if missing_files or report.errors:
            continue
        dataset = CocoSegmentation(
            path, image_dir, classes=classes, crowd=crowd, multilabel=multilabel
        )
        check_samples(
            report, stats, split, dataset, lambda i, d=dataset: str(d.images[i].path), progress
        )
    if report.classes is None:
        report.error(
            f"No COCO annotations found in {root}: expected SPLIT/_annotations.coco.json, "
            "annotations/instances_SPLIT.json, or --annotations FILE."
        )
    elif "train" not in report.splits:
        report.error(f"No training split in {root}.")
    finish(report, Counter(c for s in report.splits.values() for c in s.channels.elements()))
    return report


def _check(root: Path, options: SplitOptions, progress: bool):
    return check_coco(
        root,
        annotations=options.option("annotations"),
        crowd=options.option("crowd"),
        progress=progress,
        multilabel=options.multilabel,
    )


@register_layout(
    "coco",
    "COCO JSON (polygons, RLE): DATA/SPLIT/_annotations.coco.json (Roboflow) or "
    "DATA/annotations/instances_SPLIT*.json (COCO, CVAT); --annotations FILE overrides",
    check=_check,
    multilabel=True,
    options=(
        LayoutOption(
            "annotations",
            str,
            "coco: annotation file ({split} is replaced by the split name); default: found in DATA",
        ),
        LayoutOption(
            "crowd",
            str,
            "coco: crowd regions become ignore_index, or their class",
            default="ignore",
            choices=("ignore", "class"),
            saved=True,
        ),
    ),
)
def _open(root: Path, split: str, options: SplitOptions):
    found = find_coco(root, split, options.option("annotations"))
    if found is None:
        return None
    return CocoSegmentation(
        *found,
        classes=options.classes,
        crowd=options.option("crowd"),
        multilabel=options.multilabel,
    )
