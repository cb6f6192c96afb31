"""Medical volumes on disk: NIfTI files and DICOM series read into canonical (RAS+)
orientation with what it takes to write a prediction back in the input's own orientation,
plus the per-volume array operations training and prediction share (the intensity rule,
in-plane resampling, 2.5D context stacks).

Every volume is brought to the closest canonical orientation (``nibabel.as_closest_canonical``)
so a scan stored in another axis order or direction trains and predicts the same way; voxel
spacing is kept so distances (HD95) are in mm. Beside :mod:`unet_resnet.io` (ordinary
images), below the data layouts and the file formats that read volumes.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from unet_resnet.errors import DataError

__all__ = [
    "NIFTI_SUFFIXES",
    "IntensityRule",
    "Volume",
    "canonical_grid",
    "case_name",
    "context_stack",
    "is_dicom_series",
    "is_nifti",
    "is_volume",
    "load_nibabel",
    "read_dicom_series",
    "read_volume",
    "resample_in_plane",
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


def is_dicom_series(path: str | os.PathLike) -> bool:
    """True for a folder holding ``.dcm`` files (one DICOM series)."""
    path = Path(path)
    return path.is_dir() and any(
        child.suffix.lower() == ".dcm" for child in path.iterdir() if child.is_file()
    )


def is_volume(path: str | os.PathLike) -> bool:
    return is_nifti(path) or is_dicom_series(path)


def case_name(path: str | os.PathLike) -> str:
    """The case name of a volume: its file name without ``.nii``/``.nii.gz`` (a DICOM series:
    its folder name)."""
    return Path(path).name.removesuffix(".gz").removesuffix(".nii")


@dataclass
class Volume:
    """A volume in canonical (RAS+) orientation, and what it takes to go back.

    Attributes:
        data: the voxels, canonical axis order and directions.
        spacing: voxel sizes (mm) along the canonical axes.
        affine: the input's own affine (for writing predictions back).
        to_original: the nibabel orientation transform from canonical to the input's axes.
        header_zooms: the input's voxel sizes in its own axis order.
    """

    data: np.ndarray
    spacing: tuple[float, float, float]
    affine: np.ndarray
    to_original: np.ndarray
    header_zooms: tuple[float, ...]

    def back(self, canonical: np.ndarray) -> np.ndarray:
        """An array on the canonical grid, in the input's own axis order and directions."""
        from nibabel.orientations import apply_orientation

        return apply_orientation(canonical, self.to_original)


def _canonical(img) -> Volume:
    nib = load_nibabel()
    from nibabel.orientations import io_orientation, ornt_transform

    canonical = nib.as_closest_canonical(img)
    return Volume(
        data=np.asarray(canonical.dataobj),
        spacing=tuple(float(z) for z in canonical.header.get_zooms()[:3]),
        affine=img.affine,
        to_original=ornt_transform(io_orientation(canonical.affine), io_orientation(img.affine)),
        header_zooms=tuple(float(z) for z in img.header.get_zooms()[:3]),
    )


