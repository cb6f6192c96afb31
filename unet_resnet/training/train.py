"""``train(config)``: build the data, the model and a Lightning Trainer, fit, and report."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import yaml
from lightning.pytorch.callbacks import EarlyStopping, LearningRateMonitor
from lightning.pytorch.strategies import DDPStrategy

from unet_resnet.accel.memory import keep_freed_memory
from unet_resnet.checkpoint import CheckpointMeta
from unet_resnet.errors import ConfigError, OutputExistsError
from unet_resnet.hardware import (
    PRECISION_ALIASES,
    configure_device,
    device_class,
    resolve_train_precision,
    training_device,
)
from unet_resnet.io import remove_partials
from unet_resnet.models.encoders import encoder_mean_std
from unet_resnet.task import check_thresholds
from unet_resnet.training.callbacks import (
    AtomicCheckpointIO,
    DistributedConsistency,
    ExperimentRecord,
    ExportCheckpoints,
    MetricsHistory,
    ResumeCheckpoint,
    ValidationImages,
)
from unet_resnet.training.config import TrainConfig
from unet_resnet.training.datamodule import SegmentationDataModule
from unet_resnet.training.loggers import build_loggers
from unet_resnet.training.module import SegmentationModule

__all__ = [
    "TrainResult",
    "balanced_class_weights",
    "build_data",
    "build_model",
    "build_trainer",
    "fit",
    "prepare_run",
    "summarise",
    "train",
]


@dataclass
class TrainResult:
    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_miou: float | None
    best_epoch: int | None
    epochs_completed: int
    seconds: float
    precision: str
    interrupted: bool
    val_scores: dict[str, Any] | None


def balanced_class_weights(pixel_counts: np.ndarray) -> list[float]:
    """Median-frequency balancing (Eigen & Fergus): weight_c = median(freq) / freq_c."""
    freq = pixel_counts / max(pixel_counts.sum(), 1)
    present = freq > 0
    median = np.median(freq[present]) if present.any() else 1.0
    weights = np.where(present, median / np.maximum(freq, 1e-12), 0.0)
    return [round(float(w), 4) for w in weights]


#: ``val_every="auto"`` keeps validation at most this share of the training time.
VALIDATION_SHARE = 0.10


def validation_interval(
    *, n_train: int, train_pixels: int, n_val: int, val_pixels: int, epochs: int
) -> int:
    """Epochs between validations so that validating costs at most :data:`VALIDATION_SHARE`
    of training (a forward pass costs about a third of a training step per pixel), rounded up
    to a divisor of ``epochs`` so that the last epoch is always validated."""
    if n_val == 0 or epochs <= 1:
        return 1
    ratio = (n_val * val_pixels / 3) / max(1, n_train * train_pixels)
    # at most every epochs (the last one), so the search for a divisor ends
    every = min(epochs, max(1, math.ceil(ratio / VALIDATION_SHARE)))
    while epochs % every:
        every += 1
    return every


def _devices(value: str) -> int | str:
    return int(value) if str(value).isdigit() else value


def build_trainer(
    config: TrainConfig,
    run_dir: Path,
    *,
    resuming: bool,
    extra_callbacks: Sequence[L.Callback] = (),
    val_every: int = 1,
) -> L.Trainer:
    checkpoints = run_dir / "checkpoints"
    export = ExportCheckpoints(checkpoints)
    loggers = build_loggers(
        config.logger,
        run_dir,
        experiment_name=config.experiment_name,
        tracking_uri=config.tracking_uri,
    )
    attach = {id(logger): kind.attach_file for kind, logger in loggers if kind.attach_file}
    callbacks: list[L.Callback] = [
        export,
        MetricsHistory(run_dir),
        ValidationImages(config.log_images_every),
        *([LearningRateMonitor(logging_interval="epoch")] if loggers else []),
        DistributedConsistency(run_dir),
        ExperimentRecord(config.to_dict(), attach, export),
        *extra_callbacks,
    ]
    if config.early_stopping_patience:
        callbacks.append(
            EarlyStopping(monitor="val/miou", mode="max", patience=config.early_stopping_patience)
        )
    callbacks.append(ResumeCheckpoint(checkpoints / "last.ckpt", config.checkpoint_every, export))
    max_time = None
    if config.max_minutes:
        max_time = {"minutes": config.max_minutes}
    precision = resolve_train_precision(config.precision, config.accelerator)
    # Process-wide GPU settings of the device class (cuDNN autotuning for the fixed-size
    # crops, TF32 under mixed precision); in each DDP process too, as each runs train().
    configure_device(
        training_device(config.accelerator),
        precision=PRECISION_ALIASES[precision],
        fixed_size=not config.deterministic,
    )
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=config.epochs,
        max_time=max_time,
        accelerator=config.accelerator,
        devices=_devices(config.devices),
        strategy=config.strategy,
        num_nodes=config.num_nodes,
        precision=precision,
        deterministic="warn" if config.deterministic else None,
        benchmark=False if config.deterministic else None,
        callbacks=callbacks,
        logger=[logger for _, logger in loggers] or False,
        plugins=[AtomicCheckpointIO()],
        enable_checkpointing=False,  # ResumeCheckpoint and ExportCheckpoints write ours
        accumulate_grad_batches=config.accumulate_grad_batches,
        gradient_clip_val=config.gradient_clip,
        limit_train_batches=_limit(config.limit_train_batches),
        limit_val_batches=_limit(config.limit_val_batches),
        # A sanity check draws from the random streams that resume restores exactly.
        num_sanity_val_steps=0 if resuming else 2,
        log_every_n_steps=10,
        check_val_every_n_epoch=val_every,
        enable_progress_bar=config.progress,
        enable_model_summary=config.progress,
    )
    if config.freeze_encoder_epochs and isinstance(trainer.strategy, DDPStrategy):
        # The frozen encoder's parameters get no gradient for a while: DDP must not wait for
        # them (it would stop with "Expected to have finished reduction"). Set on the strategy
        # Lightning chose, whichever launcher ("auto" on several devices, ddp, ddp_spawn, ...).
        trainer.strategy._ddp_kwargs["find_unused_parameters"] = True
    return trainer


def _auto_val_every(data: SegmentationDataModule, config: TrainConfig) -> int:
    if data.val_set is None or len(data.val_set) == 0:
        return 1
    size = config.image_size
    crop = size * size if isinstance(size, int) else size[0] * size[1]
    first = data.val_set.load(0)[0]
    return validation_interval(
        n_train=len(data.train_set),
        train_pixels=crop,
        n_val=len(data.val_set),
        val_pixels=first.shape[0] * first.shape[1],
        epochs=config.epochs,
    )


def _launcher_rank() -> int:
    """This process's rank as set by the launcher (torchrun, SLURM, Lightning's DDP): the
    other ranks find the run folder the first one has already started."""
    for name in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def _saved_choice(path: Path, key: str, missing: str | None = None) -> str | None:
    """The concrete value of ``key`` an earlier run of this folder trained with; ``missing``
    when its config.yaml predates the key (the value that release used), None when unreadable.
    """
    try:
        saved = yaml.safe_load(path.read_text())
        value = saved.get(key, missing)
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return value if value not in (None, "auto") else None


def _resume_epoch(path: Path) -> int:
    """The epoch a run resumed from ``path`` starts with: the epochs it had processed (the
    checkpoint is written at the end of an epoch, before Lightning counts it completed)."""
    import torch

    try:
        # Memory-mapped: only the loop state is read, not the GBs of weights and optimizer.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(state["loops"]["fit_loop"]["epoch_progress"]["current"]["processed"])
    except Exception:  # not a checkpoint of ours: the epoch will come from set_epoch
        return 0


def _limit(value: float) -> float | int:
    return int(value) if value > 1 else float(value)


def train(config: TrainConfig, *, callbacks: Sequence[L.Callback] = ()) -> TrainResult:
    """Train as ``unet-resnet train`` does; returns where the checkpoints are and the scores.

    ``callbacks`` are added to the Trainer's own (checkpointing, metrics history, images).
    The run is a few named steps, each callable on its own: :func:`prepare_run`,
    :func:`build_data`, :func:`build_model`, :func:`build_trainer`, :func:`fit` and
    :func:`summarise`.
    """
    run_dir, resume_path = prepare_run(config)
    L.seed_everything(config.seed, workers=True, verbose=False)
    data = build_data(config, run_dir, resume_path)
    module, class_weights = build_model(config, data)
    _record_config(config, data, run_dir)
    val_every = config.val_every
    if val_every == "auto":
        # The plateau scheduler steps on each epoch's validation score.
        val_every = 1 if config.scheduler == "plateau" else _auto_val_every(data, config)
    trainer = build_trainer(
        config,
        run_dir,
        resuming=resume_path is not None,
        extra_callbacks=callbacks,
        val_every=val_every,
    )
    seconds = fit(trainer, module, data, config, resume_path)
    return summarise(trainer, module, data, config, run_dir, seconds, class_weights)


def prepare_run(config: TrainConfig) -> tuple[Path, Path | None]:
    """The run folder and the checkpoint to resume from (None for a new run), after checking
    that an earlier run is neither overwritten unasked nor resumed from nothing, and clearing
    what a replaced run or an interrupted write left."""
    if not config.data:
        raise ConfigError("No dataset given: pass --data DATA (or data: in the --config file).")
    run_dir = Path(config.out)
    resume_path = None
    if config.resume:
        resume_path = (
            run_dir / "checkpoints" / "last.ckpt"
            if config.resume == "last"
            else Path(config.resume)
        )
        if not resume_path.is_file():
            raise ConfigError(
                f"Cannot resume: {resume_path} does not exist. Resume needs the "
                "checkpoints/last.ckpt of an earlier run with the same --out."
            )
    elif (
        _launcher_rank() == 0
        and not config.overwrite
        and ((run_dir / "checkpoints").is_dir() or (run_dir / "config.yaml").is_file())
    ):
        raise OutputExistsError(
            f"{run_dir} already holds a training run. Pass --resume to continue it, "
            "--overwrite to replace it, or choose another --out."
        )
    if run_dir.is_dir() and _launcher_rank() == 0:
        remove_partials(run_dir)
        if config.overwrite and not config.resume:
            # Nothing of the replaced run may pass for this one's (best.pt above all).
            shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
            for name in ("summary.json", "metrics.csv", "curves.png"):
                (run_dir / name).unlink(missing_ok=True)
    return run_dir, resume_path


def build_data(
    config: TrainConfig, run_dir: Path, resume_path: Path | None = None
) -> SegmentationDataModule:
    """The data module of the run, set up (data problems surface here, before any model is
    built or epoch run); a resumed run keeps the choices ``auto`` made when it started."""
    data_options = config.group("data")
    if resume_path is not None:
        # The resumed run keeps what auto chose when it started, even if the schedule is
        # extended now (augment) or the rule changed since (orientation: upright before it
        # existed).
        saved = run_dir / "config.yaml"
        if config.augment == "auto":
            data_options["augment"] = _saved_choice(saved, "augment") or "auto"
        if config.orientation == "auto":
            data_options["orientation"] = _saved_choice(saved, "orientation", "upright") or "auto"
    if config.folds and not config.splits:
        data_options["splits"] = str(run_dir / "splits.json")
    data = SegmentationDataModule(
        **data_options,
        options=config.group("layout"),
        pretrained=config.encoder_weights is not None,
        pretrained_stats=encoder_mean_std(config.encoder),
        epochs=config.epochs,
    )
    if config.init_from and Path(config.init_from).is_file():
        # A fine-tune feeds the model what it learned on: its checkpoint's normalisation.
        from unet_resnet.checkpoint import read_meta

        start = read_meta(config.init_from)
        data.mean, data.std = list(start.mean), list(start.std)
    data.setup("fit")  # data problems surface here, before any model is built or epoch run
    if resume_path is not None:
        data.start_epoch = _resume_epoch(resume_path)
    return data


def build_model(
    config: TrainConfig, data: SegmentationDataModule
) -> tuple[SegmentationModule, list[float] | None]:
    """The Lightning module, its checkpoint metadata taken from the data (classes,
    normalisation, how the splits are read), and the class weights it uses."""
    classes = data.classes
    class_weights = config.class_weights
    if class_weights == "balanced":
        class_weights = balanced_class_weights(data.class_pixel_counts())
    if class_weights is not None and len(class_weights) != classes.num_classes:
        raise ConfigError(
            f"class_weights has {len(class_weights)} values but there are "
            f"{classes.num_classes} classes ({', '.join(classes.names)})."
        )
    model = config.group("model")
    encoder_weights = model.pop("encoder_weights")
    start = _start_from(config.init_from, data) if config.init_from else None
    if start is not None:  # the architecture (and weights) of the checkpoint fine-tuned
        model = {
            k: v for k, v in start[1].model_config.items() if k not in ("n_classes", "in_channels")
        }
        encoder_weights = None
    meta = CheckpointMeta(
        model_config={
            "n_classes": classes.num_classes,
            "in_channels": data.in_channels,
            **model,
        },
        classes=classes,
        mean=data.mean,
        std=data.std,
        image_size=config.image_size,
        image_dtype=data.image_dtype,
        volume=data.volume_options(),
        split=data.split_options(),
        task=config.task,
        resolution_cm=data.ground_resolution_cm(),
    )
    thresholds = config.thresholds
    if isinstance(thresholds, list):
        try:
            thresholds = check_thresholds(thresholds, classes.num_classes)
        except ConfigError as exc:
            raise ConfigError(f"--thresholds: {exc}") from None
    module = SegmentationModule(
        meta.to_dict(),
        encoder_weights=encoder_weights,
        **{**config.group("optim"), "class_weights": class_weights, "thresholds": thresholds},
    )
    if start is not None:
        module.model.load_state_dict(start[0].state_dict())
    return module, class_weights


def _start_from(path: str, data: SegmentationDataModule):
    """The checkpoint a fine-tune starts from: ``(model, meta)``, checked against the data."""
    from unet_resnet.checkpoint import load_checkpoint

    if not Path(path).exists():
        raise ConfigError(f"--init-from {path}: no such checkpoint.")
    model, meta = load_checkpoint(path)
    if list(meta.classes.names) != list(data.classes.names):
        raise ConfigError(
            f"--init-from {path} has classes {list(meta.classes.names)}, the data "
            f"{list(data.classes.names)}; fine-tuning needs the same classes in the same order."
        )
    if meta.model_config["in_channels"] != data.in_channels:
        raise ConfigError(
            f"--init-from {path} takes {meta.model_config['in_channels']} input channels, the "
            f"data has {data.in_channels}."
        )
    return model, meta


def _record_config(config: TrainConfig, data: SegmentationDataModule, run_dir: Path) -> None:
    """``config.yaml`` in the run folder with what ``auto`` chose (and why)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    saved = dataclasses.replace(
        config, augment=data.augment_chosen, orientation=data.orientation_chosen
    )
    if _launcher_rank() == 0:
        saved.save(
            run_dir / "config.yaml",
            comment=(
                f"augment: {config.augment} -> {data.augment_chosen} ({data.augment_reason})\n"
                f"orientation: {config.orientation} -> {data.orientation_chosen} "
                f"({data.orientation_reason})"
            ),
        )
    if config.progress:
        print(f"augmentation: {data.augment_chosen} ({data.augment_reason})")
        print(f"orientation: {data.orientation_chosen} ({data.orientation_reason})")


