"""Training configuration, the schema: one dataclass whose fields carry their help text, group
and allowed values, checked on construction. Its command-line flags, YAML reading and the docs
table are generated from it in :mod:`unet_resnet.training.config_io`, so the YAML keys, the
flags and the saved ``config.yaml`` can never drift apart.
"""

from __future__ import annotations

import dataclasses
import math
import os
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from unet_resnet.data.layouts import LAYOUT_OPTIONS, layout_names, volume_layouts
from unet_resnet.data.transforms import AugmentPreset, Orientation
from unet_resnet.errors import ConfigError
from unet_resnet.hardware import PRECISION_ALIASES, Precision
from unet_resnet.losses import LossName
from unet_resnet.models.unet import UpsamplingMethod
from unet_resnet.task import TaskName, check_thresholds
from unet_resnet.training.loggers import check_logger_names

__all__ = ["GROUPS", "TrainConfig", "field_choices", "opt"]

Optimizer = Literal["adam", "adamw", "sgd"]
Scheduler = Literal["cosine", "plateau", "poly", "onecycle", "none"]
Normalization = Literal["auto", "imagenet", "dataset"]
Modality = Literal["none", "ct", "mr"]

#: What each group of options builds: its names are that constructor's parameters.
GROUPS = {
    "data": "SegmentationDataModule",
    "model": "the model config (and the encoder's initial weights)",
    "optim": "SegmentationModule: loss, optimiser, schedule",
    "trainer": "the Lightning Trainer",
    "run": "the run: folder, seed, resume, limits",
    "layout": "the dataset layout's own options (SegmentationDataModule's options mapping)",
}


def opt(
    default: Any,
    help: str = "",
    *,
    group: str,
    choices: Callable[[], tuple[str, ...]] | None = None,
) -> Any:
    """A config field: its help text (shown by --help and in the config reference), the group
    it belongs to (see :data:`GROUPS`), and its allowed values when they come from a registry
    rather than a ``Literal`` annotation (a function, read when used, so that entries
    registered later count)."""
    metadata = {"help": help, "group": group, "choices": choices}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def _layout_fields() -> dict[str, tuple[Any, dataclasses.Field]]:
    """A config field (group ``layout``) per option the registered dataset layouts declare:
    its type from the option's choices, parser and default."""
    fields = {}
    for option in LAYOUT_OPTIONS.values():
        kind: Any = Literal[option.choices] if option.choices else option.type
        if option.default is None:
            kind = kind | None
        fields[option.name] = (kind, opt(option.default, option.help, group="layout"))
    return fields


