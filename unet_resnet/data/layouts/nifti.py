"""The nifti layout: ``DATA/{train,val,test}/images/CASE.nii.gz`` (or a DICOM series folder
``images/CASE/``) with ``DATA/{split}/labels/CASE.nii.gz`` (the label volume on the image's
grid), read as 2D slices along ``--slice-axis`` of the canonical (RAS+) volume (2 = axial).
Volumes are read by :mod:`unet_resnet.volumes`; predictions are written back in the input's
own orientation and affine by the volume file format."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from unet_resnet.data.classes import ClassInfo, DataError
from unet_resnet.data.layouts.base import LayoutOption, SplitOptions, register_layout
from unet_resnet.volumes import (
    IntensityRule,
    canonical_grid,
    case_name,
    context_stack,
    is_dicom_series,
    is_volume,
    load_nibabel,
    read_volume,
    resample_in_plane,
)

__all__ = ["NiftiSliceDataset", "check_volumes", "find_nifti_pairs", "slice_weights"]


def find_nifti_pairs(root: str | os.PathLike, split: str) -> list[tuple[Path, Path | None]]:
    """``(image, label)`` volume pairs of a split, matched by case name (images may be NIfTI
    files or DICOM series folders; labels are NIfTI)."""
    root = Path(root)
    folder = root / split / "images"
    images = sorted(p for p in folder.iterdir() if is_volume(p)) if folder.is_dir() else []
    labels = {case_name(p): p for p in (root / split / "labels").glob("*.nii*")}
    return [(p, labels.get(case_name(p))) for p in images]


class NiftiSliceDataset(Dataset):
    """2D slices of NIfTI volumes with their label slices.

    Args:
        pairs: ``(image volume, label volume)`` paths.
        classes: class names/colours; label values are class indices.
        axis: the axis slices are taken along.
        transform: joint ``(image, mask)`` transform, as for the other datasets.
        context: 2.5D input: this many neighbouring slices on each side become extra
            channels (``2 * context + 1`` in all).
        intensity: an :class:`IntensityRule` applied to each volume before slicing.
        target_spacing: resample the in-plane axes to voxels of this size (mm; labels by
            nearest neighbour) so that scans of different resolutions look alike.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]],
        classes: ClassInfo,
        *,
        axis: int = 2,
        transform=None,
        context: int = 0,
        intensity: IntensityRule | None = None,
        target_spacing: float | None = None,
    ) -> None:
        nib = load_nibabel()
        self.pairs = [(Path(i), None if m is None else Path(m)) for i, m in pairs]
        self.classes = classes
        self.axis = axis
        self.transform = transform
        self.context = context
        self.intensity = intensity
        self.target_spacing = target_spacing
        self.index: list[tuple[int, int]] = []
        self.spacings: list[tuple[float, ...]] = []
        for v, (image, label) in enumerate(self.pairs):
            if is_dicom_series(image):
                volume = read_volume(image)
                shape, spacing = volume.data.shape[:3], volume.spacing
            else:
                try:
                    img = nib.load(str(image))
                except Exception as exc:
                    raise DataError(f"Could not read NIfTI volume {image}: {exc}") from None
                shape, spacing = canonical_grid(img)  # from the header: no voxels read
            if label is not None:
                lab_shape = canonical_grid(nib.load(str(label)))[0]
                if lab_shape != shape:
                    raise DataError(
                        f"Label volume {label} has shape {lab_shape}, image {image} has {shape} "
                        "(in canonical orientation); they must share the voxel grid."
                    )
            if target_spacing:  # the grid resample_in_plane will give
                resized = tuple(
                    n if a == axis else max(1, round(n * spacing[a] / target_spacing))
                    for a, n in enumerate(shape)
                )
                spacing = tuple(
                    sp * old / new for sp, old, new in zip(spacing, shape, resized, strict=True)
                )
                shape = resized
            self.spacings.append(spacing)
            self.index.extend((v, k) for k in range(shape[axis]))
        self._cache: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _volume(self, v: int):
        # One decoded volume per worker at a time: slices of the same case come together.
        if v not in self._cache:
            image, label = self.pairs[v]
            volume = read_volume(image)
            data = volume.data
            if self.intensity is not None:
                data = self.intensity.apply(data)
            data, _ = resample_in_plane(data, volume.spacing, self.target_spacing, self.axis)
            lab = None if label is None else read_volume(label).data
            if lab is not None:
                lab, _ = resample_in_plane(
                    lab, volume.spacing, self.target_spacing, self.axis, labels=True
                )
            self._cache = {v: (data, lab)}
        return self._cache[v]

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw slice: image ``H x W x (2 * context + 1)`` (stored dtype, or float32 after an
        intensity rule), mask ``H x W`` int64 or None."""
        v, k = self.index[index]
        data, lab = self._volume(v)
        image = context_stack(data, k, self.axis, self.context)
        mask = None if lab is None else np.take(lab, k, axis=self.axis).astype(np.int64)
        return image, mask

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


def check_volumes(
    root: str | os.PathLike,
    *,
    num_classes: int | None = None,
    slice_axis: int = 2,
    progress: bool = True,
):
    """The data checks for NIfTI volumes: ``DATA/{split}/images/CASE.nii.gz`` +
    ``labels/CASE.nii.gz``; every slice is read."""
    from unet_resnet.data.checks import check_scene_splits

    def open_split(root: Path, split: str, report):
        pairs = find_nifti_pairs(root, split)
        for image, label in pairs:
            if label is None:
                report.error(
                    f"Volume without labels: {image} (expected "
                    f"{root / split / 'labels'}/{image.name})."
                )
        ds = NiftiSliceDataset(pairs, report.classes, axis=slice_axis)

        def describe(i: int) -> str:
            v, k = ds.index[i]
            return f"{ds.pairs[v][1]} (slice {k})"

        return pairs, ds, describe

    return check_scene_splits(root, num_classes, open_split, progress)


def _check(root: Path, options: SplitOptions, progress: bool):
    return check_volumes(
        root,
        num_classes=options.num_classes,
        slice_axis=options.option("slice_axis"),
        progress=progress,
    )


@register_layout(
    "nifti",
    "DATA/{split}/{images,labels}/CASE.nii.gz volumes, read as 2D slices",
    check=_check,
    upright=False,
    options=(
        LayoutOption(
            "slice_axis",
            int,
            "nifti: axis the 2D slices are taken along",
            default=2,
            saved=True,
        ),
    ),
    volumes=True,
)
def _open(root: Path, split: str, options: SplitOptions):
    pairs = find_nifti_pairs(root, split) if (root / split).is_dir() else []
    if not pairs:
        return None
    return NiftiSliceDataset(
        pairs,
        options.resolve_classes(root),
        axis=options.option("slice_axis"),
        context=options.context_slices,
        intensity=options.intensity,
        target_spacing=options.target_spacing,
    )
