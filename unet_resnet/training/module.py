"""The LightningModule: the guide's recipe (Adam, lr 1e-3, cross-entropy, LR schedule) and more.

The model stays a pure ``nn.Module`` (``self.model``); loss, optimiser, schedule, metrics and
logging live here. Plug it into your own ``lightning.Trainer`` with
:class:`~unet_resnet.training.datamodule.SegmentationDataModule`.
"""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from unet_resnet.accel.gemm_conv import use_gemm_convolutions
from unet_resnet.accel.optim import Adam, AdamW
from unet_resnet.checkpoint import CheckpointMeta
from unet_resnet.errors import UnetResnetError
from unet_resnet.losses import build_loss
from unet_resnet.metrics import ThresholdTuner, build_metrics
from unet_resnet.models import UNetWithResnet50Encoder
from unet_resnet.task import check_thresholds, get_task

__all__ = ["SegmentationModule", "TrainingDivergedError"]


class TrainingDivergedError(UnetResnetError, FloatingPointError):
    """The loss became NaN or infinite."""


class SegmentationModule(L.LightningModule):
    """Trains a :class:`UNetWithResnet50Encoder`.

    Args:
        meta: the checkpoint metadata (model config, classes, normalisation, image size); it
            is saved in every checkpoint so prediction needs only the file.
        encoder_weights: initial encoder weights ("imagenet", a path, or None).
        loss: see :func:`unet_resnet.losses.build_loss` (for the task in ``meta``).
        class_weights: per-class loss weights, or None.
        thresholds: multilabel: per-class decision thresholds (None = 0.5 each), or
            ``"tune"``: after each validation the thresholds with the best IoU per class on
            it (:class:`~unet_resnet.metrics.ThresholdTuner`) go into ``meta.thresholds``, so
            the checkpoints carry them; validation scores are then at those thresholds.
        optimizer: "adam" (the guide's), "adamw" or "sgd".
        lr, weight_decay, momentum: optimiser settings.
        scheduler: "cosine" (linear warmup then cosine decay, per step), "poly", "onecycle",
            "plateau" (on validation mIoU) or "none".
        warmup_epochs: warmup length for "cosine".
        freeze_encoder_epochs: epochs to train the decoder only before unfreezing.
        channels_last: NHWC memory format, faster for convolutions on CPU and tensor cores.
        gemm_convolutions: on CPU, the layers oneDNN trains slowly run as matrix products
            (:mod:`unet_resnet.accel.gemm_conv`); weights and state-dict keys unchanged.
    """

    def __init__(
        self,
        meta: dict[str, Any],
        *,
        encoder_weights: str | None = "imagenet",
        loss: str = "ce",
        class_weights: list[float] | None = None,
        thresholds: list[float] | str | None = None,
        optimizer: str = "adam",
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        warmup_epochs: float = 1.0,
        freeze_encoder_epochs: int = 0,
        channels_last: bool = True,
        gemm_convolutions: bool = True,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.meta = CheckpointMeta.from_dict(meta)
        self.model = UNetWithResnet50Encoder(
            **self.meta.model_config, encoder_weights=encoder_weights
        )
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        if gemm_convolutions:
            use_gemm_convolutions(self.model)
        classes = self.meta.classes
        self.task = get_task(self.meta.task)
        self.criterion = build_loss(
            loss,
            ignore_index=classes.ignore_index,
            class_weights=class_weights,
            task=self.task.name,
        )
        if isinstance(thresholds, list | tuple):
            self.meta.thresholds = check_thresholds(thresholds, classes.num_classes)
        self.tuner = (
            ThresholdTuner(classes.num_classes, ignore_index=classes.ignore_index)
            if thresholds == "tune"
            else None
        )
        self.val_metrics = self._metrics()
        self.last_val_scores: dict[str, Any] | None = None
        self._first_bad_step: torch.Tensor | None = None
        self._val_batch_for_images: tuple[torch.Tensor, torch.Tensor] | None = None

    def _metrics(self):
        classes = self.meta.classes
        return build_metrics(
            self.task.name,
            classes.num_classes,
            ignore_index=classes.ignore_index,
            class_names=classes.names,
            thresholds=self.meta.thresholds,
        )

    # Steps ---------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_autocast_enabled(x.device.type):
            # The decoder's last skip is the input itself: left in fp32, it would promote the
            # largest activation of the network (the full-resolution concatenation) to fp32,
            # forward and backward. The first convolution casts it anyway: same values.
            x = x.to(torch.get_autocast_dtype(x.device.type))
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.model(x)

    def on_train_epoch_start(self) -> None:
        frozen = self.current_epoch < self.hparams.freeze_encoder_epochs
        if frozen != self.model.encoder_frozen:
            (self.model.freeze_encoder if frozen else self.model.unfreeze_encoder)()
            self.model.train()

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        images, masks = batch
        loss = self.criterion(self(images), masks)
        self._note_finite(loss, batch_idx)
        # The step value as it is (no synchronisation per step); the epoch mean over every
        # rank's batches, synchronised once at the epoch's end.
        self.log("train/loss_step", loss, prog_bar=True, on_step=True, on_epoch=False)
        self.log(
            "train/loss_epoch",
            loss,
            on_step=False,
            on_epoch=True,
            sync_dist=True,
            batch_size=images.shape[0],
        )
        return loss

    #: training steps between checks that the loss is finite (and at each epoch's last step)
    finite_check_every = 16

    def _note_finite(self, loss: torch.Tensor, batch_idx: int) -> None:
        """Stop a run whose loss became NaN or infinite, on every rank at once.

        Reading a GPU value on the host waits for the GPU, so the check is not made every
        step: the first non-finite step is noted on the device and, every
        :attr:`finite_check_every` steps and at each epoch's last step (before any checkpoint
        of that epoch is written), summed over all ranks: every rank raises together instead
        of one raising while the others wait in a collective until it times out."""
        # a fill, not a copy from the host (which would wait for the GPU)
        step = torch.full((), float(self.global_step), device=loss.device)
        bad = ~torch.isfinite(loss.detach())
        if self._first_bad_step is None or self._first_bad_step.device != loss.device:
            self._first_bad_step = torch.full((), -1.0, device=loss.device)
        first = self._first_bad_step
        self._first_bad_step = torch.where(bad & (first < 0), step, first)
        last = batch_idx + 1 >= self.trainer.num_training_batches
        if not last and (batch_idx + 1) % self.finite_check_every:
            return
        flag = (self._first_bad_step >= 0).float()
        worst = self.trainer.strategy.reduce(flag, reduce_op="sum")
        if float(worst) > 0:
            local = int(self._first_bad_step.item())
            where = f"global step {local}" if local >= 0 else "another rank"
            raise TrainingDivergedError(
                f"The loss became NaN or infinite at epoch {self.current_epoch}, {where}. The "
                "run was stopped so no garbage model is saved. Try a lower --lr, --precision "
                "fp32, --gradient-clip 1.0, or run `unet-resnet check-data` on the dataset."
            )

    def validation_step(self, batch, batch_idx: int) -> None:
        images, masks = batch
        logits = self(images)
        self.log(
            "val/loss",
            self.criterion(logits, masks),
            on_epoch=True,
            sync_dist=True,
            batch_size=images.shape[0],
        )
        if self.tuner is not None:
            self.tuner.update(logits.float(), masks)
        else:
            self.val_metrics.update(logits.float(), masks)
        if batch_idx == 0:
            probs = self.task.activate(logits[:8].detach())
            preds = torch.stack([self.task.decide(p, self.meta.thresholds) for p in probs])
            self._val_batch_for_images = (images[:8].detach(), preds, masks[:8])

    def on_validation_epoch_end(self) -> None:
        if self.tuner is not None:
            # Thresholds chosen on this validation pass; the scores at them come from the
            # tuner's counts (a fixed-size state, synchronised like any torchmetrics metric).
            thresholds = self.tuner.best()
            if not self.trainer.sanity_checking:
                self.meta.thresholds = thresholds
            scores = self.tuner.scores_at(thresholds, self.meta.classes.names)
            self.tuner.reset()
        else:
            scores = self.val_metrics.compute()  # synchronised across processes by torchmetrics
            self.val_metrics.reset()
        self.last_val_scores = scores
        if self.trainer.sanity_checking:
            return
        self.log("val/miou", scores["miou"], prog_bar=True, sync_dist=False)
        self.log("val/mean_dice", scores["mean_dice"], sync_dist=False)
        self.log("val/pixel_accuracy", scores["pixel_accuracy"], sync_dist=False)
        for name, per_class in scores["per_class"].items():
            if not math.isnan(per_class["iou"]):
                self.log(f"val_iou/{name}", per_class["iou"], sync_dist=False)
                self.log(f"val_dice/{name}", per_class["dice"], sync_dist=False)

    # Optimisation --------------------------------------------------------------------------
    def configure_optimizers(self):
        hp = self.hparams
        params = self.model.parameters()
        # Fused Adam updates every parameter in one kernel: half the step time of the default
        # per-parameter loop for this 148M-parameter model on a CPU; ours feeds it the
        # channels_last weights without copies (unet_resnet.accel.optim).
        match hp.optimizer:
            case "adam":
                optimizer = Adam(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
            case "adamw":
                optimizer = AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay, fused=True)
            case "sgd":
                optimizer = torch.optim.SGD(
                    params,
                    lr=hp.lr,
                    momentum=hp.momentum,
                    weight_decay=hp.weight_decay,
                    nesterov=hp.momentum > 0,
                )
            case _:
                raise ValueError(f"Unknown optimizer {hp.optimizer!r}: adam, adamw, sgd.")

        total = max(1, int(self.trainer.estimated_stepping_batches))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        match hp.scheduler:
            case "none":
                return optimizer
            case "cosine":
                warmup = min(int(hp.warmup_epochs * steps_per_epoch), total // 2)
                schedule = _warmup_cosine(warmup, total)
                sched = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
            case "poly":
                sched = torch.optim.lr_scheduler.LambdaLR(
                    optimizer, lambda step: max(0.0, 1 - step / total) ** 0.9
                )
            case "onecycle":
                sched = torch.optim.lr_scheduler.OneCycleLR(
                    optimizer, max_lr=hp.lr, total_steps=total + 1
                )
            case "plateau":
                sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                    optimizer, mode="max", factor=0.5, patience=3
                )
                return {
                    "optimizer": optimizer,
                    "lr_scheduler": {
                        "scheduler": sched,
                        "monitor": "val/miou",
                        "interval": "epoch",
                    },
                }
            case _:
                raise ValueError(
                    f"Unknown scheduler {hp.scheduler!r}: cosine, plateau, poly, onecycle, none."
                )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # Exact resume: the random streams continue where they stopped -------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        np_state = np.random.get_state()
        checkpoint["rng_states"] = {
            "torch": torch.get_rng_state(),
            # every GPU's generator (dropout, random ops on the device), where CUDA is in use
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
            "python": list(random.getstate()[1]),
            "python_version": random.getstate()[0],
            "python_gauss": random.getstate()[2],
            "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
            "numpy_pos": int(np_state[2]),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get("rng_states")
        if not states:
            return
        torch.set_rng_state(states["torch"])
        cuda = states.get("cuda")
        if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        random.setstate((states["python_version"], tuple(states["python"]), states["python_gauss"]))
        np.random.set_state(
            ("MT19937", states["numpy_keys"].numpy().astype(np.uint32), states["numpy_pos"], 0, 0.0)
        )


def _warmup_cosine(warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return 0.01 + 0.99 * step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor
