"""Predicting files: many inputs expanded once, output names planned once, each input's
format decided once and carried with the plan.

The formats themselves (how a file is recognised, read, predicted and written) are the modules
of :mod:`unet_resnet.inference.formats`: ordinary images (palette PNG masks), GeoTIFF scenes
(streamed, georeferenced GeoTIFF masks), volumes (NIfTI label volumes). Multilabel models
write one band per class (0/1). Every output is written to a temporary name beside its
destination and renamed when complete, so an interrupted run never leaves a file that looks
finished but is not.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unet_resnet.errors import ConfigError, OutputExistsError, UnetResnetError
from unet_resnet.inference.formats import FORMATS, FileFormat, detect_format, get_format
from unet_resnet.inference.formats.base import ImagePredictor, OutputPaths, OutputRequest
from unet_resnet.inference.formats.geotiff import MAX_OVERLAY_PIXELS, predict_raster_file
from unet_resnet.inference.formats.image import predict_image_file
from unet_resnet.inference.formats.volume import predict_nifti
from unet_resnet.inference.vectorize import VECTOR_FORMATS
from unet_resnet.io import remove_partials
from unet_resnet.volumes import is_dicom_series

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


def predict_file(
    segmenter: ImagePredictor,
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    *,
    overlay: str | os.PathLike | None = None,
    probabilities: str | os.PathLike | None = None,
    uncertainty: str | os.PathLike | None = None,
    chunk_size: int = 4096,
    slice_axis: int | None = None,
) -> Path:
    """Predict one file to outputs named by the caller, in the format the file is.

    NIfTI volumes are written as NIfTI; GeoTIFFs are streamed window by window (memory
    bounded by ``chunk_size``) and written as GeoTIFF with the input's CRS and transform,
    unless ``path_out`` asks for another kind of file (``.png``), when they are read as an
    ordinary image; other images are written as palette PNG.
    """
    fmt = detect_format(path_in)
    if fmt.name == "geotiff" and Path(path_out).suffix.lower() not in (".tif", ".tiff"):
        fmt = get_format("image")
    outputs = OutputPaths(
        Path(path_out),
        overlay=None if overlay is None else Path(overlay),
        probabilities=None if probabilities is None else Path(probabilities),
        uncertainty=None if uncertainty is None else Path(uncertainty),
    )
    fmt.predict(segmenter, Path(path_in), outputs, chunk_size=chunk_size, slice_axis=slice_axis)
    return Path(path_out)


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
            matches = sorted(p for p in path.iterdir() if _listed(p))
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


def _listed(path: Path) -> bool:
    """Whether a folder's entry is an input: a file whose name ends in a suffix some format
    lists, or a DICOM series folder (decided from names alone: no file is opened here)."""
    name = path.name.lower()
    if any(name.endswith(suffix) for fmt in FORMATS.values() for suffix in fmt.suffixes):
        return path.is_file()
    return is_dicom_series(path)


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


def plan_outputs(
    files: Sequence[Path],
    out: Path,
    *,
    overlay: bool = False,
    probabilities: bool = False,
    vectorize: bool = False,
    vector_format: str = "gpkg",
    multilabel: bool = False,
    formats: Sequence[FileFormat] | None = None,
    uncertainty: bool = False,
) -> list[OutputPaths]:
    """Output names for each input, as its format names them (``formats``, one per file,
    detected here when not given): ``NAME.png`` (``.tif`` for GeoTIFF and for ``multilabel``
    masks, ``.nii.gz`` for NIfTI), ``NAME_overlay.png``, ``NAME_proba.npy``/``.tif``,
    ``NAME.geojson`` and ``NAME.gpkg`` (or ``.fgb``), ``NAME_uncertainty.png`` (``.tif``,
    ``.nii.gz``).

    No output is ever an input or another input's output: when any of an input's names is
    taken (same file name in two folders, ``a.png`` and ``a.jpg``, ``x.png`` beside
    ``x_overlay.png``, or ``--out`` pointing at the inputs' folder), its name gets the input's
    folder as a prefix (``FOLDER_NAME``), then its suffix (``NAME_jpg``), then a number
    (``NAME-2``), whichever is free first.
    """
    request = OutputRequest(
        overlay, probabilities, vectorize, vector_format, multilabel, uncertainty
    )
    formats = list(formats) if formats is not None else [detect_format(f) for f in files]
    inputs = {p.resolve() for p in files}
    claimed: set[Path] = set()
    plans = []
    for path, fmt in zip(files, formats, strict=True):
        name = fmt.stem(path)
        suffix = path.name[len(name) :].lstrip(".").replace(".", "_").lower()
        candidates = [name, f"{path.parent.name}_{name}", f"{name}_{suffix}"]
        candidates += [f"{name}-{k}" for k in range(2, len(files) + 3)]
        for stem in candidates:
            plan = fmt.outputs(out, stem, request)
            resolved = {p.resolve() for p in plan.paths()}
            if not resolved & (claimed | inputs):
                break
        claimed |= resolved
        plans.append(plan)
    return plans


@dataclass
class PredictReport:
    """What :func:`predict_files` wrote, which inputs failed (with the reason), and each
    predicted input's quality estimate (:mod:`unet_resnet.uncertainty`), by input path."""

    written: list[Path] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    quality: dict[str, dict] = field(default_factory=dict)


@dataclass
class PredictPlan:
    """The inputs a prediction run found, those that matched nothing, every output path, and
    each input's format (decided once here, carried to every engine and worker)."""

    out: Path
    files: list[Path]
    missing: list[str]
    outputs: list[OutputPaths]
    skipped: list[Path] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)


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
    uncertainty: bool = False,
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
    formats = [detect_format(f) for f in files]  # the one place an input's format is decided
    plans = plan_outputs(
        files,
        out,
        overlay=overlay,
        probabilities=probabilities,
        vectorize=vectorize,
        vector_format=vector_format,
        multilabel=multilabel,
        formats=formats,
        uncertainty=uncertainty,
    )
    skipped: list[Path] = []
    entries = list(zip(files, plans, formats, strict=True))
    if done is not None and not overwrite:
        kept = [e for e in entries if not done(e[0], e[1])]
        skipped = [f for f in files if f not in {e[0] for e in kept}]
        entries = kept
    files = [f for f, _, _ in entries]
    plans = [p for _, p, _ in entries]
    existing = [p for plan in plans for p in plan.paths() if p.exists()]
    if existing and not overwrite:
        shown = ", ".join(str(p) for p in existing[:3]) + (" ..." if len(existing) > 3 else "")
        raise OutputExistsError(
            f"{len(existing)} output file(s) already exist in {out} ({shown}). Pass "
            "--overwrite to replace them, or choose another --out."
        )
    return PredictPlan(out, files, missing, plans, skipped, [fmt.name for _, _, fmt in entries])