@dataclass
class IntensityRule:
    """How voxel values are normalised per modality, as nnU-Net does.

    - ``ct``: clip to the 0.5 and 99.5 percentiles of the training foreground (label > 0),
      then z-score with that foreground's mean and std; the statistics come from the training
      set (:meth:`fit_ct`) and travel in the checkpoint.
    - ``mr``: z-score each case with its own mean and std (over its non-zero voxels when there
      are any: the background of skull-stripped or cropped MR is 0).
    """

    modality: str
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None

    def apply(self, volume: np.ndarray) -> np.ndarray:
        values = volume.astype(np.float32)
        if self.modality == "ct":
            assert self.clip is not None and self.mean is not None and self.std
            values = np.clip(values, *self.clip)
            return (values - self.mean) / self.std
        if self.modality == "mr":
            inside = values[values != 0] if np.any(values != 0) else values
            return (values - float(inside.mean())) / max(float(inside.std()), 1e-8)
        raise DataError(f"Unknown modality {self.modality!r}: ct or mr.")

    @classmethod
    def fit_ct(cls, pairs, *, per_case: int = 10_000, seed: int = 0) -> IntensityRule:
        """CT statistics from up to ``per_case`` foreground voxels of each training case."""
        rng = np.random.default_rng(seed)
        samples = []
        for image, label in pairs:
            if label is None:
                continue
            values = read_volume(image).data[read_volume(label).data > 0]
            if values.size > per_case:
                values = rng.choice(values, per_case, replace=False)
            samples.append(values.astype(np.float64))
        if not samples or not sum(s.size for s in samples):
            raise DataError(
                "--modality ct needs foreground voxels (label > 0) in the training labels to "
                "learn the intensity window; none were found."
            )
        voxels = np.concatenate(samples)
        low, high = np.percentile(voxels, [0.5, 99.5])
        clipped = np.clip(voxels, low, high)
        return cls("ct", (float(low), float(high)), float(clipped.mean()), float(clipped.std()))

    def to_dict(self) -> dict:
        return {"modality": self.modality, "clip": self.clip, "mean": self.mean, "std": self.std}

    @classmethod
    def from_dict(cls, data: dict | None) -> IntensityRule | None:
        if not data:
            return None
        clip = data.get("clip")
        return cls(data["modality"], None if clip is None else tuple(clip), data.get("mean"),
                   data.get("std"))  # fmt: skip


def resample_in_plane(
    volume: np.ndarray,
    spacing: Sequence[float],
    target: float | None,
    axis: int,
    *,
    labels: bool = False,
    shape: Sequence[int] | None = None,
) -> tuple[np.ndarray, tuple[float, float, float]]:
    """Resample the two in-plane axes (all but ``axis``) to ``target`` mm voxels, or to
    ``shape`` when given (resampling back); linear for images, nearest neighbour for
    ``labels``. Returns the array and its new spacing."""
    from scipy import ndimage

    spacing = tuple(float(v) for v in spacing)
    if shape is None:
        if not target:
            return volume, spacing
        shape = [
            n if a == axis else max(1, round(n * spacing[a] / target))
            for a, n in enumerate(volume.shape[:3])
        ]
    shape = tuple(int(n) for n in shape)
    if shape == volume.shape[:3]:
        return volume, spacing
    factors = [new / old for new, old in zip(shape, volume.shape[:3], strict=True)]
    out = ndimage.zoom(volume, factors, order=0 if labels else 1, mode="nearest", grid_mode=True)
    new_spacing = tuple(s / f for s, f in zip(spacing, factors, strict=True))
    return out, new_spacing


def context_stack(volume: np.ndarray, k: int, axis: int, context: int) -> np.ndarray:
    """Slice ``k`` with ``context`` slices on each side as channels (H x W x 2*context+1);
    beyond the volume's ends the edge slice is repeated."""
    last = volume.shape[axis] - 1
    indices = [min(max(k + d, 0), last) for d in range(-context, context + 1)]
    return np.stack([np.take(volume, i, axis=axis) for i in indices], axis=-1)


