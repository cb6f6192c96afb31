"""Predicting files: every input format, output naming, and a whole list of inputs.

- ordinary images (PNG, JPEG, TIFF, ...) are predicted in memory (tiled when large) and written
  as palette PNG;
- GeoTIFF scenes are streamed chunk by chunk and written as georeferenced GeoTIFF;
- NIfTI volumes are predicted slice by slice and written as NIfTI with the input's affine;
- multilabel models (overlapping classes) write one band per class (0/1): a multi-band TIFF
  for ordinary images, a multi-band GeoTIFF for GeoTIFF scenes.

Every output is written to a temporary name beside its destination and renamed when complete,
so an interrupted run never leaves a file that looks finished but is not.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from unet_resnet.data.classes import ClassInfo
from unet_resnet.data.medical import case_name, is_dicom_series, is_volume
from unet_resnet.errors import ConfigError, InputShapeError, OutputExistsError, UnetResnetError
from unet_resnet.grid import chunk_margin, chunk_windows
from unet_resnet.inference.labels import labels_from_probs
from unet_resnet.inference.vectorize import VECTOR_FORMATS
from unet_resnet.io import (
    IMAGE_SUFFIXES,
    atomic_path,
    is_geotiff,
    read_image,
    remove_partials,
    write_mask_png,
    write_planes_tiff,
)
from unet_resnet.visualize import overlay_with_legend

__all__ = [
    "MAX_OVERLAY_PIXELS",
    "OutputPaths",
    "PredictPlan",
    "PredictReport",
    "expand_inputs",
    "plan_outputs",
    "plan_predictions",
    "predict_file",
    "predict_files",
    "predict_image_file",
    "predict_nifti",
    "predict_one",
    "predict_raster_file",
]

#: Overlays of scenes larger than this are skipped (they would need the whole scene in memory).
MAX_OVERLAY_PIXELS = 64_000_000


class ImagePredictor(Protocol):
    """What file prediction needs of a :class:`~unet_resnet.inference.Segmenter`."""

    classes: ClassInfo
    in_channels: int
    tile_size: int
    overlap: float

    def image_probabilities(self, image: np.ndarray) -> torch.Tensor: ...

    def predict(self, image: np.ndarray) -> np.ndarray: ...

    # Optional: ``decide(probs)`` (probabilities -> what ``predict`` returns) and ``task``;
    # without them the predictor is multiclass (arg-max).


def _decide(segmenter: ImagePredictor, probs: torch.Tensor) -> np.ndarray:
    decide = getattr(segmenter, "decide", None)
    return decide(probs) if decide is not None else labels_from_probs(probs)


def _overlapping(segmenter: ImagePredictor) -> bool:
    task = getattr(segmenter, "task", None)
    return bool(getattr(task, "overlapping", False))


def _save_overlay(classes: ClassInfo, image: np.ndarray, labels: np.ndarray, path) -> None:
    picture = overlay_with_legend(
        image, labels, classes.names, classes.colors, ignore_index=classes.ignore_index
    )
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")


def predict_image_file(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    overlay: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    chunk_size: int = 4096,
) -> Path:
    """Read an image, predict it (tiled if large), write a palette PNG of class indices (a
    multi-band TIFF of 0/1 planes for multilabel models).

    Large images are predicted in chunks of ``chunk_size`` (with the context margin the
    GeoTIFF path uses, so results do not depend on it) into one class-index plane, and
    probabilities go straight into a memory-mapped ``.npy``: memory is the decoded image, one
    8-bit label plane, one chunk's probabilities and the tile batch (plus the 8-bit overlay
    when asked for), not a float array the size of the image.
    """
    path_in, path_out = Path(path_in), Path(path_out)
    image = read_image(path_in)
    height, width = image.shape[:2]
    margin = chunk_margin(segmenter.tile_size, segmenter.overlap)
    labels = None
    path_out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(probabilities) if probabilities else contextlib.nullcontext() as tmp_prob:
        stored = None
        for chunk in chunk_windows(height, width, chunk_size, margin):
            top, left, h, w = chunk.core
            t0, l0, rh, rw = chunk.read
            dy, dx = chunk.offset
            try:
                probs = segmenter.image_probabilities(image[t0 : t0 + rh, l0 : l0 + rw])
            except InputShapeError as exc:
                raise InputShapeError(f"{path_in}: {exc}") from None
            probs = probs[:, dy : dy + h, dx : dx + w]
            part = _decide(segmenter, probs)
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
        _save_overlay(segmenter.classes, image, labels, overlay)
    return path_out


def predict_raster_file(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    probabilities: str | os.PathLike | None = None,
    overlay: str | os.PathLike | None = None,
    chunk_size: int = 4096,
) -> Path:
    """Stream a GeoTIFF through the model chunk by chunk and write a georeferenced mask.

    Each chunk is read with a margin of context (:func:`unet_resnet.grid.chunk_margin`) so
    chunk borders get the same context as any other pixel, predicted with tiling, cropped back
    and written into its window. Peak memory depends on ``chunk_size`` and the tile batch, not
    on the scene. Pixels where every band equals the input's nodata value get nodata (255) in
    the output; the output keeps the input's CRS and geotransform. Probabilities, if asked for,
    are written as a uint8 GeoTIFF (probability x 255), one band per class. Multilabel models
    write one 0/1 band per class (band descriptions = class names).
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
    ):
        if src.count != segmenter.in_channels:
            raise InputShapeError(
                f"{path_in} has {src.count} band(s); the model takes "
                f"{segmenter.in_channels}. Select the bands the model was trained on."
            )
        bands = len(classes) if _overlapping(segmenter) else 1
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
        with (
            rasterio.open(tmp_out, "w", **profile) as dst,
            rasterio.open(tmp_prob, "w", **prob_profile)
            if tmp_prob
            else contextlib.nullcontext() as pdst,
        ):
            if bands > 1:
                dst.descriptions = tuple(classes.names)
            for chunk in chunk_windows(src.height, src.width, chunk_size, margin):
                top, left, h, w = chunk.core
                t0, l0, rh, rw = chunk.read
                dy, dx = chunk.offset
                data = src.read(window=Window(l0, t0, rw, rh))
                probs = segmenter.image_probabilities(np.moveaxis(data, 0, -1))
                probs = probs[:, dy : dy + h, dx : dx + w]
                labels = _decide(segmenter, probs)
                if src.nodata is not None:
                    core = data[:, dy : dy + h, dx : dx + w]
                    labels[..., np.all(core == src.nodata, axis=0)] = nodata_out
                window = Window(left, top, w, h)
                dst.write(labels.reshape(bands, h, w), window=window)
                if pdst is not None:
                    scaled = probs.mul(255).round_().to(torch.uint8).cpu().numpy()
                    pdst.write(scaled, window=window)
    if overlay is not None:
        with rasterio.open(path_in) as src, rasterio.open(path_out) as out:
            if src.width * src.height <= MAX_OVERLAY_PIXELS:
                image = np.moveaxis(src.read(), 0, -1)
                mask = out.read() if bands > 1 else out.read(1)
                _save_overlay(segmenter.classes, image, mask, overlay)
    return path_out


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
    from unet_resnet.data.medical import (
        IntensityRule,
        context_stack,
        load_nibabel,
        read_volume,
        resample_in_plane,
    )

    if _overlapping(segmenter):
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