def fit(
    trainer: L.Trainer,
    module: SegmentationModule,
    data: SegmentationDataModule,
    config: TrainConfig,
    resume_path: Path | None = None,
) -> float:
    """Run the training; the seconds it took. Ctrl-C ends it gracefully (the last completed
    epoch is in ``checkpoints/last.ckpt``) instead of exiting."""
    start = time.perf_counter()
    with warnings.catch_warnings():
        # Lightning's advice about worker counts and small logging intervals is noise here.
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*number of training batches.*")
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")
        warnings.filterwarnings("ignore", message=".*not supported by the model summary.*")
        # Validation scores come from torchmetrics, already summed over the ranks.
        warnings.filterwarnings("ignore", message=".*when logging on epoch level in distrib.*")
        try:
            # glibc keeping freed memory: a CPU-training trick, off for GPU runs
            cpu_trick = device_class(training_device(config.accelerator))
            with keep_freed_memory(config.keep_freed_memory and cpu_trick.cpu_memory_reuse):
                trainer.fit(module, datamodule=data, ckpt_path=resume_path)
        except SystemExit:
            # Lightning shuts down gracefully on Ctrl-C, then exits; the last completed epoch
            # is in checkpoints/last.ckpt. Report instead of exiting from library code.
            if not trainer.interrupted:
                raise
    seconds = time.perf_counter() - start
    return seconds


