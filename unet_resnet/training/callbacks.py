"""Callbacks and plugins that shape the run folder.

- :class:`ExportCheckpoints`: ``checkpoints/best.pt`` (by validation mIoU) and ``last.pt`` in
  the prediction format (weights + metadata).
- :class:`MetricsHistory`: ``metrics.csv`` (one row per epoch) and ``curves.png``.
- :class:`ValidationImages`: TensorBoard grids of validation images with true and predicted
  masks.
- :class:`AtomicCheckpointIO`: Lightning's resume checkpoints written via a temporary file and
  a rename, so a killed process never leaves a half-written ``last.ckpt``.
"""

from __future__ import annotations

import copy
import csv
import math
import os
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from unet_resnet.checkpoint import save_checkpoint, save_state_dict_checkpoint
from unet_resnet.io import atomic_path
from unet_resnet.visualize import colorize, display_rgb, overlay

__all__ = [
    "AtomicCheckpointIO",
    "DistributedConsistency",
    "ExportCheckpoints",
    "MetricsHistory",
    "ResumeCheckpoint",
    "ValidationImages",
]


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        if "://" in str(path):  # remote filesystems: fsspec handles it
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(path) as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


#: ``checkpoint_every="auto"`` writes ``last.ckpt`` when the time since the last write is at
#: least this many times what the last write took: checkpointing then costs at most about
#: 1/20 = 5% of training, and a crash loses at most that much work.
CHECKPOINT_OVERHEAD_FACTOR = 20
#: Before the first write is timed, its duration is estimated from the checkpoint's size
#: (weights plus two Adam moments) at this write speed, bytes per second (a conservative disk).
ASSUMED_WRITE_SPEED = 250e6


