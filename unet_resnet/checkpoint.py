"""The prediction checkpoint: weights plus everything needed to use them.

A checkpoint holds the model config, class names/colours/ignore index, normalisation
statistics, the training image size and input dtype, so ``Segmenter.from_checkpoint(path)``
needs nothing else. It is a plain dict of tensors and primitives, written atomically
(temporary file, fsync, rename) and read with ``weights_only=True``: loading never runs pickled
code and never downloads encoder weights (the architecture is rebuilt with random weights and
then filled from the file).

Besides its own format, :func:`load_checkpoint` reads Lightning ``.ckpt`` files written by
``unet-resnet train`` and bare state dicts saved by the original single-file implementation.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from unet_resnet.data.classes import ClassInfo
from unet_resnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from unet_resnet.errors import UnetResnetError, WeightsFileError
from unet_resnet.io import atomic_path
from unet_resnet.models import UNetWithResnet50Encoder, model_from_config
from unet_resnet.task import check_thresholds, get_task

__all__ = [
    "FORMAT",
    "CheckpointMeta",
    "atomic_torch_save",
    "export_metadata",
    "hub_metadata",
    "is_hub_source",
    "load_checkpoint",
    "read_export_metadata",
    "read_meta",
    "save_checkpoint",
    "save_state_dict_checkpoint",
]

FORMAT = "unet-resnet/1"


@dataclass
class CheckpointMeta:
    """What travels with the weights."""

    model_config: dict[str, Any]
    classes: ClassInfo
    mean: list[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list[float] = field(default_factory=lambda: list(IMAGENET_STD))
    image_size: int | None = None
    image_dtype: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    #: Volumes (nifti layout): ``slice_axis``, ``context_slices`` and the ``intensity`` rule
    #: (:class:`~unet_resnet.volumes.IntensityRule` as a dict) prediction must repeat.
    volume: dict[str, Any] | None = None
    #: What the output channels mean (:mod:`unet_resnet.task`): ``multiclass`` or
    #: ``multilabel``; and for the latter the per-class decision thresholds (None = 0.5).
    task: str = "multiclass"
    thresholds: list[float] | None = None
    #: How the training splits were read: ``{"layout": NAME, OPTION: VALUE, ...}`` with the
    #: layout's saved options (:data:`~unet_resnet.data.layouts.LAYOUT_OPTIONS`: crowd rule,
    #: slice axis, label field); ``evaluate`` and ``cross-validate`` read splits the same way
    #: unless a flag says otherwise. None for checkpoints written before it existed.
    split: dict[str, Any] | None = None
    #: The training imagery's ground resolution in cm per pixel (georeferenced rasters), for
    #: GIS tools that resample to it (the Deepness metadata of an ONNX export); None if unknown.
    resolution_cm: float | None = None
    #: The temperature the logits are divided by before the softmax (``unet-resnet
    #: calibrate``, fitted on a validation split); None = uncalibrated (1).
    temperature: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_config": self.model_config,
            "classes": self.classes.to_dict(),
            "mean": list(self.mean),
            "std": list(self.std),
            "image_size": self.image_size,
            "image_dtype": self.image_dtype,
            "extra": self.extra,
            "volume": self.volume,
            "task": self.task,
            "thresholds": None if self.thresholds is None else list(self.thresholds),
            "split": self.split,
            "resolution_cm": self.resolution_cm,
            "temperature": self.temperature,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMeta:
        return cls(
            model_config=dict(data["model_config"]),
            classes=ClassInfo.from_dict(data["classes"]),
            mean=list(data["mean"]),
            std=list(data["std"]),
            image_size=data.get("image_size"),
            image_dtype=data.get("image_dtype"),
            extra=dict(data.get("extra") or {}),
            volume=data.get("volume"),
            task=data.get("task") or "multiclass",
            thresholds=None if data.get("thresholds") is None else list(data["thresholds"]),
            split=data.get("split"),
            resolution_cm=data.get("resolution_cm"),
            temperature=data.get("temperature"),
        )


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` that never leaves a half-written file at ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible


def save_checkpoint(
    path: str | os.PathLike, model: UNetWithResnet50Encoder, meta: CheckpointMeta
) -> None:
    """Write weights + metadata in the ``unet-resnet/1`` format, atomically."""
    save_state_dict_checkpoint(path, model.state_dict(), meta)


def save_state_dict_checkpoint(
    path: str | os.PathLike, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta
) -> None:
    """:func:`save_checkpoint` for weights already taken out of the model."""
    state = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_torch_save({"format": FORMAT, "state_dict": state, **meta.to_dict()}, path)


def _meta_or_error(path: Path, data: Any) -> CheckpointMeta:
    """The checkpoint's metadata, checked: anything missing or inconsistent is one clear
    "damaged or incompatible" error rather than a KeyError or an all-zero mask later."""

    def damaged(why: str) -> WeightsFileError:
        return WeightsFileError(
            f"Checkpoint {path} is damaged or incompatible: {why}. Use a checkpoint written by "
            "`unet-resnet train` (RUN/checkpoints/best.pt), or retrain."
        )

    if not isinstance(data, dict):
        raise damaged("no metadata")
    for key in ("model_config", "classes", "mean", "std"):
        if key not in data:
            raise damaged(f"'{key}' is missing")
    try:
        meta = CheckpointMeta.from_dict(data)
    except (UnetResnetError, TypeError, ValueError, KeyError) as exc:
        raise damaged(str(exc)) from None
    config = meta.model_config
    for key in ("n_classes", "in_channels"):
        if not isinstance(config.get(key), int) or config[key] < 1:
            raise damaged(f"model_config[{key!r}] is {config.get(key)!r}")
    if config["n_classes"] != meta.classes.num_classes:
        raise damaged(
            f"the model predicts {config['n_classes']} classes but the metadata names "
            f"{meta.classes.num_classes} ({', '.join(meta.classes.names)})"
        )
    for name, values in (("mean", meta.mean), ("std", meta.std)):
        if len(values) != config["in_channels"]:
            raise damaged(
                f"{name} has {len(values)} values for {config['in_channels']} input channel(s)"
            )
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
            raise damaged(f"{name} holds non-finite values {values}")
    if any(v <= 0 for v in meta.std):
        raise damaged(f"std must be positive, got {meta.std}")
    try:
        get_task(meta.task)
        check_thresholds(meta.thresholds, config["n_classes"])
    except UnetResnetError as exc:
        raise damaged(str(exc)) from None
    return meta


def _strip(state_dict: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _infer_config(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The guide's architecture for a bare state dict (the original code saved no config)."""
    return {
        "n_classes": int(state_dict["out.weight"].shape[0]),
        "in_channels": int(state_dict["input_block.0.weight"].shape[1]),
        "encoder": "resnet50",
        "upsampling_method": "conv_transpose",
    }