def calibrate_best(
    config: TrainConfig, data: SegmentationDataModule, best: Path, run_dir: Path
) -> dict[str, Any] | None:
    """With ``config.calibrate``: the temperature of ``best.pt`` fitted on the validation
    split (full images through the Segmenter in fp32, as ``unet-resnet calibrate`` does),
    written into ``best.pt``'s metadata, with ``calibration.json`` and
    ``reliability.png`` in the run folder. Returns what ``summary.json`` records: the
    temperature and ECE before and after, or why there is none (no validation split).
    Multilabel models get one temperature per class."""
    if not config.calibrate:
        return None
    dataset = data.val_set
    if dataset is None or not len(dataset) or not hasattr(dataset, "load"):
        return {"skipped": "no validation split"}
    if not best.is_file():
        return {"skipped": "no best.pt"}
    from unet_resnet.checkpoint import load_checkpoint, save_checkpoint
    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.evaluate import calibrate, write_calibration

    # fp32 and unpacked: nothing to time, and the probabilities the temperature is fitted to
    segmenter = Segmenter.from_checkpoint(
        best, backend="torch", precision="fp32", pack_weights=False, tile_size=1024,
        temperature=1.0,
    )  # fmt: skip
    report = calibrate(segmenter, dataset, split="val")
    model, meta = load_checkpoint(best)
    meta.temperature = report["temperature"]
    save_checkpoint(best, model, meta)
    write_calibration(report, run_dir / "calibration.json", run_dir / "reliability.png")
    return {
        "temperature": report["temperature"],
        "ece_before": report["before"]["ece"],
        "ece_after": report["after"]["ece"],
        "pixels": report["pixels"],
    }


