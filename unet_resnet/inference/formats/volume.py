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
    decide,
    overlapping,
    predict_chunk,
    quality_meter,
    uncertainty_bytes,
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
    uncertainty: str | os.PathLike | None = None,
    meter=None,
) -> Path:
    """Predict a volume (NIfTI file or DICOM series folder) slice by slice along ``axis`` of
    its canonical orientation, as training sliced it (with the checkpoint's slice axis,
    intensity rule and 2.5D context, ``segmenter.volume``; ``axis`` overrides the axis), and
    write a NIfTI label volume in the input's own orientation with its affine.
    ``uncertainty``: also the segmenter's uncertainty map as a NIfTI volume beside it (8-bit
    storage with a scale of 1/255, so readers get 0-1 values); ``meter`` is given each slice
    (the case's quality estimate)."""
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
    spread = np.zeros(data.shape[:3], dtype=np.uint8) if uncertainty is not None else None
    measured = meter is not None or spread is not None
    for k in range(data.shape[axis]):
        stack = context_stack(data, k, axis, context)
        if measured:
            probs, unsure = predict_chunk(segmenter, stack)
            labels_k = decide(segmenter, probs)
        else:  # a predictor that gives labels only
            labels_k = segmenter.predict(stack)
        if meter is not None:
            meter.update(probs, labels_k, unsure)
        index = [slice(None)] * 3
        index[axis] = k
        labels[tuple(index)] = labels_k
        if spread is not None:
            spread[tuple(index)] = uncertainty_bytes(unsure)
    labels, _ = resample_in_plane(labels, volume.spacing, None, axis, labels=True, shape=grid)
    _save(nib, volume, labels, path_out)
    if spread is not None:
        spread, _ = resample_in_plane(spread, volume.spacing, None, axis, labels=True, shape=grid)
        _save(nib, volume, spread, Path(uncertainty), slope=1 / 255)
    return path_out


def _save(nib, volume, values: np.ndarray, path: Path, slope: float | None = None) -> None:
    out = nib.Nifti1Image(np.ascontiguousarray(volume.back(values)), volume.affine)
    out.header.set_zooms(volume.header_zooms)
    out.header.set_xyzt_units("mm")
    if slope is not None:
        out.header.set_data_dtype(np.uint8)
        out.header.set_slope_inter(slope, 0.0)
    with atomic_path(path) as tmp:
        nib.save(out, str(tmp))


def _outputs(out: Path, stem: str, request: OutputRequest) -> OutputPaths:
    # labels (and uncertainty) only: no overlay, probabilities
    unsure = out / f"{stem}_uncertainty.nii.gz" if request.uncertainty else None
    return OutputPaths(out / f"{stem}.nii.gz", uncertainty=unsure)


def _predict(segmenter, path: Path, outputs: OutputPaths, *, slice_axis=None, **_):
    # the quality estimate needs probabilities; a predictor of labels only gets none
    probabilities = hasattr(segmenter, "image_probabilities") or hasattr(
        segmenter, "image_prediction"
    )
    meter = quality_meter(segmenter) if probabilities else None
    predict_nifti(
        segmenter, path, outputs.mask, axis=slice_axis, uncertainty=outputs.uncertainty, meter=meter
    )
    return None if meter is None else meter.summary(segmenter.classes.names)


VOLUME = FileFormat(
    "volume",
    "NIfTI volumes and DICOM series folders: NIfTI label volumes",
    recognises=is_volume,
    outputs=_outputs,
    predict=_predict,
    stem=lambda path: case_name(path),
    suffixes=(".nii", ".nii.gz"),
)
