"""What a file format is to prediction: how it is recognised, which outputs it writes under
which names, and how one file is predicted into them. The formats themselves are the sibling
modules; :mod:`unet_resnet.inference.formats` holds the registry."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from unet_resnet.data.classes import ClassInfo
from unet_resnet.inference.labels import labels_from_probs
from unet_resnet.io import atomic_path
from unet_resnet.uncertainty import QualityMeter, entropy_map
from unet_resnet.visualize import overlay_with_legend

__all__ = [
    "FileFormat",
    "ImagePredictor",
    "OutputPaths",
    "OutputRequest",
    "decide",
    "image_quality",
    "mask_file_predictor",
    "overlapping",
    "predict_chunk",
    "quality_meter",
    "save_overlay",
    "uncertainty_bytes",
]


class ImagePredictor(Protocol):
    """What file prediction needs of a :class:`~unet_resnet.inference.Segmenter`."""

    classes: ClassInfo
    in_channels: int
    tile_size: int
    overlap: float

    def image_probabilities(self, image: np.ndarray) -> torch.Tensor: ...

    def predict(self, image: np.ndarray) -> np.ndarray: ...

    # Optional: ``decide(probs)`` (probabilities -> what ``predict`` returns), ``task``
    # (without them the predictor is multiclass: arg-max) and ``image_prediction(image)``
    # (probabilities and an uncertainty map; without it, the entropy of the probabilities).


@dataclass(frozen=True)
class OutputPaths:
    """Where one input's predictions go."""

    mask: Path
    overlay: Path | None = None
    probabilities: Path | None = None
    vectors: Path | None = None
    gis: Path | None = None
    uncertainty: Path | None = None

    def paths(self) -> list[Path]:
        every = (self.mask, self.overlay, self.probabilities, self.vectors, self.gis)
        return [p for p in (*every, self.uncertainty) if p]


@dataclass(frozen=True)
class OutputRequest:
    """Which outputs a run asked for (the same for every input; each format writes those it
    can): the mask always, an overlay, probabilities, vectors (``vector_format``: the GIS
    file beside the GeoJSON), whether masks are multilabel planes, and an uncertainty map."""

    overlay: bool = False
    probabilities: bool = False
    vectorize: bool = False
    vector_format: str = "gpkg"
    multilabel: bool = False
    uncertainty: bool = False


#: ``outputs(out, stem, request) -> OutputPaths``: the output names of one input, given the
#: folder and a free stem. ``predict(segmenter, path, outputs, **options)`` writes them
#: (each atomically) and returns the input's quality estimate
#: (:meth:`~unet_resnet.uncertainty.QualityMeter.summary`); options are ``slice_axis`` and
#: ``chunk_size``, each format taking what applies to it.
Namer = Callable[[Path, str, OutputRequest], OutputPaths]
Predictor = Callable[..., Any]


@dataclass(frozen=True)
class FileFormat:
    """One input file format. ``recognises(path)`` is asked once per input, in the registry's
    order (the most specific format first); ``stem(path)`` is the name its outputs start from
    (a NIfTI's ``case.nii.gz`` is ``case``); a folder given as input is searched for files
    ending in any format's ``suffixes``."""

    name: str
    description: str
    recognises: Callable[[Path], bool]
    outputs: Namer
    predict: Predictor
    stem: Callable[[Path], str] = lambda path: path.stem
    #: file name endings a folder given as input is searched for (lower case)
    suffixes: tuple[str, ...] = ()


def mask_file_predictor(predict_file: Callable[..., Path]) -> Predictor:
    """A format's ``predict`` from a function ``(segmenter, path_in, mask, *, overlay,
    probabilities, uncertainty, chunk_size, meter)`` that writes the mask, overlay,
    probabilities and uncertainty map and fills the quality ``meter``."""

    def predict(segmenter, path: Path, outputs: OutputPaths, *, chunk_size: int = 4096, **_):
        meter = quality_meter(segmenter)
        predict_file(
            segmenter,
            path,
            outputs.mask,
            overlay=outputs.overlay,
            probabilities=outputs.probabilities,
            uncertainty=outputs.uncertainty,
            chunk_size=chunk_size,
            meter=meter,
        )
        return meter.summary(segmenter.classes.names)

    return predict


def predict_chunk(segmenter: ImagePredictor, image: np.ndarray, **options):
    """Probabilities ``C x H x W`` and an uncertainty map ``H x W`` for one image or chunk:
    the segmenter's own (``image_prediction``), or the normalised entropy."""
    method = getattr(segmenter, "image_prediction", None)
    if method is not None:
        return method(image, **options)
    probs = segmenter.image_probabilities(image, **options)
    return probs, entropy_map(probs, overlapping=overlapping(segmenter))


def quality_meter(segmenter: ImagePredictor) -> QualityMeter:
    """A per-input quality estimate for the segmenter's classes (class 0 is the background
    of one-class-per-pixel models)."""
    many = overlapping(segmenter)
    return QualityMeter(
        segmenter.classes.num_classes, overlapping=many, background=None if many else 0
    )


def image_quality(segmenter: ImagePredictor, image: np.ndarray, **options):
    """One image predicted and its quality estimated as ``predict`` does: the probabilities,
    what ``predict`` returns, and the estimate (:meth:`QualityMeter.summary`, with the class
    names). ``options`` (``tta``, ``tile_size``) go to the segmenter's prediction."""
    probs, unsure = predict_chunk(segmenter, image, **options)
    labels = decide(segmenter, probs)
    meter = quality_meter(segmenter)
    meter.update(probs, labels, unsure)
    return probs, labels, meter.summary(list(segmenter.classes.names))


def uncertainty_bytes(uncertainty: torch.Tensor) -> np.ndarray:
    """An uncertainty map in [0, 1] as 8-bit values (x 255, rounded)."""
    return uncertainty.float().mul(255).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def decide(segmenter: ImagePredictor, probs: torch.Tensor) -> np.ndarray:
    """Probabilities -> what ``segmenter.predict`` returns (arg-max without ``decide``)."""
    method = getattr(segmenter, "decide", None)
    return method(probs) if method is not None else labels_from_probs(probs)


def overlapping(segmenter: ImagePredictor) -> bool:
    """Whether the segmenter's classes overlap (multilabel planes instead of one index)."""
    task = getattr(segmenter, "task", None)
    return bool(getattr(task, "overlapping", False))


def save_overlay(classes: ClassInfo, image: np.ndarray, labels: np.ndarray, path) -> None:
    picture = overlay_with_legend(
        image, labels, classes.names, classes.colors, ignore_index=classes.ignore_index
    )
    with atomic_path(Path(path)) as tmp:
        picture.save(tmp, format="PNG")


def as_path(value: str | os.PathLike | None) -> Path | None:
    return None if value is None else Path(value)
