"""Overlapping classes (``--task multilabel``): one binary mask per class.

Two folder layouts, told apart per split by what ``SPLIT/masks/`` holds:

- a folder per class, named as in ``classes.json``: ``SPLIT/masks/CLASSNAME/NAME.png``; an
  image missing from a class folder has none of that class (tools often export only non-empty
  masks), but an image missing from every class folder is an error;
- one multi-band file per image: ``SPLIT/masks/NAME.tif`` with one band per class, in the
  order of ``classes.json``.

A plane holds 0 (absent) and 1 (present), or 0/255 (255 = present, the usual binary export);
``ignore_index`` marks unlabelled pixels where 1 is also used. Any other value is an error
naming the file. Samples are ``(image, mask)`` with the mask ``C x H x W`` int64 (0, 1,
``ignore_index``); losses, metrics and the Segmenter read them through
:mod:`unet_resnet.task`.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from unet_resnet.data.classes import ClassInfo, DataError, find_classes_file, resolve_classes
from unet_resnet.data.datasets import PairedSegmentationDataset, Transform, _files_by_stem
from unet_resnet.io import IMAGE_SUFFIXES, read_image

__all__ = [
    "MultiLabelFolder",
    "decode_plane",
    "multilabel_classes",
    "multilabel_sources",
]

#: An image's masks: a multi-band file, or class name -> file (classes absent are empty).
Sources = Path | dict[str, Path]


def decode_plane(raw: np.ndarray, path: str | os.PathLike, ignore_index: int) -> np.ndarray:
    """One class's binary mask as int64 0/1/``ignore_index`` (see the module docstring)."""
    if raw.ndim == 3:
        if not (raw == raw[..., :1]).all():
            raise DataError(
                f"Mask {path} has {raw.shape[-1]} differing channels; a class mask is one "
                "channel of 0/1 (or 0/255). Save it as a greyscale PNG."
            )
        raw = raw[..., 0]
    values = set(np.unique(raw).tolist())
    if values <= {0, 255} and ignore_index == 255 and 1 not in values:
        return (raw == 255).astype(np.int64)
    bad = sorted(values - {0, 1, ignore_index})
    if bad:
        raise DataError(
            f"Mask {path} has values {bad[:8]}; a class mask holds 0 (absent) and 1 or 255 "
            f"(present), and {ignore_index} (ignore_index) where 1 marks presence. Re-export it "
            "as a binary mask."
        )
    return raw.astype(np.int64)


def _class_folders(masks: Path) -> list[Path]:
    if not masks.is_dir():
        return []
    return sorted(p for p in masks.iterdir() if p.is_dir() and not p.name.startswith("."))


def multilabel_classes(root: str | os.PathLike, num_classes: int | None) -> ClassInfo:
    """``classes.json``'s classes; without one, the class folders of ``train/masks`` (sorted)
    name them, else ``num_classes`` generic names (multi-band masks)."""
    root = Path(root)
    if find_classes_file(root) is None:
        folders = [p.name for p in _class_folders(root / "train" / "masks")]
        if folders:
            if num_classes is not None and num_classes != len(folders):
                raise DataError(
                    f"--num-classes {num_classes} disagrees with the {len(folders)} class "
                    f"folders in {root / 'train' / 'masks'} ({', '.join(folders)})."
                )
            return ClassInfo(folders)
    return resolve_classes(root, num_classes)


def multilabel_sources(
    root: Path, split: str, classes: ClassInfo
) -> tuple[list[tuple[Path, Sources | None]], list[str]]:
    """Each image of ``split`` with its masks (None when it has none), and the problems found
    (class folders not in the classes, masks without an image), each naming the path."""
    images = _files_by_stem(root / split / "images")
    masks = root / split / "masks"
    folders = _class_folders(masks)
    problems: list[str] = []
    pairs: list[tuple[Path, Sources | None]] = []
    if folders:
        known = set(classes.names)
        for folder in folders:
            if folder.name not in known:
                problems.append(
                    f"Class folder {folder} matches no class ({', '.join(classes.names)}); "
                    "rename it as in classes.json or add the class."
                )
        per_class = {name: _files_by_stem(masks / name) for name in classes.names}
        for stem, image in images.items():
            found = {name: files[stem] for name, files in per_class.items() if stem in files}
            pairs.append((image, found or None))
        for files in per_class.values():
            for stem, path in files.items():
                if stem not in images:
                    problems.append(
                        f"Mask without image: {path} (no {root / split / 'images'}/{stem}.*)."
                    )
    else:
        files = _files_by_stem(masks)
        pairs = [(image, files.get(stem)) for stem, image in images.items()]
        problems += [
            f"Mask without image: {path} (no {root / split / 'images'}/{stem}.*)."
            for stem, path in files.items()
            if stem not in images
        ]
    return pairs, problems