def summarise(
    trainer: L.Trainer,
    module: SegmentationModule,
    data: SegmentationDataModule,
    config: TrainConfig,
    run_dir: Path,
    seconds: float,
    class_weights: list[float] | None,
) -> TrainResult:
    """The run's result, and ``summary.json`` in the run folder (on the first process)."""
    export = next(c for c in trainer.callbacks if isinstance(c, ExportCheckpoints))
    result = TrainResult(
        run_dir=run_dir,
        best_checkpoint=run_dir / "checkpoints" / "best.pt",
        last_checkpoint=run_dir / "checkpoints" / "last.pt",
        best_miou=None if export.best_epoch is None else export.best_score,
        best_epoch=export.best_epoch,
        epochs_completed=trainer.current_epoch,
        seconds=seconds,
        precision=str(trainer.precision),
        interrupted=trainer.interrupted,
        val_scores=module.last_val_scores,
    )
    calibration = None
    if trainer.is_global_zero:
        calibration = calibrate_best(config, data, result.best_checkpoint, run_dir)
        summary = {
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
            "train_images": len(data.train_set),
            "fold": None
            if not config.folds
            else {"fold": config.fold, "of": config.folds, "held_out": data.fold_cases},
            "val_images": 0 if data.val_set is None else len(data.val_set),
            "best_miou": result.best_miou,
            "best_epoch": result.best_epoch,
            "epochs_completed": result.epochs_completed,
            "seconds": round(seconds, 1),
            "precision": result.precision,
            "interrupted": result.interrupted,
            "class_weights": class_weights,
            "augment": {
                "asked": config.augment,
                "chosen": data.augment_chosen,
                "why": data.augment_reason,
            },
            "orientation": {
                "asked": config.orientation,
                "chosen": data.orientation_chosen,
                "why": data.orientation_reason,
            },
            "last_val": None
            if result.val_scores is None
            else {k: v for k, v in result.val_scores.items() if k != "confusion_matrix"},
            "last_val_confusion_matrix": (result.val_scores or {}).get("confusion_matrix"),
            "calibration": calibration,
        }
        (run_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return result