def predict_file(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    overlay: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    chunk_size: int = 4096,
    slice_axis: int | None = None,
) -> Path:
    """Predict one file, in the format its name and content call for.

    NIfTI volumes are written as NIfTI; GeoTIFFs with a ``.tif`` output are streamed window by
    window (memory bounded by ``chunk_size``) and written as GeoTIFF with the input's CRS and
    transform; other images are written as palette PNG.
    """
    if is_volume(path_in):
        return predict_nifti(segmenter, path_in, path_out, axis=slice_axis)
    if is_geotiff(path_in) and Path(path_out).suffix.lower() in (".tif", ".tiff"):
        return predict_raster_file(
            segmenter,
            path_in,
            path_out,
            probabilities=probabilities,
            chunk_size=chunk_size,
            overlay=overlay,
        )
    return predict_image_file(
        segmenter, path_in, path_out, overlay=overlay, probabilities=probabilities
    )


# Many inputs ------------------------------------------------------------------------------------
def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images and volumes), DICOM series folders and globs to a list
    in which each file appears once, under the first path that reached it (a file reached
    again through a symlink, a recursive glob, a manifest or a folder named twice is the same
    input); also the inputs that matched nothing. A recursive glob walks symlinked folders,
    but none twice, so a link back up does not loop."""
    found: list[Path] = []
    seen: set[str] = set()
    missing: list[str] = []
    for item in inputs:
        path = Path(item)
        if is_dicom_series(path):  # one DICOM series: a volume
            matches = [path]
        elif path.is_dir():
            matches = sorted(
                p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES or is_volume(p)
            )
        elif path.exists():
            matches = [path]
        else:
            matches = [p for p in _glob(item) if p.is_file() or is_dicom_series(p)]
        if not matches:
            missing.append(item)
        for match in matches:
            real = os.path.realpath(match)
            if real not in seen:
                seen.add(real)
                found.append(match)
    return found, missing


def _glob(pattern: str) -> list[Path]:
    """The paths matching ``pattern``, sorted; ``**`` matches any folders (none too), walking
    each real folder once (Python's glob follows a symlink back up until the path is too long,
    and two such links make the walk exponential)."""
    if "**" not in pattern:
        return sorted(Path(p) for p in glob.glob(pattern))
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    root = str(Path(*parts[:fixed])) if fixed else "."
    regex = re.compile(_translate(pattern if fixed else os.path.join(".", pattern)))
    matches, walked = [], set()
    for folder, subfolders, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in walked:
            subfolders[:] = []
            continue
        walked.add(real)
        subfolders[:] = [d for d in subfolders if not d.startswith(".")]  # as glob: not hidden
        for name in subfolders + [f for f in files if not f.startswith(".")]:
            candidate = os.path.join(folder, name)
            if regex.fullmatch(candidate):
                matches.append(Path(candidate))
    return sorted(matches)


def _translate(pattern: str) -> str:
    """A glob pattern as a regular expression: ``**/`` any folders (or none), ``*`` and ``?``
    within one path part, ``[...]`` a character class."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i) or pattern.startswith("**" + os.sep, i):
            out.append(f"(?:.*{re.escape(os.sep)})?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append(f"[^{re.escape(os.sep)}]*")
            i += 1
        elif pattern[i] == "?":
            out.append(f"[^{re.escape(os.sep)}]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2 :]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1 : end].replace("\\", "\\\\")
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body) + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


@dataclass(frozen=True)
class OutputPaths:
    """Where one input's predictions go."""

    mask: Path
    overlay: Path | None = None
    probabilities: Path | None = None
    vectors: Path | None = None
    gis: Path | None = None

    def paths(self) -> list[Path]:
        return [
            p for p in (self.mask, self.overlay, self.probabilities, self.vectors, self.gis) if p
        ]


def plan_outputs(
    files: Sequence[Path],
    out: Path,
    *,
    overlay: bool = False,
    probabilities: bool = False,
    vectorize: bool = False,
    vector_format: str = "gpkg",
    multilabel: bool = False,
) -> list[OutputPaths]:
    """Output names for each input: ``NAME.png`` (``.tif`` for GeoTIFF and for ``multilabel``
    masks, ``.nii.gz`` for NIfTI),
    ``NAME_overlay.png``, ``NAME_proba.npy``/``.tif``, ``NAME.geojson`` and ``NAME.gpkg``
    (or ``.fgb``).

    No output is ever an input or another input's output: when any of an input's names is
    taken (same file name in two folders, ``a.png`` and ``a.jpg``, ``x.png`` beside
    ``x_overlay.png``, or ``--out`` pointing at the inputs' folder), its name gets the input's
    folder as a prefix (``FOLDER_NAME``), then its suffix (``NAME_jpg``), then a number
    (``NAME-2``), whichever is free first.
    """
    inputs = {p.resolve() for p in files}
    claimed: set[Path] = set()
    plans = []
    for path in files:
        nifti = is_volume(path)
        geo = not nifti and is_geotiff(path)
        name = case_name(path) if nifti else path.stem
        suffix = path.name[len(name) :].lstrip(".").replace(".", "_").lower()
        candidates = [name, f"{path.parent.name}_{name}", f"{name}_{suffix}"]
        candidates += [f"{name}-{k}" for k in range(2, len(files) + 3)]
        for stem in candidates:
            if nifti:
                plan = OutputPaths(out / f"{stem}.nii.gz")
            else:
                plan = OutputPaths(
                    mask=out / f"{stem}{'.tif' if geo or multilabel else '.png'}",
                    overlay=out / f"{stem}_overlay.png" if overlay else None,
                    probabilities=out / f"{stem}_proba{'.tif' if geo else '.npy'}"
                    if probabilities
                    else None,
                    vectors=out / f"{stem}.geojson" if geo and vectorize else None,
                    gis=out / f"{stem}{VECTOR_FORMATS[vector_format][0]}"
                    if geo and vectorize
                    else None,
                )
            resolved = {p.resolve() for p in plan.paths()}
            if not resolved & (claimed | inputs):
                break
        claimed |= resolved
        plans.append(plan)
    return plans


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote and which inputs failed (with the reason)."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class PredictPlan:
    """The inputs a prediction run found, those that matched nothing, and every output path."""

    out: Path
    files: list[Path]
    missing: list[str]
    outputs: list[OutputPaths]
    skipped: list[Path] = field(default_factory=list)


def plan_predictions(
    inputs: Sequence[str],
    out: str | os.PathLike,
    *,
    overlay: bool = False,
    probabilities: bool = False,
    vectorize: bool = False,
    vector_format: str = "gpkg",
    overwrite: bool = False,
    done: Callable[[Path, OutputPaths], bool] | None = None,
    multilabel: bool = False,
) -> PredictPlan:
    """Expand ``inputs`` and name every output; an output that already exists is an error
    (before any work) unless ``overwrite``. Inputs for which ``done(path, outputs)`` holds (a
    resumed run's finished inputs) are left out of the plan and listed in ``skipped``."""
    files, missing = expand_inputs(inputs)
    out = Path(out)
    if vector_format not in VECTOR_FORMATS:
        raise ConfigError(
            f"Unknown --vector-format {vector_format!r}: {', '.join(VECTOR_FORMATS)}."
        )
    if multilabel and vectorize:
        raise ConfigError(
            "--vectorize turns class-index masks into polygons; a multilabel model writes "
            "one band per class. Leave out --vectorize (each band is a binary mask)."
        )
    plans = plan_outputs(
        files,
        out,
        overlay=overlay,
        probabilities=probabilities,
        vectorize=vectorize,
        vector_format=vector_format,
        multilabel=multilabel,
    )
    skipped: list[Path] = []
    if done is not None and not overwrite:
        kept = [(f, o) for f, o in zip(files, plans, strict=True) if not done(f, o)]
        skipped = [f for f in files if f not in {k for k, _ in kept}]
        files, plans = [f for f, _ in kept], [o for _, o in kept]
    existing = [p for plan in plans for p in plan.paths() if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise OutputExistsError(
            f"{len(existing)} output file(s) already exist in {out} ({shown}). Pass "
            "--overwrite to replace them, or choose another --out."
        )
    return PredictPlan(out, files, missing, plans, skipped)


def predict_one(
    segmenter: ImagePredictor,
    path: Path,
    paths: OutputPaths,
    *,
    slice_axis: int | None = None,
    simplify: float | None = None,
) -> None:
    """Predict one input into its outputs (each written atomically); what both engines run
    per input, so their outputs are identical."""
    predict_file(
        segmenter,
        path,
        paths.mask,
        overlay=paths.overlay,
        probabilities=paths.probabilities,
        slice_axis=slice_axis,
    )
    if paths.vectors is not None:
        from unet_resnet.inference.vectorize import vectorize_mask

        vectorize_mask(
            paths.mask, paths.vectors, segmenter.classes, gis_path=paths.gis, simplify=simplify
        )


def predict_files(
    segmenter: ImagePredictor,
    plan: PredictPlan,
    *,
    slice_axis: int | None = None,
    simplify: float | None = None,
    progress: bool = False,
) -> PredictReport:
    """Predict every input of ``plan`` (from :func:`plan_predictions`, which names and checks
    the outputs before any work) into its outputs.

    A file that fails (unreadable, wrong channel count, ...) is listed in the report with its
    reason and the others go on; inputs that matched nothing are listed too.
    """
    from tqdm.auto import tqdm

    files, outputs = plan.files, plan.outputs
    report = PredictReport(
        failed=[(m, "no such file, folder or matching glob") for m in plan.missing]
    )
    plan.out.mkdir(parents=True, exist_ok=True)
    remove_partials(plan.out)
    bar = tqdm(files, desc="predict", unit="file", disable=not progress or len(files) < 2)
    for path, paths in zip(bar, outputs, strict=True):
        try:
            predict_one(segmenter, path, paths, slice_axis=slice_axis, simplify=simplify)
            report.written.append(paths.mask)
        except UnetResnetError as exc:
            report.failed.append((str(path), str(exc)))
    return report