def canonical_grid(img) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Shape and voxel sizes of ``img`` in canonical axis order, from its header."""
    from nibabel.orientations import io_orientation

    ornt = io_orientation(img.affine)
    shape, zooms = [0, 0, 0], [0.0, 0.0, 0.0]
    for axis, (target, _) in enumerate(ornt[:3]):
        shape[int(target)] = int(img.shape[axis])
        zooms[int(target)] = float(img.header.get_zooms()[axis])
    return tuple(shape), tuple(zooms)


def read_volume(path: str | os.PathLike) -> Volume:
    """A NIfTI file or a DICOM series folder as a canonical :class:`Volume`."""
    nib = load_nibabel()
    path = Path(path)
    if is_dicom_series(path):
        data, affine = read_dicom_series(path)
        return _canonical(nib.Nifti1Image(data, affine))
    try:
        img = nib.load(str(path))
    except Exception as exc:
        raise DataError(f"Could not read NIfTI volume {path}: {exc}") from None
    return _canonical(img)


def read_dicom_series(folder: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One DICOM series folder as ``(voxels i x j x k, RAS affine)``.

    Slices are sorted by their position along the slice normal; ``RescaleSlope`` and
    ``RescaleIntercept`` are applied (CT in Hounsfield units). A folder mixing series, with a
    missing or duplicate slice, or with pixel data in a compressed transfer syntax this
    installation cannot decode is an error naming the file.
    """
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
    except ImportError:
        raise DataError("DICOM input needs pydicom: pip install 'unet-resnet[medical]'.") from None
    folder = Path(folder)
    slices = []
    for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".dcm"):
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, OSError, ValueError) as exc:
            raise DataError(f"{path} is not a readable DICOM file: {exc}") from None
        missing = [
            tag
            for tag in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if tag not in ds
        ]
        if missing:
            raise DataError(f"{path} lacks {', '.join(missing)}; it is not an image slice.")
        slices.append((path, ds))
    if not slices:
        raise DataError(f"No .dcm files in {folder}.")
    series = {str(ds.get("SeriesInstanceUID", "")) for _, ds in slices}
    if len(series) > 1:
        examples = {str(ds.get("SeriesInstanceUID", "")): p.name for p, ds in slices}
        raise DataError(
            f"{folder} mixes {len(series)} DICOM series ({', '.join(examples.values())} belong "
            "to different ones); put each series in its own folder."
        )
    orientation = np.array(slices[0][1].ImageOrientationPatient, dtype=np.float64)
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    slices.sort(key=lambda item: float(np.dot(item[1].ImagePositionPatient, normal)))
    positions = np.array([np.dot(ds.ImagePositionPatient, normal) for _, ds in slices])
    gaps = np.diff(positions)
    step = (
        float(np.median(gaps))
        if gaps.size
        else float(getattr(slices[0][1], "SliceThickness", 1.0) or 1.0)
    )
    if gaps.size and (step <= 0 or np.any(np.abs(gaps - step) > 0.1 * step)):
        bad = int(np.argmax(np.abs(gaps - step)))
        raise DataError(
            f"{folder}: slices are not evenly spaced (gap of {gaps[bad]:.3g} mm between "
            f"{slices[bad][0].name} and {slices[bad + 1][0].name}, expected {step:.3g} mm): a "
            "slice is missing or duplicated."
        )
    planes = []
    for path, ds in slices:
        try:
            pixels = ds.pixel_array
        except Exception as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax)
            raise DataError(
                f"Cannot decode the pixel data of {path} (transfer syntax {name}): {exc}. "
                "Install the decoder for it (e.g. pylibjpeg) or convert the series to an "
                "uncompressed syntax (dcmdjpeg, gdcmconv --raw)."
            ) from None
        slope = float(getattr(ds, "RescaleSlope", 1) or 1)
        intercept = float(getattr(ds, "RescaleIntercept", 0) or 0)
        plane = pixels.astype(np.float32) * slope + intercept
        planes.append(plane.T)  # (rows, cols) -> (i along the row direction, j along columns)
    data = np.stack(planes, axis=-1)
    if np.allclose(data, np.round(data)) and data.min() >= -32768 and data.max() <= 32767:
        data = data.astype(np.int16)
    row_spacing, col_spacing = (float(v) for v in slices[0][1].PixelSpacing)
    lps = np.eye(4)
    lps[:3, 0] = row * col_spacing  # i: along a row, spaced by the column spacing
    lps[:3, 1] = col * row_spacing  # j: down the columns, spaced by the row spacing
    lps[:3, 2] = normal * step
    lps[:3, 3] = np.array(slices[0][1].ImagePositionPatient, dtype=np.float64)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM's LPS to NIfTI's RAS
    return data, affine