class ExportCheckpoints(L.Callback):
    """Keep ``best.pt`` (highest validation mIoU) and ``last.pt`` in the prediction format.

    An improvement is kept in memory and written when :class:`ResumeCheckpoint` writes
    ``last.ckpt`` (just before it, so the two files always agree about the best epoch) and at
    the end of training, not at every improvement.
    """

    def __init__(self, dirpath: str | os.PathLike) -> None:
        self.dirpath = Path(dirpath)
        self.best_score = -math.inf
        self.best_epoch: int | None = None
        self.best_scores: dict[str, Any] | None = None
        self._pending: tuple[dict[str, torch.Tensor], Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        return {
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "best_scores": self.best_scores,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best_score = state_dict["best_score"]
        self.best_epoch = state_dict["best_epoch"]
        self.best_scores = state_dict.get("best_scores")

    def _meta(self, trainer: L.Trainer, module, scores: dict | None):
        meta = copy.deepcopy(module.meta)
        meta.extra = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "val": None
            if scores is None
            else {k: v for k, v in scores.items() if k != "confusion_matrix"},
        }
        return meta

    def _save(self, trainer: L.Trainer, module, name: str, scores: dict | None) -> None:
        if trainer.is_global_zero:
            save_checkpoint(self.dirpath / name, module.model, self._meta(trainer, module, scores))

    def on_validation_end(self, trainer: L.Trainer, module) -> None:
        scores = module.last_val_scores
        if trainer.sanity_checking or scores is None or math.isnan(scores["miou"]):
            return
        if scores["miou"] > self.best_score:
            self.best_score = scores["miou"]
            self.best_epoch = trainer.current_epoch
            self.best_scores = {k: v for k, v in scores.items() if k != "confusion_matrix"}
            if trainer.is_global_zero:
                state = {
                    k: v.detach().to("cpu", copy=True) for k, v in module.model.state_dict().items()
                }
                self._pending = (state, self._meta(trainer, module, scores))

    def flush(self) -> None:
        """Write a best model kept in memory to ``best.pt``."""
        if self._pending is not None:
            state, meta = self._pending
            save_state_dict_checkpoint(self.dirpath / "best.pt", state, meta)
            self._pending = None

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        self.flush()
        self._save(trainer, module, "last.pt", module.last_val_scores)
        if self.best_epoch is None:  # no validation set: the last weights are the best we have
            self._save(trainer, module, "best.pt", module.last_val_scores)


class ResumeCheckpoint(L.Callback):
    """``checkpoints/last.ckpt``: weights, optimiser, scheduler, loops, callback states and
    random streams, everything ``--resume`` needs, written at the end of an epoch through the
    Trainer's CheckpointIO (atomically with :class:`AtomicCheckpointIO`).

    ``every``: an epoch count, or ``"auto"``: whenever at least
    :data:`CHECKPOINT_OVERHEAD_FACTOR` times the last write's duration has passed since it
    (before the first write: since training started, with the duration estimated from the
    checkpoint's size), and always after the last epoch (or when training is stopping).
    Resume stays exact: it continues from the epoch the checkpoint was written at. Keep this
    callback last in the list so the states it saves include this epoch's updates.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        every: int | str = "auto",
        export: ExportCheckpoints | None = None,
    ) -> None:
        self.path = Path(path)
        self.every = every
        self.export = export
        self._last_end: float | None = None
        self._last_duration: float | None = None

    def on_train_start(self, trainer: L.Trainer, module) -> None:
        if self._last_end is None:
            size = sum(p.numel() * p.element_size() for p in module.parameters())
            self._last_end = time.monotonic()
            self._last_duration = 3 * size / ASSUMED_WRITE_SPEED

    def _due(self, trainer: L.Trainer) -> bool:
        epoch = trainer.current_epoch + 1
        if trainer.should_stop or (trainer.max_epochs and epoch >= trainer.max_epochs):
            return True
        if self.every != "auto":
            return epoch % int(self.every) == 0
        if self._last_end is None or self._last_duration is None:
            return True
        since = time.monotonic() - self._last_end
        return since >= CHECKPOINT_OVERHEAD_FACTOR * self._last_duration

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        # Ranks must agree (saving is collective under DDP): rank 0's clock decides.
        if not trainer.strategy.broadcast(self._due(trainer), src=0):
            return
        start = time.monotonic()
        if self.export is not None and trainer.is_global_zero:
            self.export.flush()
        trainer.save_checkpoint(self.path, weights_only=False)
        self._last_end = time.monotonic()
        self._last_duration = self._last_end - start


class MetricsHistory(L.Callback):
    """One CSV row per epoch, rewritten after every epoch, and a PNG of the curves, redrawn
    at most once a minute (drawing costs a few percent of a short epoch) and at the end."""

    plot_every_s = 60.0

    columns = (
        "epoch",
        "train_loss",
        "val_loss",
        "val_miou",
        "val_mean_dice",
        "val_pixel_accuracy",
        "lr",
        "seconds",
    )

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.rows: list[dict[str, Any]] = []
        self._start = time.perf_counter()
        self._plotted = -math.inf

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    def on_train_epoch_start(self, trainer, module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module) -> None:
        # Read on every rank: the epoch's training loss is averaged over the ranks when first
        # read (a collective), so reading it on rank 0 alone would leave it waiting.
        m = trainer.callback_metrics
        if not trainer.is_global_zero:
            return

        def get(key: str) -> float:
            value = m.get(key)
            return float(value) if value is not None else float("nan")

        self.rows.append(
            {
                "epoch": trainer.current_epoch,
                "train_loss": get("train/loss_epoch"),
                "val_loss": get("val/loss"),
                "val_miou": get("val/miou"),
                "val_mean_dice": get("val/mean_dice"),
                "val_pixel_accuracy": get("val/pixel_accuracy"),
                "lr": trainer.optimizers[0].param_groups[0]["lr"]
                if trainer.optimizers
                else math.nan,
                "seconds": round(time.perf_counter() - self._start, 2),
            }
        )
        self.write()

    def write(self, *, plot: bool | None = None) -> None:
        with atomic_path(self.run_dir / "metrics.csv") as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        now = time.perf_counter()
        if plot or (plot is None and now - self._plotted >= self.plot_every_s):
            plot_curves(self.rows, self.run_dir / "curves.png")
            self._plotted = now

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        if trainer.is_global_zero and self.rows:
            self.write(plot=True)


def plot_curves(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_score) = plt.subplots(1, 2, figsize=(9, 3.5))
    for key, label in (("train_loss", "train"), ("val_loss", "val")):
        ax_loss.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key, label in (
        ("val_miou", "mIoU"),
        ("val_mean_dice", "mean Dice"),
        ("val_pixel_accuracy", "pixel accuracy"),
    ):
        ax_score.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    ax_score.set_xlabel("epoch")
    ax_score.set_ylim(0, 1)
    ax_score.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90)
    plt.close(fig)


class ValidationImages(L.Callback):
    """Every ``every`` epochs: image | true mask | predicted mask rows in TensorBoard."""

    def __init__(self, every: int = 5, max_images: int = 4) -> None:
        self.every = every
        self.max_images = max_images

    def on_validation_end(self, trainer: L.Trainer, module) -> None:
        batch = module._val_batch_for_images
        if (
            self.every <= 0
            or batch is None
            or trainer.sanity_checking
            or not trainer.is_global_zero
            or trainer.current_epoch % self.every
        ):
            return
        experiment = next(
            (
                logger.experiment
                for logger in trainer.loggers
                if hasattr(getattr(logger, "experiment", None), "add_image")
            ),
            None,
        )
        if experiment is None:  # no TensorBoard among the loggers
            return
        images, preds, masks = batch
        meta = module.meta
        mean = np.asarray(meta.mean, dtype=np.float32)[:, None, None]
        std = np.asarray(meta.std, dtype=np.float32)[:, None, None]
        rows = []
        for image, pred, mask in list(zip(images, preds, masks, strict=True))[: self.max_images]:
            raw = image.float().cpu().numpy() * std + mean
            shown = display_rgb(np.moveaxis(raw, 0, -1))
            truth = _paint(mask.cpu().numpy(), meta.classes)
            guess = _paint(pred.cpu().numpy(), meta.classes)
            rows.append(np.concatenate([shown, truth, guess], axis=1))
        grid = np.concatenate(rows, axis=0)
        experiment.add_image(
            "val/image_truth_prediction",
            torch.from_numpy(grid).permute(2, 0, 1),
            global_step=trainer.current_epoch,
        )


def _paint(mask: np.ndarray, classes) -> np.ndarray:
    """Class indices, or multilabel planes (overlaps in mixed colours), as RGB."""
    if mask.ndim == 3:
        black = np.zeros((*mask.shape[1:], 3), dtype=np.uint8)
        return overlay(black, mask, classes.colors, alpha=1.0)
    return colorize(mask, classes.colors, classes.ignore_index)


class DistributedConsistency(L.Callback):
    """In multi-process runs, each rank writes ``ddp_rank{R}.json`` at the end of training.

    It holds a SHA-256 of the rank's weights and the number of pixels its (synchronised)
    validation metrics counted: equal hashes show the ranks stayed in step, and the pixel
    count shows metrics were reduced over the whole validation set, not one shard.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        if trainer.world_size < 2:
            return
        import hashlib
        import json

        digest = hashlib.sha256()
        for name, tensor in sorted(module.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        scores = module.last_val_scores or {}
        pixels = int(np.asarray(scores.get("confusion_matrix", [[0]])).sum())
        (self.run_dir / f"ddp_rank{trainer.global_rank}.json").write_text(
            json.dumps(
                {
                    "rank": trainer.global_rank,
                    "world_size": trainer.world_size,
                    "weights_sha256": digest.hexdigest(),
                    "val_pixels": pixels,
                }
            )
        )


def _flat_numbers(prefix: str, value: Any, out: dict[str, float]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            _flat_numbers(f"{prefix}/{key}", item, out)
    elif isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        out[prefix] = float(value)


class ExperimentRecord(L.Callback):
    """What experiment trackers keep of a run: the resolved config as hyperparameters at the
    start; at the end the best validation scores (per class too) as ``best/...`` metrics and
    ``best.pt`` attached as a file, for every logger that can attach one.

    ``attach`` maps a logger object to its file-attaching function (from the logger table).
    """

    def __init__(self, config: dict[str, Any], attach: dict[int, Any], export: ExportCheckpoints):
        self.config = config
        self.attach = attach
        self.export = export

    def on_fit_start(self, trainer: L.Trainer, module) -> None:
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.log_hyperparams({"config": self.config})

    def on_train_end(self, trainer: L.Trainer, module) -> None:
        if not trainer.is_global_zero or not trainer.loggers:
            return
        self.export.flush()  # best.pt on disk before it is attached
        best = self.export.dirpath / "best.pt"
        metrics: dict[str, float] = {}
        _flat_numbers("best", self.export.best_scores or {}, metrics)
        if self.export.best_epoch is not None:
            metrics["best/epoch"] = float(self.export.best_epoch)
            metrics["best/miou"] = float(self.export.best_score)
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
            attach = self.attach.get(id(logger))
            if attach is not None and best.is_file():
                attach(logger, best)