#: The metadata file inside an export folder (``export --format openvino``).
EXPORT_METADATA_FILE = "unet_resnet.json"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_FILE_SUFFIXES = (".pt", ".pth", ".ckpt", ".onnx", ".safetensors", ".bin")


def is_hub_source(path: str | os.PathLike) -> bool:
    """Whether ``path`` names a shared model: a folder, or (when no such file exists) a
    Hugging Face Hub repo id such as ``user/name``."""
    text = str(path)
    if Path(text).is_dir():
        return True
    return (
        not Path(text).exists()
        and bool(_REPO_ID.match(text))
        and not text.lower().endswith(_FILE_SUFFIXES)
    )


def hub_metadata(meta: CheckpointMeta) -> dict[str, Any]:
    """What travels in a shared model's ``config.json`` besides the architecture."""
    return {
        "classes": meta.classes.to_dict(),
        "mean": list(meta.mean),
        "std": list(meta.std),
        "image_size": meta.image_size,
        "image_dtype": meta.image_dtype,
        "volume": meta.volume,
        "task": meta.task,
        "thresholds": meta.thresholds,
        "resolution_cm": meta.resolution_cm,
        "temperature": meta.temperature,
    }


def _load_shared(source: str | os.PathLike) -> tuple[UNetWithResnet50Encoder, CheckpointMeta]:
    model = UNetWithResnet50Encoder.from_pretrained(source)
    metadata = model.hub_metadata
    data = {
        "model_config": model.config,
        "classes": metadata.get("classes") or ClassInfo.generic(model.n_classes).to_dict(),
        "mean": metadata.get("mean") or list(IMAGENET_MEAN)[: model.in_channels],
        "std": metadata.get("std") or list(IMAGENET_STD)[: model.in_channels],
        "image_size": metadata.get("image_size"),
        "image_dtype": metadata.get("image_dtype"),
        "volume": metadata.get("volume"),
        "task": metadata.get("task"),
        "thresholds": metadata.get("thresholds"),
        "resolution_cm": metadata.get("resolution_cm"),
        "temperature": metadata.get("temperature"),
    }
    meta = _meta_or_error(Path(source) / "config.json", data)
    return model, meta


