"""Volumes (NIfTI files, DICOM series folders): predicted slice by slice along the
checkpoint's slice axis, written as NIfTI label volumes with the input's affine."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from unet_resnet.errors import ConfigError
from unet_resnet.inference.formats.base import (
    FileFormat,
    ImagePredictor,
    OutputPaths,
    OutputRequest,
    overlapping,
)
from unet_resnet.io import atomic_path
from unet_resnet.volumes import case_name, is_volume

__all__ = ["VOLUME", "predict_nifti"]


def predict_nifti(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    axis: int | None = None,
) -> Path:
    """Predict a volume (NIfTI file or DICOM series folder) slice by slice along ``axis`` of
    its canonical orientation, as training sliced it (with the checkpoint's slice axis,
    intensity rule and 2.5D context, ``segmenter.volume``; ``axis`` overrides the axis), and
    write a NIfTI label volume in the input's own orientation with its affine."""
    from unet_resnet.volumes import (
        IntensityRule,
        context_stack,
        load_nibabel,
        read_volume,
        resample_in_plane,
    )

    if overlapping(segmenter):
        raise ConfigError(
            f"{path_in}: multilabel models predict images and GeoTIFFs; volumes (NIfTI, "
            "DICOM) need a multiclass model for now."
        )
    nib = load_nibabel()
    path_in, path_out = Path(path_in), Path(path_out)
    volume = read_volume(path_in)
    data = volume.data
    options = getattr(segmenter, "volume", None) or {}
    if axis is None:
        axis = int(options.get("slice_axis", 2))
    rule = IntensityRule.from_dict(options.get("intensity"))
    if rule is not None:
        data = rule.apply(data)
    context = int(options.get("context_slices") or 0)
    grid = data.shape[:3]
    data, _ = resample_in_plane(data, volume.spacing, options.get("target_spacing"), axis)
    labels = np.zeros(data.shape[:3], dtype=np.uint8)
    for k in range(data.shape[axis]):
        labels_k = segmenter.predict(context_stack(data, k, axis, context))
        index = [slice(None)] * 3
        index[axis] = k
        labels[tuple(index)] = labels_k
    labels, _ = resample_in_plane(labels, volume.spacing, None, axis, labels=True, shape=grid)
    out = nib.Nifti1Image(np.ascontiguousarray(volume.back(labels)), volume.affine)
    out.header.set_zooms(volume.header_zooms)
    out.header.set_xyzt_units("mm")
    with atomic_path(path_out) as tmp:
        nib.save(out, str(tmp))
    return path_out


def _outputs(out: Path, stem: str, request: OutputRequest) -> OutputPaths:
    return OutputPaths(out / f"{stem}.nii.gz")  # labels only: no overlay, probabilities


def _predict(segmenter, path: Path, outputs: OutputPaths, *, slice_axis=None, **_):
    return predict_nifti(segmenter, path, outputs.mask, axis=slice_axis)


VOLUME = FileFormat(
    "volume",
    "NIfTI volumes and DICOM series folders: NIfTI label volumes",
    recognises=is_volume,
    outputs=_outputs,
    predict=_predict,
    stem=lambda path: case_name(path),
    suffixes=(".nii", ".nii.gz"),
)
