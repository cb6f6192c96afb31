"""Datasets of image/mask file pairs (the folder layout and the base the public layouts and
COCO build on), batch collation and channel statistics.

Every dataset yields ``(image, mask)``: a float ``tv_tensors.Image`` (C x H x W, integer
images scaled to [0, 1]) and an int64 ``tv_tensors.Mask`` (H x W) of class indices with
``ignore_index`` where there is no label, after the dataset's ``transform``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from unet_resnet.data.classes import ClassInfo, DataError, resolve_classes
from unet_resnet.io import IMAGE_SUFFIXES, read_image, read_mask_raw, to_float_image

__all__ = [
    "PairedSegmentationDataset",
    "SegmentationFolder",
    "channel_stats",
    "folder_pairs",
    "pad_collate",
]

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class PairedSegmentationDataset(Dataset):
    """Image/mask file pairs, decoded through :class:`ClassInfo` and an optional lookup table.

    Args:
        pairs: ``(image_path, mask_path)``; ``mask_path`` may be ``None`` for unlabelled images.
        classes: class names/colours/ignore index.
        transform: joint transform taking and returning ``(image, mask)``.
        label_map: optional array mapping raw mask values to class indices (dataset label ids
            to train ids); values beyond its length become ``ignore_index``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path | None]],
        classes: ClassInfo,
        transform: Transform | None = None,
        label_map: np.ndarray | None = None,
    ) -> None:
        self.pairs = [(Path(i), None if m is None else Path(m)) for i, m in pairs]
        self.classes = classes
        self.transform = transform
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def image_paths(self) -> list[Path]:
        return [image for image, _ in self.pairs]

    def load_mask(self, path: Path) -> np.ndarray:
        raw = read_mask_raw(path)
        if self.label_map is not None:
            if raw.ndim != 2:
                raise DataError(f"Mask {path} should be single-channel label ids.")
            values = np.clip(raw.astype(np.int64), 0, len(self.label_map) - 1)
            mapped = self.label_map[values]
            mapped[(raw < 0) | (raw >= len(self.label_map))] = self.classes.ignore_index
            return mapped
        return self.classes.decode_mask(raw, path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw arrays: image ``H x W x C`` (stored dtype) and mask ``H x W`` int64 or None."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = None if mask_path is None else self.load_mask(mask_path)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(
                f"Size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but "
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height). Masks "
                "must have the image's size; re-export the mask."
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if mask is None:
            mask = np.full(image.shape[:2], self.classes.ignore_index, dtype=np.int64)
        return self.to_tensors(image, mask)

    def to_tensors(self, image: np.ndarray, mask: np.ndarray):
        img = tv_tensors.Image(
            torch.from_numpy(np.ascontiguousarray(to_float_image(image))).permute(2, 0, 1)
        )
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img, msk


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if (
                path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not path.name.startswith(".")
            ):
                files.setdefault(path.stem, path)
    return files


def folder_pairs(root: Path, split: str) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """Pair ``root/split/images/*`` with ``root/split/masks/*`` by file stem.

    Returns the pairs (images without a mask get ``None``) and the masks with no image.
    """
    images = _files_by_stem(root / split / "images")
    masks = _files_by_stem(root / split / "masks")
    pairs = [(path, masks.get(stem)) for stem, path in images.items()]
    orphans = [path for stem, path in masks.items() if stem not in images]
    return pairs, orphans


class SegmentationFolder(PairedSegmentationDataset):
    """The default layout: ``root/{train,val,test}/{images,masks}/NAME.ext``.

    Classes come from ``root/classes.json`` (or .yaml) when present, else ``num_classes``
    generic names. Images without a mask are an error here; ``unet-resnet check-data`` lists
    every such problem at once.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        num_classes: int | None = None,
        classes: ClassInfo | None = None,
        transform: Transform | None = None,
    ) -> None:
        root = Path(root)
        if not (root / split / "images").is_dir():
            raise DataError(
                f"No folder {root / split / 'images'}. Expected the layout "
                f"DATA/{{train,val,test}}/{{images,masks}}/NAME.ext under {root}; run "
                "`unet-resnet check-data` on it, or `unet-resnet make-demo-data` for an example."
            )
        pairs, _ = folder_pairs(root, split)
        if not pairs:
            raise DataError(
                f"{root / split / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)})."
            )
        unlabelled = [image for image, mask in pairs if mask is None]
        if unlabelled:
            raise DataError(
                f"{len(unlabelled)} image(s) in {root / split / 'images'} have no mask with the "
                f"same name in {root / split / 'masks'}, e.g. {unlabelled[0].name}. Add the "
                "masks or move the images out; `unet-resnet check-data` lists them all."
            )
        classes = classes or resolve_classes(root, num_classes)
        super().__init__(pairs, classes, transform)
        self.root = root
        self.split = split


def pad_collate(batch, *, ignore_index: int = 255):
    """Stack ``(image, mask)`` pairs of different sizes by padding to the largest.

    Images are padded with 0 (the normalised mean) and masks with ``ignore_index`` on the
    bottom/right, so padding never counts in the loss or the metrics. Masks are ``H x W``
    class indices or ``C x H x W`` planes (multilabel), as uint8 where every value (and
    ``ignore_index``) fits, else int64: an eighth of the bytes to copy to a GPU, widened
    there (``SegmentationDataModule.on_after_batch_transfer``).
    """
    images, masks = zip(*batch, strict=True)
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    out_images = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    lead = tuple(masks[0].shape[:-2])
    small = 0 <= ignore_index <= 255 and all(
        m.numel() == 0 or (int(m.min()) >= 0 and int(m.max()) <= 255) for m in masks
    )
    dtype = torch.uint8 if small else torch.int64
    out_masks = torch.full((len(masks), *lead, h, w), ignore_index, dtype=dtype)
    for k, (image, mask) in enumerate(batch):
        out_images[k, :, : image.shape[-2], : image.shape[-1]] = image
        out_masks[k, ..., : mask.shape[-2], : mask.shape[-1]] = mask
    return out_images.as_subclass(torch.Tensor), out_masks


def channel_stats(dataset, max_images: int = 200) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the (scaled) training images, from up to ``max_images``."""
    count = min(len(dataset), max_images)
    step = max(1, len(dataset) // count) if count else 1
    total = total_sq = None
    n = 0
    for index in range(0, len(dataset), step)[:count]:
        image = to_float_image(dataset.load(index)[0]).astype(np.float64)
        flat = image.reshape(-1, image.shape[-1])
        total = flat.sum(0) if total is None else total + flat.sum(0)
        total_sq = (flat**2).sum(0) if total_sq is None else total_sq + (flat**2).sum(0)
        n += flat.shape[0]
    if n == 0:
        raise DataError("Cannot compute normalisation statistics from an empty dataset.")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    std[std < 1e-6] = 1.0  # a constant band: leave its scale alone
    return mean.tolist(), std.tolist()