class MultiLabelFolder(PairedSegmentationDataset):
    """``root/SPLIT/images/NAME.ext`` with per-class masks (see the module docstring)."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        classes: ClassInfo | None = None,
        num_classes: int | None = None,
        transform: Transform | None = None,
        skip_unlabelled: bool = False,
    ) -> None:
        root = Path(root)
        if not (root / split / "images").is_dir():
            raise DataError(
                f"No folder {root / split / 'images'}. Expected DATA/SPLIT/images/NAME.ext with "
                "DATA/SPLIT/masks/CLASSNAME/NAME.png or DATA/SPLIT/masks/NAME.tif (one band "
                "per class); see docs/data.md."
            )
        classes = classes or multilabel_classes(root, num_classes)
        pairs, _ = multilabel_sources(root, split, classes)
        if not pairs:
            raise DataError(
                f"{root / split / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)})."
            )
        unlabelled = [image for image, sources in pairs if sources is None]
        if skip_unlabelled:  # check-data reports them itself and reads the others
            pairs = [(image, sources) for image, sources in pairs if sources is not None]
        elif unlabelled:
            raise DataError(
                f"{len(unlabelled)} image(s) in {root / split / 'images'} have no mask in any "
                f"class folder or as a multi-band file in {root / split / 'masks'}, e.g. "
                f"{unlabelled[0].name}; `unet-resnet check-data --task multilabel` lists them."
            )
        super().__init__([(image, None) for image, _ in pairs], classes, transform)
        self.sources = [sources for _, sources in pairs]
        self.root, self.split = root, split

    def describe(self, index: int) -> str:
        sources = self.sources[index]
        if isinstance(sources, dict):
            return ", ".join(str(p) for p in sources.values())
        return str(sources)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``H x W x C`` (stored dtype) and mask ``C x H x W`` int64 planes."""
        image_path = self.pairs[index][0]
        image = read_image(image_path)
        height, width = image.shape[:2]
        planes = self.load_planes(self.sources[index], (height, width))
        if planes.shape[-2:] != (height, width):
            raise DataError(
                f"Size mismatch: image {image_path} is {width}x{height} but its masks "
                f"({self.describe(index)}) are {planes.shape[-1]}x{planes.shape[-2]} (width x "
                "height). Masks must have the image's size; re-export them."
            )
        return image, planes

    def load_planes(self, sources: Sources | None, size: tuple[int, int]) -> np.ndarray:
        ignore = self.classes.ignore_index
        if isinstance(sources, dict):
            planes = []
            for name in self.classes.names:
                path = sources.get(name)
                if path is None:
                    planes.append(np.zeros(size, dtype=np.int64))
                    continue
                plane = decode_plane(read_image(path), path, ignore)
                if plane.shape != size:
                    return plane[None]  # reported by load() with the file names
                planes.append(plane)
            return np.stack(planes)
        raw = read_image(sources)
        bands = raw.shape[-1] if raw.ndim == 3 else 1
        if bands != self.classes.num_classes:
            raise DataError(
                f"Mask {sources} has {bands} band(s) for {self.classes.num_classes} classes "
                f"({', '.join(self.classes.names)}); a multi-band mask has one band per class."
            )
        raw = raw.reshape(*raw.shape[:2], bands)
        return np.stack([decode_plane(raw[..., k], sources, ignore) for k in range(bands)])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        return self.to_tensors(image, mask)