def load_checkpoint(
    path: str | os.PathLike, *, map_location: str | torch.device = "cpu"
) -> tuple[UNetWithResnet50Encoder, CheckpointMeta]:
    """Rebuild the model from a checkpoint; returns ``(model in eval mode, metadata)``.

    ``path`` is a ``.pt`` written by ``unet-resnet train``, a Lightning ``.ckpt``, the
    original's state dict, or a shared model (a ``save_pretrained`` folder or a Hub repo id).
    The model's :attr:`~UNetWithResnet50Encoder.hub_metadata` is filled, so
    ``model.save_pretrained(dir)`` shares it with its classes and normalisation.
    """
    if is_hub_source(path):
        return _load_shared(path)
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(
            f"Checkpoint not found: {path}. Pass the .pt file written by `unet-resnet train` "
            "(RUN_DIR/checkpoints/best.pt), a folder written by `unet-resnet export --format "
            "hf`, or a Hugging Face Hub repo id."
        )
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise WeightsFileError(
            f"Could not read checkpoint {path}: {type(exc).__name__}: {exc}. Expected a file "
            "written by `unet-resnet train` (checkpoints/best.pt), a Lightning .ckpt from it, "
            "or a state dict of the original model; files with pickled objects are refused."
        ) from None
    if not isinstance(obj, dict):
        raise WeightsFileError(f"{path} does not hold a checkpoint dict.")
    if obj.get("format") == FORMAT:
        meta = _meta_or_error(path, obj)
        state_dict = obj.get("state_dict")
    elif "state_dict" in obj and "hyper_parameters" in obj:  # Lightning checkpoint
        hp = obj["hyper_parameters"]
        meta = _meta_or_error(path, hp.get("meta") if isinstance(hp, dict) else None)
        state_dict = _strip(obj["state_dict"], "model.")
    elif "out.weight" in obj and "input_block.0.weight" in obj:  # the original's state dict
        state_dict = obj
        config = _infer_config(state_dict)
        meta = CheckpointMeta(config, ClassInfo.generic(config["n_classes"]))
    else:
        raise WeightsFileError(
            f"{path} is not a unet-resnet checkpoint (no 'format', Lightning state, or "
            "UNetWithResnet50Encoder state dict found)."
        )
    if not isinstance(state_dict, dict):
        raise WeightsFileError(f"Checkpoint {path} is damaged: it holds no weights (state_dict).")
    try:
        model = model_from_config(meta.model_config)
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, TypeError, KeyError, ValueError) as exc:
        raise WeightsFileError(
            f"Checkpoint {path} does not match its model config {meta.model_config}: {exc}"
        ) from None
    model.hub_metadata = hub_metadata(meta)
    return model.eval(), meta


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """A checkpoint's metadata without building its model: ``.pt``/``.ckpt`` files are
    memory-mapped (their weights are not read), exports read their metadata; shared models and
    the original's state dicts go through :func:`load_checkpoint`."""
    text = str(path)
    if (Path(text) / EXPORT_METADATA_FILE).is_file():  # an export folder (OpenVINO IR)
        return CheckpointMeta.from_dict(json.loads((Path(text) / EXPORT_METADATA_FILE).read_text()))
    if not is_hub_source(text) and Path(text).is_file():
        if text.lower().endswith(".onnx"):
            return CheckpointMeta.from_dict(read_export_metadata(text))
        try:
            obj = torch.load(text, map_location="cpu", weights_only=True, mmap=True)
        except Exception:  # not a zip checkpoint: load_checkpoint gives the full error
            obj = None
        if isinstance(obj, dict) and obj.get("format") == FORMAT:
            return _meta_or_error(Path(text), obj)
        if isinstance(obj, dict) and isinstance(obj.get("hyper_parameters"), dict):
            return _meta_or_error(Path(text), obj["hyper_parameters"].get("meta"))
    return load_checkpoint(path)[1]


#: What an export's graph returns (the metadata key ``output_kind``; missing = logits).
OUTPUT_DESCRIPTIONS = {
    "logits": (
        "N x num_classes x H x W logits: softmax over classes (task multiclass), or a "
        "sigmoid per class compared with 'thresholds' (task multilabel)"
    ),
    "probabilities": (
        "N x num_classes x H x W probabilities: softmax over classes (task multiclass, "
        "arg-max decides), or a sigmoid per class compared with 'thresholds' (multilabel)"
    ),
}


def export_metadata(meta: CheckpointMeta, fmt: str, output: str = "logits") -> dict[str, Any]:
    """The metadata an exported file carries (inside an ONNX file and in ``FILE.json``)."""
    return {
        "format": f"unet-resnet-export/{fmt}",
        "input": "N x C x H x W float32, scaled to [0, 1] by dtype range then (x - mean) / std",
        "output": OUTPUT_DESCRIPTIONS[output],
        "output_kind": output,
        **meta.to_dict(),
    }


def read_export_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The metadata written beside an export (``FILE.json``), or from inside an ONNX file."""
    path = Path(path)
    side = path.with_name(path.name + ".json")
    if side.is_file():
        return json.loads(side.read_text())
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        props = {p.key: p.value for p in model.metadata_props}
        if "unet_resnet" in props:
            return json.loads(props["unet_resnet"])
    raise WeightsFileError(
        f"No metadata found for {path} (expected {side}, or metadata inside the ONNX file). "
        "Export with `unet-resnet export`, which writes both."
    )