@dataclass
class TrainConfig:
    """Every option of ``unet-resnet train``; the defaults are the guide's recipe."""

    data: str | None = opt(None, "dataset root", group="data")
    dataset: str = opt("folder", "layout of DATA", group="data", choices=layout_names)
    num_classes: int | None = opt(None, "needed when DATA has no classes.json", group="data")
    out: str = opt("runs/train", "run folder", group="run")
    image_size: int | str = opt(256, 'training crop: side, or "H,W" for wide crops', group="data")
    task: TaskName = opt(
        "multiclass",
        "multiclass: one class per pixel (softmax); multilabel: overlapping classes, one "
        "binary mask per class (a sigmoid each), see docs/data.md",
        group="data",
    )
    augment: AugmentPreset = opt(
        "auto",
        "augmentation preset; auto = light (crops, flips) for short schedules or small "
        "datasets, default (+ scale, rotation, brightness/contrast) for long ones",
        group="data",
    )
    orientation: Orientation = opt(
        "auto",
        "do the images have an up? upright: flips left-right only; free: also top-bottom; "
        "auto = free for raster/volume layouts and images that are not 8-bit (microscopy, "
        "scans, reflectance), else upright",
        group="data",
    )
    normalization: Normalization = opt(
        "auto", "imagenet for 8-bit RGB with imagenet weights", group="data"
    )
    ignore_index: int | None = opt(None, "default: classes.json's, else 255", group="data")
    check_data: bool = opt(True, "run check-data before the first epoch", group="data")
    workers: int | str = opt(
        "auto",
        "DataLoader worker processes per training process; auto = the cores shared among "
        "the training processes, one left for each, 2 to 8",
        group="data",
    )
    foreground_oversampling: float = opt(
        0.0,
        "nifti: share of slices drawn that contain foreground (0 = no oversampling)",
        group="data",
    )
    samples_per_epoch: int = opt(1000, "raster: random windows per training epoch", group="data")
    # The dataset layouts' own options, one field each, as the layouts declare them
    # (data/layouts/): their flags, YAML keys and docs rows follow like every other field's.
    for _name, (_kind, _field) in _layout_fields().items():
        __annotations__[_name] = _kind
        vars()[_name] = _field
    del _name, _kind, _field
    layout_options: dict[str, Any] = field(
        default_factory=dict,
        metadata={
            "help": "options of layouts registered after the config was defined (plug-ins), "
            "by name; each also has its flag",
            "group": "layout",
            "choices": None,
            "flag": False,
        },
    )
    context_slices: int = opt(
        0,
        "nifti: 2.5D input, this many neighbouring slices on each side as extra channels",
        group="data",
    )
    modality: Modality = opt(
        "none",
        "nifti: intensity normalisation; ct = clip to the training foreground's 0.5-99.5 "
        "percentiles and z-score with its statistics, mr = per-case z-score, none = as stored",
        group="data",
    )
    target_spacing: float | None = opt(
        None,
        "nifti: resample the in-plane axes to voxels of this size in mm (labels by nearest "
        "neighbour; predictions are resampled back); None = as stored",
        group="data",
    )
    folds: int = opt(
        0,
        "k-fold cross-validation over the training cases (by case, never by slice); 0 = off, "
        "the val split validates",
        group="data",
    )
    fold: int = opt(0, "with --folds: the fold held out for validation (0..folds-1)", group="data")
    splits: str | None = opt(
        None,
        "with --folds: the splits.json to read or write; default OUT/splits.json",
        group="data",
    )
    encoder: str = opt(
        "resnet50",
        "torchvision ResNet (resnet18/34/50/101/152, resnext50_32x4d, wide_resnet50_2, ...) "
        "or a timm backbone as tu-NAME (tu-convnext_tiny, tu-efficientnet_b0; timm extra)",
        group="model",
    )
    encoder_weights: str | None = opt(
        "imagenet",
        "imagenet | none | torchvision weights name | PATH (.pth/.safetensors)",
        group="model",
    )
    upsampling_method: UpsamplingMethod = opt(
        "conv_transpose",
        "decoder upsampling: learned transposed conv (the guide's) or bilinear",
        group="model",
    )
    freeze_encoder_epochs: int = opt(
        0, "train the decoder only for this many epochs first", group="optim"
    )
    epochs: int = opt(50, "passes over the training set", group="trainer")
    batch_size: int = opt(8, "images per step (per device)", group="data")
    lr: float = opt(1e-3, "peak learning rate (the guide's 1e-3)", group="optim")
    optimizer: Optimizer = opt(
        "adam", "adam (the guide's), adamw or sgd (with Nesterov momentum)", group="optim"
    )
    weight_decay: float = opt(0.0, "L2 penalty (decoupled for adamw)", group="optim")
    momentum: float = opt(0.9, "sgd only", group="optim")
    scheduler: Scheduler = opt("cosine", "cosine decay after a linear warmup", group="optim")
    warmup_epochs: float = opt(1.0, "linear warmup length for the cosine schedule", group="optim")
    loss: LossName = opt(
        "ce", "ce (the guide's), dice, ce_dice, focal, lovasz or tversky", group="optim"
    )
    class_weights: list[float] | str | None = opt(
        None, 'list, or "balanced" (median frequency)', group="optim"
    )
    thresholds: list[float] | str | None = opt(
        None,
        "multilabel: per-class decision thresholds (one value, or one per class; default "
        '0.5), or "tune" to choose each on the validation split; saved in the checkpoint',
        group="optim",
    )
    calibrate: bool = opt(
        True,
        "at the end, fit a temperature on the validation split (calibrated probabilities; "
        "labels unchanged) and store it in best.pt; one per class for multilabel models",
        group="trainer",
    )
    accumulate_grad_batches: int = opt(
        1, "sum gradients over this many batches per optimiser step", group="trainer"
    )
    gradient_clip: float | None = opt(
        None, "clip the gradient norm to this value; None = off", group="trainer"
    )
    early_stopping_patience: int | None = opt(
        None, "epochs without val mIoU gain; None = off", group="trainer"
    )
    precision: Precision = opt(
        "auto",
        "mixed precision: bf16 where the hardware runs it natively, else fp32",
        group="trainer",
    )
    channels_last: bool = opt(
        True, "NHWC memory format (faster convolutions on CPU and tensor cores)", group="optim"
    )
    gemm_convolutions: bool = opt(
        True,
        "CPU: train 2x2 upsampling and convolutions over few pixels (the bridge) as matrix "
        "products, where oneDNN's kernels are slow (docs/performance.md); false = PyTorch's "
        "kernels everywhere",
        group="optim",
    )
    keep_freed_memory: bool = opt(
        True,
        "Linux: keep memory freed between steps for reuse instead of handing it back to the "
        "system (1.4x faster CPU steps, about 10-25% more peak memory; returned when "
        "training ends)",
        group="run",
    )
    deterministic: bool = opt(
        False,
        "deterministic algorithms only (no cuDNN autotuning): identical results run after "
        "run and across a resume on GPUs too, at some speed; an operation without a "
        "deterministic implementation then warns",
        group="trainer",
    )
    accelerator: str = opt("auto", "cpu | gpu | auto", group="trainer")
    devices: str = opt("auto", "number of devices, or auto", group="trainer")
    strategy: str = opt("auto", "auto | ddp | ddp_spawn | ...", group="trainer")
    num_nodes: int = opt(
        1, "machines for multi-node DDP (launch with torchrun or SLURM)", group="trainer"
    )
    seed: int = opt(0, "seed for weights, shuffling and augmentation", group="run")
    resume: str | None = opt(
        None, 'path to a .ckpt, or "last" for OUT/checkpoints/last.ckpt', group="run"
    )
    overwrite: bool = opt(
        False,
        "replace an earlier run in --out (without it, an existing run is an error)",
        group="run",
    )
    init_from: str | None = opt(
        None,
        "fine-tune: start from this checkpoint's weights, architecture and normalisation "
        "(its classes and input channels must be the data's)",
        group="run",
    )
    max_minutes: float | None = opt(None, "stop training after this long", group="trainer")
    limit_train_batches: float = opt(
        1.0, "fraction (<= 1) or number of batches per epoch", group="trainer"
    )
    limit_val_batches: float = opt(
        1.0, "fraction (<= 1) or number of validation batches", group="trainer"
    )
    val_every: int | str = opt(
        "auto",
        "validate every N epochs; auto = every epoch unless validating costs over 10% of "
        "training, and always the last epoch",
        group="trainer",
    )
    checkpoint_every: int | str = opt(
        "auto",
        "write last.ckpt every N epochs; auto = when it costs at most 5% of training time, "
        "and always the last epoch",
        group="trainer",
    )
    log_images_every: int = opt(
        5, "epochs between validation image grids in TensorBoard", group="trainer"
    )
    logger: list[str] | str = opt(
        ["tensorboard"],
        "experiment loggers, comma-separated: tensorboard, csv, mlflow, wandb; or none",
        group="run",
    )
    experiment_name: str = opt(
        "unet-resnet", "mlflow experiment / wandb project the run is logged under", group="run"
    )
    tracking_uri: str | None = opt(
        None, "mlflow tracking URI; default $MLFLOW_TRACKING_URI, else OUT/mlruns", group="run"
    )
    progress: bool = opt(True, "progress bars and the model summary", group="trainer")

    def __post_init__(self) -> None:
        self.precision = PRECISION_ALIASES.get(str(self.precision), self.precision)
        for f in dataclasses.fields(self):
            choices = field_choices(f)
            value = getattr(self, f.name)
            if choices and value not in choices:
                raise ConfigError(
                    f"Invalid {f.name} {value!r}. Choose one of: {', '.join(map(str, choices))}."
                )
        unknown = sorted(set(self.layout_options) - set(LAYOUT_OPTIONS))
        if unknown:
            raise ConfigError(
                f"Unknown layout option(s) {unknown}; the layouts declare: "
                f"{', '.join(sorted(LAYOUT_OPTIONS))}."
            )
        if isinstance(self.encoder_weights, str) and self.encoder_weights.lower() == "none":
            self.encoder_weights = None
        if isinstance(self.image_size, str):
            try:
                sides = [int(v) for v in self.image_size.replace("x", ",").split(",")]
            except ValueError:
                raise ConfigError(
                    f"Invalid --image-size {self.image_size!r}: a side in pixels, or H,W."
                ) from None
            self.image_size = sides[0] if len(sides) == 1 else sides
        if isinstance(self.image_size, tuple):
            self.image_size = list(self.image_size)
        sides = self.image_size if isinstance(self.image_size, list) else [self.image_size]
        if len(sides) not in (1, 2) or any(not isinstance(v, int) or v < 16 for v in sides):
            raise ConfigError(
                f"Invalid --image-size {self.image_size!r}: one or two sides of at least 16 px."
            )
        if self.workers != "auto":
            try:
                self.workers = int(self.workers)
            except (TypeError, ValueError):
                raise ConfigError(
                    f"Invalid --workers {self.workers!r}: a number of processes (>= 0) or auto."
                ) from None
        for name in ("val_every", "checkpoint_every"):
            value = getattr(self, name)
            if value != "auto":
                try:
                    value = int(value)
                except (TypeError, ValueError):
                    raise ConfigError(
                        f"Invalid {_flag(name)} {value!r}: a number of epochs (>= 1) or auto."
                    ) from None
                setattr(self, name, value)
        if isinstance(self.logger, str):
            self.logger = [v.strip() for v in self.logger.split(",") if v.strip()]
        if not isinstance(self.logger, list) or not all(isinstance(v, str) for v in self.logger):
            raise ConfigError(f"Invalid --logger {self.logger!r}: names separated by commas.")
        self.logger = [v for v in self.logger if v.lower() != "none"]
        check_logger_names(self.logger)
        if isinstance(self.class_weights, str) and self.class_weights != "balanced":
            try:
                self.class_weights = [float(v) for v in self.class_weights.split(",")]
            except ValueError:
                raise ConfigError(
                    f"Invalid --class-weights {self.class_weights!r}: numbers separated by "
                    'commas (one per class), or "balanced".'
                ) from None
        if isinstance(self.class_weights, list) and not all(
            math.isfinite(w) and w >= 0 for w in self.class_weights
        ):
            raise ConfigError(
                f"Invalid --class-weights {self.class_weights}: finite and >= 0 each."
            )
        self._check_task()
        volume_flags = self.context_slices or self.modality != "none" or self.target_spacing
        if volume_flags and self.dataset not in volume_layouts():
            raise ConfigError(
                "--context-slices, --modality and --target-spacing apply to volumes (--dataset "
                f"{' or '.join(volume_layouts())}), not to --dataset {self.dataset}."
            )
        if self.folds and not 0 <= self.fold < self.folds:
            raise ConfigError(
                f"Invalid --fold {self.fold}: one of 0..{self.folds - 1} with --folds {self.folds}."
            )
        for name, (low, high, strict) in _RANGES.items():
            value = getattr(self, name)
            if value is None or value == "auto":
                continue
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            ok = ok and math.isfinite(value) and (value > low if strict else value >= low)
            ok = ok and (high is None or value <= high)
            if not ok:
                bound = f"> {low}" if strict else f">= {low}"
                bound += f" and <= {high}" if high is not None else ""
                raise ConfigError(f"Invalid {_flag(name)} {value!r}: must be a number {bound}.")
        from unet_resnet.models.encoders import check_encoder_name

        try:
            check_encoder_name(self.encoder)
        except ConfigError as exc:
            raise ConfigError(f"Invalid --encoder: {exc}") from None

    def _check_task(self) -> None:
        from unet_resnet.losses import LOSSES

        if self.loss not in LOSSES[self.task]:
            raise ConfigError(
                f"--loss {self.loss} is not available for --task {self.task}. Choose one of: "
                f"{', '.join(LOSSES[self.task])}."
            )
        if isinstance(self.thresholds, str) and self.thresholds != "tune":
            try:
                self.thresholds = [float(v) for v in self.thresholds.split(",")]
            except ValueError:
                raise ConfigError(
                    f"Invalid --thresholds {self.thresholds!r}: numbers between 0 and 1 "
                    'separated by commas (one, or one per class), or "tune".'
                ) from None
        if isinstance(self.thresholds, int | float):
            self.thresholds = [float(self.thresholds)]
        if self.thresholds is None:
            return
        if self.task != "multilabel":
            raise ConfigError(
                "--thresholds applies to --task multilabel; a multiclass model takes the most "
                "likely class."
            )
        if isinstance(self.thresholds, list):
            check_thresholds(self.thresholds, len(self.thresholds))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def group(self, name: str) -> dict[str, Any]:
        """The options of one group (see :data:`GROUPS`) as keyword arguments."""
        if name not in GROUPS:
            raise ConfigError(f"Unknown option group {name!r}: {', '.join(GROUPS)}.")
        values = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.metadata["group"] == name
        }
        if name == "layout":  # one mapping, whichever layout declared the option
            values.update(values.pop("layout_options"))
        return values

    def save(self, path: str | os.PathLike, *, comment: str = "") -> None:
        """Write the options as YAML (usable as ``--config``), with an optional comment."""
        header = "".join(f"# {line}\n" for line in comment.splitlines())
        Path(path).write_text(header + yaml.safe_dump(self.to_dict(), sort_keys=False))


