"""``unet-resnet check-data``: every problem in a dataset, found before training starts.

Each file is read in full (so truncated files are found), every pair is compared, and every
mask value is checked against the classes. The report lists all problems at once, each naming
the file and the fix, instead of failing on the first one mid-epoch.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
from tqdm.auto import tqdm

from unet_resnet.data.classes import ClassInfo, resolve_classes
from unet_resnet.data.datasets import PairedSegmentationDataset, folder_pairs
from unet_resnet.errors import UnetResnetError

__all__ = [
    "SPLITS",
    "DataReport",
    "Problem",
    "SplitStats",
    "check_dataset",
    "check_multilabel",
    "check_samples",
    "check_scene_splits",
    "finish",
]

SPLITS = ("train", "val", "test")


@dataclass
class Problem:
    severity: Literal["error", "warning"]
    message: str

    def __str__(self) -> str:
        return f"{self.severity}: {self.message}"


@dataclass
class SplitStats:
    images: int = 0
    pairs: int = 0
    sizes: Counter = field(default_factory=Counter)
    channels: Counter = field(default_factory=Counter)
    dtypes: Counter = field(default_factory=Counter)
    class_pixels: np.ndarray | None = None
    ignored_pixels: int = 0


@dataclass
class DataReport:
    """What :func:`check_dataset` found; ``ok`` is False when training would fail."""

    root: Path
    classes: ClassInfo | None
    splits: dict[str, SplitStats] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def error(self, message: str) -> None:
        self.problems.append(Problem("error", message))

    def warning(self, message: str) -> None:
        self.problems.append(Problem("warning", message))

    def summary(self) -> str:
        """A human-readable report: counts, sizes, channels, class histogram, problems."""
        lines = [f"Dataset {self.root}"]
        if self.classes is not None:
            lines.append(
                f"  classes ({self.classes.num_classes}): {', '.join(self.classes.names)}; "
                f"ignore_index {self.classes.ignore_index}"
            )
        for split, stats in self.splits.items():
            lines.append(f"  {split}: {stats.images} images, {stats.pairs} with masks")
            if stats.sizes:
                sizes = ", ".join(f"{w}x{h} ({n})" for (h, w), n in stats.sizes.most_common(3))
                more = len(stats.sizes) - 3
                lines.append(f"    sizes (WxH): {sizes}{f', +{more} more' if more > 0 else ''}")
                lines.append(
                    "    channels: "
                    + ", ".join(f"{c} ({n})" for c, n in sorted(stats.channels.items()))
                    + "; dtypes: "
                    + ", ".join(f"{d} ({n})" for d, n in sorted(stats.dtypes.items()))
                )
            if stats.pairs and stats.class_pixels is not None and self.classes is not None:
                total = stats.class_pixels.sum() + stats.ignored_pixels
                parts = [
                    f"{name} {count / max(total, 1):.1%}"
                    for name, count in zip(self.classes.names, stats.class_pixels, strict=True)
                ]
                if stats.ignored_pixels:
                    parts.append(f"ignored {stats.ignored_pixels / max(total, 1):.1%}")
                lines.append("    pixels per class: " + ", ".join(parts))
        if self.problems:
            lines.append(f"Problems ({len(self.errors)} errors):")
            lines.extend(f"  {p}" for p in self.problems)
        else:
            lines.append("No problems found.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "classes": None if self.classes is None else self.classes.to_dict(),
            "splits": {
                split: {
                    "images": s.images,
                    "pairs": s.pairs,
                    "sizes": {f"{w}x{h}": n for (h, w), n in s.sizes.items()},
                    "channels": dict(s.channels),
                    "class_pixels": None if s.class_pixels is None else s.class_pixels.tolist(),
                    "ignored_pixels": s.ignored_pixels,
                }
                for split, s in self.splits.items()
            },
            "problems": [{"severity": p.severity, "message": p.message} for p in self.problems],
        }


def check_dataset(
    root: str | os.PathLike,
    *,
    num_classes: int | None = None,
    classes: ClassInfo | None = None,
    splits: tuple[str, ...] = SPLITS,
    progress: bool = True,
) -> DataReport:
    """Check a dataset in the folder layout; never raises for data problems, reports them."""
    root = Path(root)
    report = DataReport(root=root, classes=None)
    if not root.is_dir():
        report.error(f"{root} is not a folder. Expected DATA/{{train,val,test}}/{{images,masks}}.")
        return report
    try:
        report.classes = classes or resolve_classes(root, num_classes)
    except UnetResnetError as exc:
        report.error(str(exc))
    present = [s for s in splits if (root / s).is_dir()]
    if "train" not in present:
        report.error(
            f"No {root / 'train'} folder: training needs DATA/train/images and DATA/train/masks."
        )
    if "val" not in present and "train" in present:
        report.warning(f"No {root / 'val'} folder: training will have no validation metrics.")

    all_channels: Counter = Counter()
    for split in present:
        stats = report.splits[split] = SplitStats()
        if not (root / split / "images").is_dir():
            report.error(f"{root / split} has no images/ folder.")
            continue
        pairs, orphans = folder_pairs(root, split)
        stats.images = len(pairs)
        if not pairs:
            report.error(f"Split '{split}' is empty: no images in {root / split / 'images'}.")
            continue
        masks = root / split / "masks"
        folders = sorted(p.name for p in masks.iterdir() if p.is_dir()) if masks.is_dir() else []
        if folders:
            report.error(
                f"{masks} holds folders ({', '.join(folders)}): per-class masks are read with "
                "--task multilabel."
            )
        for image, mask in pairs:
            if mask is None:
                report.error(
                    f"Image without mask: {image} (expected {root / split / 'masks'}/"
                    f"{image.stem}.png or another image suffix)."
                )
        for mask in orphans:
            report.error(
                f"Mask without image: {mask} (no {root / split / 'images'}/{mask.stem}.*)."
            )
        if report.classes is None:
            continue
        dataset = PairedSegmentationDataset(pairs, report.classes)
        check_samples(report, stats, split, dataset, lambda i, d=dataset: d.pairs[i][1], progress)
        all_channels.update(stats.channels)
    finish(report, all_channels)
    return report


def check_multilabel(
    root: str | os.PathLike,
    *,
    num_classes: int | None = None,
    classes: ClassInfo | None = None,
    splits: tuple[str, ...] = SPLITS,
    progress: bool = True,
) -> DataReport:
    """:func:`check_dataset` for per-class masks (``--task multilabel``, see
    :mod:`unet_resnet.data.multilabel`): every plane read and its values checked; images
    without any mask, masks without an image and unknown class folders named."""
    from unet_resnet.data.multilabel import MultiLabelFolder, multilabel_classes, multilabel_sources

    root = Path(root)
    report = DataReport(root=root, classes=None)
    try:
        report.classes = classes or multilabel_classes(root, num_classes)
    except UnetResnetError as exc:
        report.error(str(exc))
        return report
    present = [s for s in splits if (root / s / "images").is_dir()]
    if "train" not in present:
        report.error(f"No {root / 'train' / 'images'} folder: training needs it.")
    all_channels: Counter = Counter()
    for split in present:
        stats = report.splits[split] = SplitStats()
        pairs, problems = multilabel_sources(root, split, report.classes)
        stats.images = len(pairs)
        for problem in problems:
            report.error(problem)
        for image, sources in pairs:
            if sources is None:
                report.error(
                    f"Image without masks: {image} (expected {root / split / 'masks'}/CLASSNAME/"
                    f"{image.stem}.png for its classes, or {root / split / 'masks'}/"
                    f"{image.stem}.tif with one band per class)."
                )
        if all(sources is None for _, sources in pairs):
            continue
        dataset = MultiLabelFolder(root, split, classes=report.classes, skip_unlabelled=True)
        check_samples(report, stats, split, dataset, dataset.describe, progress)
        all_channels.update(stats.channels)
    finish(report, all_channels)
    return report


def check_samples(report, stats, split, dataset, describe, progress: bool) -> None:
    """Read every sample of ``dataset``; record sizes, channels, class pixels and problems."""
    stats.class_pixels = np.zeros(report.classes.num_classes, dtype=np.int64)
    for index in tqdm(
        range(len(dataset)), desc=f"check {split}", disable=not progress, leave=False
    ):
        try:
            image, mask = dataset.load(index)
        except UnetResnetError as exc:
            report.error(str(exc))
            continue
        stats.sizes[image.shape[:2]] += 1
        stats.channels[image.shape[2]] += 1
        stats.dtypes[str(image.dtype)] += 1
        if mask is None:
            continue
        stats.pairs += 1
        if mask.ndim == 3:  # multilabel planes, values checked while decoding
            stats.class_pixels += (mask == 1).reshape(mask.shape[0], -1).sum(1)
            stats.ignored_pixels += int((mask == report.classes.ignore_index).sum())
            continue
        bad = report.classes.check_values(mask)
        if bad.size:
            report.error(
                f"Mask {describe(index)} has values {bad[:8].tolist()} outside the classes "
                f"0..{report.classes.num_classes - 1} (ignore_index "
                f"{report.classes.ignore_index}). Fix the mask, raise --num-classes, or set "
                "ignore_index in classes.json."
            )
            continue
        valid = mask[mask != report.classes.ignore_index]
        stats.class_pixels += np.bincount(valid, minlength=report.classes.num_classes)
        stats.ignored_pixels += int(mask.size - valid.size)


def check_scene_splits(root, num_classes, open_split, progress: bool) -> DataReport:
    root = Path(root)
    report = DataReport(root=root, classes=None)
    try:
        report.classes = resolve_classes(root, num_classes)
    except UnetResnetError as exc:
        report.error(str(exc))
        return report
    all_channels: Counter = Counter()
    for split in [s for s in SPLITS if (root / s).is_dir()]:
        stats = report.splits[split] = SplitStats()
        try:
            pairs, ds, describe = open_split(root, split, report)
        except UnetResnetError as exc:
            report.error(str(exc))
            continue
        stats.images = len(pairs)
        if not pairs:
            report.error(f"Split '{split}' is empty: no scenes in {root / split / 'images'}.")
            continue
        check_samples(report, stats, split, ds, describe, progress)
        all_channels.update(stats.channels)
    if "train" not in report.splits:
        report.error(f"No {root / 'train'} folder with training scenes.")
    finish(report, all_channels)
    return report


def finish(report: DataReport, all_channels: Counter) -> None:
    if len(all_channels) > 1:
        report.error(
            f"Images have different channel counts {dict(all_channels)}: a model takes one "
            "channel count. Convert them (e.g. grey to RGB) so all match."
        )
    train = report.splits.get("train")
    if train is not None and train.class_pixels is not None and report.classes is not None:
        missing = [
            n for n, c in zip(report.classes.names, train.class_pixels, strict=True) if c == 0
        ]
        if missing and train.pairs:
            report.warning(f"Classes with no pixels in train: {', '.join(missing)}.")
