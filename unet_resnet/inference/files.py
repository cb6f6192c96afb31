"""Predicting files: ordinary images in memory, GeoTIFF scenes window by window.

Every output is written to a temporary name beside its destination and renamed when complete,
so an interrupted run never leaves a file that looks finished but is not.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from unet_resnet.errors import InputShapeError, UnetResnetError
from unet_resnet.inference.segmenter import labels_from_probs
from unet_resnet.io import atomic_path, read_image, write_mask_png
from unet_resnet.visualize import overlay_with_legend

if TYPE_CHECKING:
    from unet_resnet.inference.segmenter import Segmenter

__all__ = ["predict_image_file", "predict_raster_file"]

#: Overlays of scenes larger than this are skipped (they would need the whole scene in memory).
MAX_OVERLAY_PIXELS = 64_000_000


def _save_overlay(segmenter: Segmenter, image: np.ndarray, labels: np.ndarray, path) -> None:
    path = Path(path)
    classes = segmenter.classes
    picture = overlay_with_legend(
        image, labels, classes.names, classes.colors, ignore_index=classes.ignore_index
    )
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG")


def predict_image_file(
    segmenter: Segmenter,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    overlay: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
) -> Path:
    """Read an image, predict it (tiled if large), write a palette PNG of class indices."""
    path_in, path_out = Path(path_in), Path(path_out)
    image = read_image(path_in)
    try:
        probs = segmenter._proba_tensor(image)
    except InputShapeError as exc:
        raise InputShapeError(f"{path_in}: {exc}") from None
    labels = labels_from_probs(probs)
    path_out.parent.mkdir(parents=True, exist_ok=True)
    if labels.dtype == np.uint8:
        write_mask_png(path_out, labels, segmenter.classes.colors)
    else:
        with atomic_path(path_out.with_suffix(".npy")) as tmp:
            np.save(tmp, labels)
    if overlay is not None:
        _save_overlay(segmenter, image, labels, overlay)
    if probabilities is not None:
        with atomic_path(probabilities) as tmp, open(tmp, "wb") as f:
            np.save(f, probs.half().cpu().numpy())
    return path_out


def _chunks(h: int, w: int, size: int):
    for top in range(0, h, size):
        for left in range(0, w, size):
            yield top, left, min(size, h - top), min(size, w - left)


def predict_raster_file(
    segmenter: Segmenter,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    chunk_size: int = 4096,
) -> Path:
    """Stream a GeoTIFF through the model chunk by chunk and write a georeferenced mask.

    Each chunk is read with a margin of context (the tile overlap, at least 64 px) so chunk
    borders get the same context as any other pixel, predicted with tiling, cropped back and
    written into its window. Peak memory depends on ``chunk_size`` and the tile batch, not on
    the scene. Pixels where every band equals the input's nodata value get nodata (255) in the
    output; the output keeps the input's CRS and geotransform. Probabilities, if asked for,
    are written as a uint8 GeoTIFF (probability x 255), one band per class.
    """
    try:
        import rasterio
        from rasterio.windows import Window
    except ImportError:
        raise UnetResnetError(
            "GeoTIFF prediction needs rasterio: pip install 'unet-resnet[geo]'."
        ) from None
    path_in, path_out = Path(path_in), Path(path_out)
    classes = segmenter.classes
    nodata_out = classes.ignore_index if 0 <= classes.ignore_index <= 255 else 255
    margin = max(
        64,
        int(segmenter.overlap * segmenter.tile_size)
        if segmenter.overlap < 1
        else int(segmenter.overlap),
    )
    # GDAL's block cache defaults to 5% of RAM and fills with written blocks; a fixed cap
    # keeps memory independent of the scene. Block (de)compression uses every core.
    with (
        rasterio.Env(GDAL_CACHEMAX=256, GDAL_NUM_THREADS="ALL_CPUS"),
        rasterio.open(path_in) as src,
        atomic_path(path_out) as tmp_out,
        atomic_path(probabilities) if probabilities else contextlib.nullcontext() as tmp_prob,
    ):
        if src.count != segmenter.in_channels:
            raise InputShapeError(
                f"{path_in} has {src.count} band(s); the model takes "
                f"{segmenter.in_channels}. Select the bands the model was trained on."
            )
        profile = {
            "driver": "GTiff",
            "height": src.height,
            "width": src.width,
            "count": 1,
            "dtype": "uint8",
            "crs": src.crs,
            "transform": src.transform,
            "nodata": nodata_out,
            # Fast deflate: class masks compress well at any level, and level 6 would cost
            # as much time per chunk as a fifth of the model's.
            "compress": "deflate",
            "zlevel": 1,
            "num_threads": "ALL_CPUS",
            "tiled": True,
            "blockxsize": 256,
            "blockysize": 256,
            "BIGTIFF": "IF_SAFER",
        }
        prob_profile = {**profile, "count": len(classes), "nodata": None}
        with (
            rasterio.open(tmp_out, "w", **profile) as dst,
            rasterio.open(tmp_prob, "w", **prob_profile)
            if tmp_prob
            else contextlib.nullcontext() as pdst,
        ):
            for top, left, h, w in _chunks(src.height, src.width, chunk_size):
                t0, l0 = max(0, top - margin), max(0, left - margin)
                t1 = min(src.height, top + h + margin)
                l1 = min(src.width, left + w + margin)
                data = src.read(window=Window(l0, t0, l1 - l0, t1 - t0))
                probs = segmenter._proba_tensor(np.moveaxis(data, 0, -1))
                probs = probs[:, top - t0 : top - t0 + h, left - l0 : left - l0 + w]
                labels = labels_from_probs(probs)
                if src.nodata is not None:
                    core = data[:, top - t0 : top - t0 + h, left - l0 : left - l0 + w]
                    labels[np.all(core == src.nodata, axis=0)] = nodata_out
                window = Window(left, top, w, h)
                dst.write(labels, 1, window=window)
                if pdst is not None:
                    scaled = probs.mul(255).round_().to(torch.uint8).cpu().numpy()
                    pdst.write(scaled, window=window)
    if overlay is not None:
        with rasterio.open(path_in) as src, rasterio.open(path_out) as out:
            if src.width * src.height <= MAX_OVERLAY_PIXELS:
                _save_overlay(segmenter, np.moveaxis(src.read(), 0, -1), out.read(1), overlay)
    return path_out
