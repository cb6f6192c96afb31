"""``train``: flags generated from :class:`~unet_resnet.training.config.TrainConfig`."""

from __future__ import annotations

import argparse
import sys

from unet_resnet.cli.registry import command


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from unet_resnet.training.config_io import add_config_arguments

    add_config_arguments(parser)


@command(
    "train",
    "train a model on a dataset (Lightning; checkpoints, TensorBoard, metrics)",
    _train_arguments,
)
def train_command(args: argparse.Namespace) -> int:
    from unet_resnet.training import train
    from unet_resnet.training.config_io import config_from_args

    config = config_from_args(args)
    result = train(config)
    if result.interrupted:
        print(
            f"Interrupted after {result.epochs_completed} epoch(s). Continue with the same "
            f"command plus --resume (uses {result.run_dir / 'checkpoints' / 'last.ckpt'}).",
            file=sys.stderr,
        )
        return 130
    best = (
        "n/a" if result.best_miou is None else f"{result.best_miou:.4f} (epoch {result.best_epoch})"
    )
    print(
        f"best val mIoU {best}; {result.epochs_completed} epochs in {result.seconds:.0f} s "
        f"({result.precision}); checkpoints in {result.run_dir / 'checkpoints'}"
    )
    return 0


@command(
    "cross-validate",
    "train every fold of a k-fold split (--folds K) and score each on its held-out cases",
    _train_arguments,
)
def cross_validate_command(args: argparse.Namespace) -> int:
    from unet_resnet.inference.evaluate import format_scores
    from unet_resnet.training.config_io import config_from_args
    from unet_resnet.training.crossval import cross_validate

    config = config_from_args(args)
    result = cross_validate(config, progress=config.progress)
    print(format_scores(result.scores))
    for row in result.scores["folds"]:
        print(f"fold {row['fold']}: {row['cases']} held-out cases, mIoU {row['miou']:.4f}")
    print(f"out-of-fold scores in {result.out / 'cv_scores.json'}; ensemble of the folds:")
    print("  " + " ".join(f"--checkpoint {path}" for path in result.checkpoints))
    return 0
