"""A whole ``train`` epoch (loading, augmentation, metrics, logging, validation,
checkpointing) against the isolated training step at the same size and batch.

Two figures: the steady epochs of a run (every epoch but the first, which starts workers and
creates oneDNN primitives, and the last, which is followed by the run's final writes), and the
whole run's epochs with those final writes (``last.ckpt``, ``best.pt``, ``last.pt``, the
curves) spread over them, which a short benchmark run overstates: they are paid once per
run, not once per epoch.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L

from benchmarks.common import timeit


class _EpochClock(L.Callback):
    """Wall time from each training epoch's start to the next one's (everything between)."""

    def __init__(self) -> None:
        self.starts: list[float] = []
        self.end = 0.0

    def on_train_epoch_start(self, trainer, module) -> None:
        self.starts.append(time.perf_counter())

    def on_train_end(self, trainer, module) -> None:
        self.end = time.perf_counter()


def _isolated_step_seconds(size: int, batch: int, classes: int, reps: int) -> float:
    from benchmarks.training import training_step
    from unet_resnet.accel.memory import keep_freed_memory
    from unet_resnet.hardware import cpu_has_fast_bf16

    variant = "default_bf16_mixed" if cpu_has_fast_bf16() else "default_fp32"
    step = training_step(variant, size, batch, classes)  # the step as train() runs it
    with keep_freed_memory():
        return statistics.median(timeit(step, reps=reps))


def bench_epoch(
    *, size: int = 96, batch: int = 8, n_train: int = 96, n_val: int = 24, epochs: int = 4
) -> dict[str, Any]:
    from unet_resnet.data import make_demo_dataset
    from unet_resnet.training import TrainConfig, train

    with tempfile.TemporaryDirectory(prefix="bench-epoch-") as tmp:  # runs are GBs
        work = Path(tmp)
        data = make_demo_dataset(work / "data", n_train, n_val, size, seed=0)
        clock = _EpochClock()
        train(
            TrainConfig(
                data=str(data),
                out=str(work / "run"),
                encoder_weights=None,
                image_size=size,
                batch_size=batch,
                epochs=epochs,
                progress=False,
            ),
            callbacks=[clock],
        )
    # The first epoch pays for worker start-up and oneDNN primitive creation; the ones
    # between it and the last are what a long run is made of.
    if epochs >= 3:
        epoch_s = (clock.starts[-1] - clock.starts[1]) / (epochs - 2)
    else:
        epoch_s = clock.end - clock.starts[-1]
    run_epoch_s = (clock.end - clock.starts[min(1, epochs - 1)]) / max(1, epochs - 1)
    steps = n_train // batch  # n_train is a multiple of batch: every batch is full
    step_s = _isolated_step_seconds(size, batch, 4, reps=max(3, steps // 2))
    return {
        "size": size,
        "batch": batch,
        "epochs": epochs,
        "steps_per_epoch": steps,
        "epoch_s": epoch_s,
        "isolated_step_s": step_s,
        "epoch_throughput_vs_step": steps * step_s / epoch_s,
        "final_writes_s": max(0.0, clock.end - clock.starts[-1] - epoch_s),
        "run_epoch_s": run_epoch_s,
        "run_epoch_throughput_vs_step": steps * step_s / run_epoch_s,
    }
