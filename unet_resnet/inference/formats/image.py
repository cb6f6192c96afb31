"""Ordinary images (PNG, JPEG, TIFF, ...): predicted in memory (tiled and chunked when large),
written as a palette PNG of class indices (a multi-band TIFF of 0/1 planes for multilabel
models), probabilities as a memory-mapped ``.npy``. The fallback format: it recognises any
file, and reading says clearly when a file is no image."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
from PIL import Image

from unet_resnet.errors import InputShapeError
from unet_resnet.grid import chunk_margin, chunk_windows
from unet_resnet.inference.formats.base import (
    FileFormat,
    ImagePredictor,
    OutputPaths,
    OutputRequest,
    decide,
    mask_file_predictor,
    predict_chunk,
    save_overlay,
    uncertainty_bytes,
)
from unet_resnet.io import (
    IMAGE_SUFFIXES,
    atomic_path,
    read_image,
    write_mask_png,
    write_planes_tiff,
)
from unet_resnet.uncertainty import QualityMeter

__all__ = ["IMAGE", "predict_image_file"]


def predict_image_file(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    overlay: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    chunk_size: int = 4096,
    meter: QualityMeter | None = None,
) -> Path:
    """Read an image, predict it (tiled if large), write a palette PNG of class indices (a
    multi-band TIFF of 0/1 planes for multilabel models); ``uncertainty``: also the
    segmenter's uncertainty map as an 8-bit grey PNG (0-255 for 0-1); ``meter`` is given each
    chunk's probabilities, decision and uncertainty (the input's quality estimate).

    Large images are predicted in chunks of ``chunk_size`` (with the context margin the
    GeoTIFF path uses, so results do not depend on it) into one class-index plane, and
    probabilities go straight into a memory-mapped ``.npy``: memory is the decoded image, one
    8-bit label plane, one chunk's probabilities and the tile batch (plus the 8-bit overlay
    and uncertainty planes when asked for), not a float array the size of the image.
    """
    path_in, path_out = Path(path_in), Path(path_out)
    image = read_image(path_in)
    height, width = image.shape[:2]
    margin = chunk_margin(segmenter.tile_size, segmenter.overlap)
    labels = None
    spread = np.empty((height, width), np.uint8) if uncertainty is not None else None
    path_out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(probabilities) if probabilities else contextlib.nullcontext() as tmp_prob:
        stored = None
        for chunk in chunk_windows(height, width, chunk_size, margin):
            top, left, h, w = chunk.core
            t0, l0, rh, rw = chunk.read
            dy, dx = chunk.offset
            try:
                probs, unsure = predict_chunk(segmenter, image[t0 : t0 + rh, l0 : l0 + rw])
            except InputShapeError as exc:
                raise InputShapeError(f"{path_in}: {exc}") from None
            probs, unsure = probs[:, dy : dy + h, dx : dx + w], unsure[dy : dy + h, dx : dx + w]
            part = decide(segmenter, probs)
            if meter is not None:
                meter.update(probs, part, unsure)
            if spread is not None:
                spread[top : top + h, left : left + w] = uncertainty_bytes(unsure)
            if labels is None:
                labels = np.empty((*part.shape[:-2], height, width), dtype=part.dtype)
            labels[..., top : top + h, left : left + w] = part
            if tmp_prob is not None:
                if stored is None:
                    shape = (probs.shape[0], height, width)
                    stored = np.lib.format.open_memmap(tmp_prob, "w+", np.float16, shape)
                stored[:, top : top + h, left : left + w] = probs.half().cpu().numpy()
        if stored is not None:
            stored.flush()
            del stored
    if labels.ndim == 3:
        write_planes_tiff(path_out, labels, segmenter.classes.names)
    elif labels.dtype == np.uint8:
        write_mask_png(path_out, labels, segmenter.classes.colors)
    else:
        with atomic_path(path_out.with_suffix(".npy")) as tmp:
            np.save(tmp, labels)
    if overlay is not None:
        save_overlay(segmenter.classes, image, labels, overlay)
    if spread is not None:
        with atomic_path(Path(uncertainty)) as tmp:
            Image.fromarray(spread, mode="L").save(tmp, format="PNG")
    return path_out


def _outputs(out: Path, stem: str, request: OutputRequest) -> OutputPaths:
    return OutputPaths(
        mask=out / f"{stem}{'.tif' if request.multilabel else '.png'}",
        overlay=out / f"{stem}_overlay.png" if request.overlay else None,
        probabilities=out / f"{stem}_proba.npy" if request.probabilities else None,
        uncertainty=out / f"{stem}_uncertainty.png" if request.uncertainty else None,
    )


IMAGE = FileFormat(
    "image",
    "ordinary images: palette PNG masks, NAME_proba.npy",
    recognises=lambda path: True,
    outputs=_outputs,
    predict=mask_file_predictor(predict_image_file),
    suffixes=tuple(IMAGE_SUFFIXES),
)
