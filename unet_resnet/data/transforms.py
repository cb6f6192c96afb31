"""Mask-aware augmentation on torchvision.transforms.v2.

Images travel as ``tv_tensors.Image`` (float, any channel count) and masks as
``tv_tensors.Mask``: v2 applies geometry to both (nearest-neighbour for masks) and photometric
changes to images only. Padded mask pixels get ``ignore_index`` so they count for nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = [
    "AUTO_MIN_IMAGES",
    "AUTO_MIN_STEPS",
    "AugmentPreset",
    "Orientation",
    "RandomBrightnessContrast",
    "RandomRot90",
    "RandomScaleCrop",
    "build_eval_transform",
    "build_train_transform",
    "choose_augment",
    "choose_orientation",
]

AugmentPreset = Literal["auto", "none", "light", "default", "strong"]
#: Whether the images have an up and a down. ``upright`` (photos, street scenes): flips are
#: left-right only; ``free`` (microscopy, overhead imagery, scan slices): also top-bottom.
Orientation = Literal["auto", "upright", "free"]

#: ``auto`` picks ``light`` below either threshold and ``default`` above both: scale and
#: rotation augmentation pays off only when the schedule is long enough to learn through it
#: and there are enough images for it to matter (measured: docs/training.md).
AUTO_MIN_STEPS = 3000
AUTO_MIN_IMAGES = 500

#: ImageNet statistics for 3-channel images scaled to [0, 1].
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _size2(size: int | Sequence[int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _uniform(low: float, high: float) -> float:
    # torch's generator, like v2's own transforms, so seeding torch (and DataLoader workers)
    # makes augmentation reproducible.
    return float(torch.empty(()).uniform_(low, high))


def _randint(low: int, high: int) -> int:
    """Integer in [low, high], both ends included."""
    return int(torch.randint(low, high + 1, ()))


def _fill(ignore_index: int) -> dict:
    return {tv_tensors.Image: 0.0, tv_tensors.Mask: ignore_index}


class RandomScaleCrop(v2.Transform):
    """Zoom by a random factor and crop ``size``: scale jitter without resizing whole images.

    The crop is taken at ``size / scale`` in the source and resized to ``size``, so a large
    scene costs only its crop. Images smaller than the crop are padded (image 0, mask
    ``ignore_index``).
    """

    def __init__(
        self,
        size: int | Sequence[int],
        scale: tuple[float, float] = (0.5, 2.0),
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.size = _size2(size)
        self.scale = scale
        self.ignore_index = ignore_index

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = v2.query_size(flat_inputs)
        # Log-uniform so zooming in and out by the same factor are equally likely.
        s = math.exp(_uniform(math.log(self.scale[0]), math.log(self.scale[1])))
        crop_h = max(1, round(self.size[0] / s))
        crop_w = max(1, round(self.size[1] / s))
        pad_h, pad_w = max(0, crop_h - height), max(0, crop_w - width)
        top = _randint(0, height + pad_h - crop_h)
        left = _randint(0, width + pad_w - crop_w)
        return {"crop": (top, left, crop_h, crop_w), "pad": (0, 0, pad_w, pad_h)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        fill = self.ignore_index if isinstance(inpt, tv_tensors.Mask) else 0.0
        if any(params["pad"]):
            inpt = F.pad(inpt, list(params["pad"]), fill=fill)
        inpt = F.crop(inpt, *params["crop"])
        if tuple(inpt.shape[-2:]) != self.size:
            inpt = F.resize(inpt, list(self.size), antialias=True)
        return inpt


class RandomBrightnessContrast(v2.Transform):
    """Brightness and contrast jitter for images with any number of channels.

    torchvision's ColorJitter only takes 1 or 3 channels; multispectral and medical images
    need the same change per band. Masks pass through untouched.
    """

    def __init__(self, brightness: float = 0.2, contrast: float = 0.2, p: float = 0.8) -> None:
        super().__init__()
        self.brightness = brightness
        self.contrast = contrast
        self.p = p

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        apply = _uniform(0.0, 1.0) < self.p
        return {
            "apply": apply,
            "b": _uniform(1 - self.brightness, 1 + self.brightness),
            "c": _uniform(1 - self.contrast, 1 + self.contrast),
        }

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not params["apply"] or not isinstance(inpt, tv_tensors.Image):
            return inpt
        x = inpt.as_subclass(torch.Tensor) * params["b"]
        mean = x.mean(dim=(-2, -1), keepdim=True)
        x = (x - mean) * params["c"] + mean
        return tv_tensors.wrap(x, like=inpt)


class RandomRot90(v2.Transform):
    """Rotate by a random multiple of 90 degrees (aerial and microscopy images)."""

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"k": _randint(0, 3)}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if params["k"] == 0:
            return inpt
        return tv_tensors.wrap(torch.rot90(inpt, params["k"], dims=(-2, -1)), like=inpt)


def _normalize(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[v2.Transform]:
    if mean is None or std is None:
        return []
    return [v2.Normalize(mean=list(mean), std=list(std))]


def choose_augment(n_images: int, steps: int) -> tuple[str, str]:
    """The preset ``augment="auto"`` stands for, and why.

    Args:
        n_images: training images (or samples per epoch).
        steps: optimiser steps the schedule will run (epochs x batches per epoch).

    Short schedules and small datasets get ``light`` (crops and flips): the plain loop's
    recipe, which the stronger presets lose to when the model has too few steps to learn
    through scale and rotation changes. Long schedules on larger datasets get ``default``.
    """
    if steps < AUTO_MIN_STEPS or n_images < AUTO_MIN_IMAGES:
        why = (
            f"{steps} optimiser steps < {AUTO_MIN_STEPS}"
            if steps < AUTO_MIN_STEPS
            else f"{n_images} training images < {AUTO_MIN_IMAGES}"
        )
        return "light", f"{why}: crops and flips only"
    return "default", (
        f"{steps} optimiser steps and {n_images} images: long enough for scale/rotation "
        "augmentation to pay off"
    )


def choose_orientation(image_dtype: str, layout_upright: bool = True) -> tuple[str, str]:
    """What ``orientation="auto"`` stands for, and why.

    Images with no up and down get top-bottom flips as well as left-right ones (the plain
    recipe nnU-Net, torchgeo and most microscopy pipelines use): layouts of overhead imagery
    and scan slices (registered with ``upright=False``), and images that are not 8-bit, whose
    values are measurements (16-bit microscopy, CT/MR, reflectance) rather than a photo's.
    8-bit images in other layouts may be photos of an upright world (street scenes, people):
    turning them upside down would teach the model scenes it never meets, so only left-right.
    """
    if not layout_upright:
        return "free", "the layout holds overhead imagery or scan slices: flips both ways"
    if image_dtype != "uint8":
        return "free", (
            f"{image_dtype} images are measurements (microscopy, scans, reflectance), not "
            "photos with an up and a down: flips both ways"
        )
    return "upright", "8-bit images may be photos with an up and a down: left-right flips only"


def build_train_transform(
    preset: AugmentPreset = "default",
    *,
    size: int | Sequence[int] = 256,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    ignore_index: int = 255,
    photometric: bool = True,
    orientation: Orientation = "upright",
) -> v2.Compose:
    """The augmentation for training, ending in a ``size`` crop and normalisation.

    ``photometric=False`` leaves out brightness, contrast and noise: for data whose values
    are measurements (CT in Hounsfield units, reflectance, 16-bit microscopy) rather than a
    camera's exposure. ``orientation="free"`` adds vertical flips to ``light`` and
    ``default`` (images with no up and down). ``auto`` presets and orientations must be
    resolved first (:func:`choose_augment`, :func:`choose_orientation`).

    Presets (the guide's recipe is ``default``):

    - ``none``: random crop/pad to ``size`` only.
    - ``light``: + horizontal flip (+ vertical flip for ``free`` orientation).
    - ``default``: scale 0.5-2x, horizontal flip (+ vertical for ``free``), rotation up to
      15 degrees, brightness/contrast 0.2.
    - ``strong``: scale 0.5-2x, both flips, 90-degree turns, rotation up to 30 degrees,
      brightness/contrast 0.3, Gaussian noise.
    """
    size = _size2(size)
    fill = _fill(ignore_index)
    crop = v2.RandomCrop(size, pad_if_needed=True, fill=fill)
    match orientation:
        case "upright":
            flips: list[v2.Transform] = [v2.RandomHorizontalFlip()]
        case "free":
            flips = [v2.RandomHorizontalFlip(), v2.RandomVerticalFlip()]
        case _:
            raise ValueError(
                f"Unknown orientation {orientation!r}: upright or free ('auto' is resolved by "
                "choose_orientation() before this)."
            )
    match preset:
        case "none":
            steps: list[v2.Transform] = [crop]
        case "light":
            steps = [crop, *flips]
        case "default":
            steps = [
                RandomScaleCrop(size, (0.5, 2.0), ignore_index),
                *flips,
                v2.RandomApply([v2.RandomRotation(15, fill=fill)], p=0.5),
                *([RandomBrightnessContrast(0.2, 0.2)] if photometric else []),
            ]
        case "strong":
            steps = [
                RandomScaleCrop(size, (0.5, 2.0), ignore_index),
                v2.RandomHorizontalFlip(),
                v2.RandomVerticalFlip(),
                RandomRot90(),
                v2.RandomApply([v2.RandomRotation(30, fill=fill)], p=0.5),
                *(
                    [
                        RandomBrightnessContrast(0.3, 0.3),
                        v2.RandomApply([v2.GaussianNoise(sigma=0.03, clip=False)], p=0.3),
                    ]
                    if photometric
                    else []
                ),
            ]
        case "auto":
            raise ValueError("augment='auto' is resolved by choose_augment() before this.")
        case _:
            raise ValueError(
                f"Unknown augmentation preset {preset!r}. "
                f"Choose one of: {', '.join(get_args(AugmentPreset))}."
            )
    return v2.Compose([*steps, *_normalize(mean, std)])


def build_eval_transform(
    *, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> v2.Compose:
    """Validation/test: full images, normalisation only (batches are padded by the collate)."""
    return v2.Compose(_normalize(mean, std))
