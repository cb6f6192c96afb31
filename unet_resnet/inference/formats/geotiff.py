"""GeoTIFF scenes of any size: streamed chunk by chunk, written as georeferenced GeoTIFF
masks (and uint8 probability GeoTIFFs), optionally vectorised to GeoJSON and a GIS file."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import torch

from unet_resnet.errors import InputShapeError, UnetResnetError
from unet_resnet.grid import chunk_margin, chunk_windows
from unet_resnet.inference.formats.base import (
    FileFormat,
    ImagePredictor,
    OutputPaths,
    OutputRequest,
    decide,
    mask_file_predictor,
    overlapping,
    predict_chunk,
    save_overlay,
)
from unet_resnet.inference.vectorize import VECTOR_FORMATS
from unet_resnet.io import atomic_path, is_geotiff
from unet_resnet.uncertainty import QualityMeter

__all__ = ["GEOTIFF", "MAX_OVERLAY_PIXELS", "predict_raster_file"]

#: Overlays of scenes larger than this are skipped (they would need the whole scene in memory).
MAX_OVERLAY_PIXELS = 64_000_000


def predict_raster_file(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    chunk_size: int = 4096,
    meter: QualityMeter | None = None,
) -> Path:
    """Stream a GeoTIFF through the model chunk by chunk and write a georeferenced mask.

    Each chunk is read with a margin of context (:func:`unet_resnet.grid.chunk_margin`) so
    chunk borders get the same context as any other pixel, predicted with tiling, cropped back
    and written into its window. Peak memory depends on ``chunk_size`` and the tile batch, not
    on the scene. Pixels where every band equals the input's nodata value get nodata (255) in
    the output; the output keeps the input's CRS and geotransform. Probabilities, if asked for,
    are written as a uint8 GeoTIFF (probability x 255), one band per class. Multilabel models
    write one 0/1 band per class (band descriptions = class names). ``uncertainty``: the
    segmenter's uncertainty map as a float32 GeoTIFF (0-1; NaN where the input is nodata),
    written window by window like the mask; ``meter`` is given each chunk (the scene's
    quality estimate; nodata pixels left out).
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
    margin = chunk_margin(segmenter.tile_size, segmenter.overlap)
    # GDAL's block cache defaults to 5% of RAM and fills with written blocks; a fixed cap
    # keeps memory independent of the scene. Block (de)compression uses every core.
    with (
        rasterio.Env(GDAL_CACHEMAX=256, GDAL_NUM_THREADS="ALL_CPUS"),
        rasterio.open(path_in) as src,
        atomic_path(path_out) as tmp_out,
        atomic_path(probabilities) if probabilities else contextlib.nullcontext() as tmp_prob,
        atomic_path(uncertainty) if uncertainty else contextlib.nullcontext() as tmp_unsure,
    ):
        if src.count != segmenter.in_channels:
            raise InputShapeError(
                f"{path_in} has {src.count} band(s); the model takes "
                f"{segmenter.in_channels}. Select the bands the model was trained on."
            )
        bands = len(classes) if overlapping(segmenter) else 1
        profile = {
            "driver": "GTiff",
            "height": src.height,
            "width": src.width,
            "count": bands,
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
        unsure_profile = {**profile, "count": 1, "dtype": "float32", "nodata": float("nan")}
        with (
            rasterio.open(tmp_out, "w", **profile) as dst,
            rasterio.open(tmp_prob, "w", **prob_profile)
            if tmp_prob
            else contextlib.nullcontext() as pdst,
            rasterio.open(tmp_unsure, "w", **unsure_profile)
            if tmp_unsure
            else contextlib.nullcontext() as udst,
        ):
            if udst is not None:
                udst.descriptions = (
                    f"uncertainty ({getattr(segmenter, 'uncertainty', 'entropy')})",
                )
            if bands > 1:
                dst.descriptions = tuple(classes.names)
            for chunk in chunk_windows(src.height, src.width, chunk_size, margin):
                top, left, h, w = chunk.core
                t0, l0, rh, rw = chunk.read
                dy, dx = chunk.offset
                data = src.read(window=Window(l0, t0, rw, rh))
                probs, unsure = predict_chunk(segmenter, np.moveaxis(data, 0, -1))
                probs, unsure = probs[:, dy : dy + h, dx : dx + w], unsure[dy : dy + h, dx : dx + w]
                labels = decide(segmenter, probs)
                empty = None
                if src.nodata is not None:
                    core = data[:, dy : dy + h, dx : dx + w]
                    empty = np.all(core == src.nodata, axis=0)
                    labels[..., empty] = nodata_out
                if meter is not None:
                    meter.update(probs, labels, unsure)  # nodata's label is no class: left out
                window = Window(left, top, w, h)
                dst.write(labels.reshape(bands, h, w), window=window)
                if udst is not None:
                    values = unsure.float().cpu().numpy()
                    if empty is not None:
                        values[empty] = np.nan
                    udst.write(values[None], window=window)
                if pdst is not None:
                    scaled = probs.mul(255).round_().to(torch.uint8).cpu().numpy()
                    pdst.write(scaled, window=window)
    if overlay is not None:
        with rasterio.open(path_in) as src, rasterio.open(path_out) as out:
            if src.width * src.height <= MAX_OVERLAY_PIXELS:
                image = np.moveaxis(src.read(), 0, -1)
                mask = out.read() if bands > 1 else out.read(1)
                save_overlay(segmenter.classes, image, mask, overlay)
    return path_out


def _outputs(out: Path, stem: str, request: OutputRequest) -> OutputPaths:
    vectors = request.vectorize
    return OutputPaths(
        mask=out / f"{stem}.tif",
        overlay=out / f"{stem}_overlay.png" if request.overlay else None,
        probabilities=out / f"{stem}_proba.tif" if request.probabilities else None,
        uncertainty=out / f"{stem}_uncertainty.tif" if request.uncertainty else None,
        vectors=out / f"{stem}.geojson" if vectors else None,
        gis=out / f"{stem}{VECTOR_FORMATS[request.vector_format][0]}" if vectors else None,
    )


GEOTIFF = FileFormat(
    "geotiff",
    "georeferenced TIFF scenes: streamed, GeoTIFF masks, vectors on request",
    recognises=is_geotiff,
    outputs=_outputs,
    predict=mask_file_predictor(predict_raster_file),
    suffixes=(".tif", ".tiff"),
)
