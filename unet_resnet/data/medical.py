"""Medical volumes: NIfTI images and label maps read as 2D slices, written back as NIfTI.

Layout: ``DATA/{train,val,test}/images/CASE.nii.gz`` with ``DATA/{split}/labels/CASE.nii.gz``
(the label volume on the image's grid). Slices are taken along ``axis`` (2 = axial for the
usual RAS-oriented CT/MR volumes); voxel spacing is kept so distances (HD95) are in mm.
Volumes are read through nibabel's array proxy, one slice at a time.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from unet_resnet.data.classes import ClassInfo, DataError

__all__ = [
    "NIFTI_SUFFIXES",
    "NiftiSliceDataset",
    "case_name",
    "find_nifti_pairs",
    "is_nifti",
    "load_nibabel",
    "slice_weights",
]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def load_nibabel():
    """nibabel, or an error saying which extra installs it."""
    try:
        import nibabel
    except ImportError:
        raise DataError(
            "NIfTI support needs nibabel: pip install 'unet-resnet[medical]'."
        ) from None
    return nibabel


def is_nifti(path: str | os.PathLike) -> bool:
    """True for a ``.nii`` or ``.nii.gz`` file name."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def case_name(path: str | os.PathLike) -> str:
    """The case name of a volume: its file name without ``.nii``/``.nii.gz``."""
    return Path(path).name.removesuffix(".gz").removesuffix(".nii")


def find_nifti_pairs(root: str | os.PathLike, split: str) -> list[tuple[Path, Path | None]]:
    """``(image, label)`` volume pairs of a split, matched by case name."""
    root = Path(root)
    images = sorted(p for p in (root / split / "images").glob("*.nii*"))
    labels = {case_name(p): p for p in (root / split / "labels").glob("*.nii*")}
    return [(p, labels.get(case_name(p))) for p in images]


class NiftiSliceDataset(Dataset):
    """2D slices of NIfTI volumes with their label slices.

    Args:
        pairs: ``(image volume, label volume)`` paths.
        classes: class names/colours; label values are class indices.
        axis: the axis slices are taken along.
        transform: joint ``(image, mask)`` transform, as for the other datasets.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]],
        classes: ClassInfo,
        *,
        axis: int = 2,
        transform=None,
    ) -> None:
        nib = load_nibabel()
        self.pairs = [(Path(i), None if m is None else Path(m)) for i, m in pairs]
        self.classes = classes
        self.axis = axis
        self.transform = transform
        self.index: list[tuple[int, int]] = []
        self.spacings: list[tuple[float, ...]] = []
        for v, (image, label) in enumerate(self.pairs):
            try:
                img = nib.load(str(image))
            except Exception as exc:
                raise DataError(f"Could not read NIfTI volume {image}: {exc}") from None
            shape = img.shape[:3]
            if label is not None:
                lab_shape = nib.load(str(label)).shape[:3]
                if lab_shape != shape:
                    raise DataError(
                        f"Label volume {label} has shape {lab_shape}, image {image} has {shape}; "
                        "they must share the voxel grid."
                    )
            self.spacings.append(tuple(float(s) for s in img.header.get_zooms()[:3]))
            self.index.extend((v, k) for k in range(shape[axis]))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _volume(self, v: int):
        # One decoded volume per worker at a time: slices of the same case come together.
        if v not in self._cache:
            nib = load_nibabel()
            image, label = self.pairs[v]
            data = np.asarray(nib.load(str(image)).dataobj)
            lab = None if label is None else np.asarray(nib.load(str(label)).dataobj)
            self._cache = {v: (data, lab)}
        return self._cache[v]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw slice: image ``H x W x 1`` in the stored dtype, mask ``H x W`` int64 or None."""
        v, k = self.index[index]
        data, lab = self._volume(v)
        image = np.take(data, k, axis=self.axis)
        mask = None if lab is None else np.take(lab, k, axis=self.axis).astype(np.int64)
        return image[..., None], mask

    def __getitem__(self, index: int):
        image, mask = self.load(index)
        if mask is None:
            mask = np.full(image.shape[:2], self.classes.ignore_index, dtype=np.int64)
        from unet_resnet.io import to_float_image

        scaled = to_float_image(np.ascontiguousarray(image))
        img = tv_tensors.Image(torch.from_numpy(scaled).permute(2, 0, 1))
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img, msk


def slice_weights(dataset: NiftiSliceDataset, foreground: float) -> list[float]:
    """Sampling weights that draw slices containing foreground ``foreground`` of the time.

    Small lesions sit in few slices; without oversampling most batches hold none.
    """
    ignore = dataset.classes.ignore_index
    has_fg = []
    for i in range(len(dataset)):
        mask = dataset.load(i)[1]
        has_fg.append(mask is not None and bool(((mask > 0) & (mask != ignore)).any()))
    has_fg = np.array(has_fg)
    n_fg, n = int(has_fg.sum()), len(has_fg)
    if n_fg in (0, n):
        return [1.0] * n
    w_fg, w_bg = foreground / n_fg, (1 - foreground) / (n - n_fg)
    return [w_fg if f else w_bg for f in has_fg]