_TYPE_HINTS = typing.get_type_hints(TrainConfig)

#: Numeric options: (lower bound, upper bound or None, lower bound excluded).
_RANGES: dict[str, tuple[float, float | None, bool]] = {
    "epochs": (1, None, False),
    "batch_size": (1, None, False),
    "accumulate_grad_batches": (1, None, False),
    "num_nodes": (1, None, False),
    "samples_per_epoch": (1, None, False),
    "val_every": (1, None, False),
    "checkpoint_every": (1, None, False),
    "workers": (0, None, False),
    "freeze_encoder_epochs": (0, None, False),
    "folds": (0, None, False),
    "context_slices": (0, 16, False),
    "target_spacing": (0, None, True),
    "fold": (0, None, False),
    "log_images_every": (0, None, False),
    "slice_axis": (0, 2, False),
    "lr": (0, None, True),
    "weight_decay": (0, None, False),
    "momentum": (0, 1, False),
    "warmup_epochs": (0, None, False),
    "foreground_oversampling": (0, 1, False),
    "limit_train_batches": (0, None, True),
    "limit_val_batches": (0, None, False),
    "max_minutes": (0, None, True),
    "gradient_clip": (0, None, True),
    "early_stopping_patience": (1, None, False),
    "num_classes": (1, None, False),
    "ignore_index": (0, None, False),
}


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def field_choices(f: dataclasses.Field) -> tuple | None:
    """A field's allowed values: from the registry named in its metadata, or its ``Literal``."""
    if f.metadata.get("choices"):
        return tuple(f.metadata["choices"]())
    annotation = _TYPE_HINTS[f.name]
    if get_origin(annotation) is Literal:
        return get_args(annotation)
    return None