def predict_one(
    segmenter: ImagePredictor,
    path: Path,
    paths: OutputPaths,
    *,
    fmt: str | None = None,
    slice_axis: int | None = None,
    simplify: float | None = None,
) -> dict:
    """Predict one input into its outputs (each written atomically) as its format ``fmt``
    (the plan's; detected when None) says; what both engines run per input, so their outputs
    are identical. Returns the input's quality estimate."""
    file_format = get_format(fmt) if fmt else detect_format(path)
    quality = file_format.predict(segmenter, path, paths, slice_axis=slice_axis)
    if paths.vectors is not None:
        from unet_resnet.inference.vectorize import vectorize_mask

        vectorize_mask(
            paths.mask, paths.vectors, segmenter.classes, gis_path=paths.gis, simplify=simplify
        )
    return quality


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
    formats = plan.formats or [None] * len(files)
    for path, paths, fmt in zip(bar, outputs, formats, strict=True):
        try:
            quality = predict_one(
                segmenter, path, paths, fmt=fmt, slice_axis=slice_axis, simplify=simplify
            )
            report.written.append(paths.mask)
            if quality is not None:  # a format of one's own may not estimate it
                report.quality[str(path)] = quality
        except UnetResnetError as exc:
            report.failed.append((str(path), str(exc)))
    return report
