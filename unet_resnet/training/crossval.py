"""``cross-validate``: train every fold of a k-fold split and score each model on the cases it
never saw (out-of-fold), as nnU-Net and most papers report.

The folds share one ``splits.json`` (``OUT/splits.json``); fold ``k`` trains into
``OUT/fold_k``. The out-of-fold predictions of all folds together cover every training case
once: their confusion matrices are summed for the pooled scores and their per-case rows
(volumes) pooled for the per-case summary, in ``OUT/cv_scores.json`` and ``OUT/cases.csv``.
The fold checkpoints together are an ensemble: ``--checkpoint OUT/fold_0/checkpoints/best.pt
--checkpoint OUT/fold_1/...``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from unet_resnet.data.folds import restrict_to_cases
from unet_resnet.data.layouts import SplitOptions, open_split
from unet_resnet.errors import ConfigError
from unet_resnet.training.config import TrainConfig
from unet_resnet.training.train import TrainResult, train

__all__ = ["CrossValidation", "cross_validate"]


@dataclass
class CrossValidation:
    out: Path
    folds: list[TrainResult]
    scores: dict[str, Any]

    @property
    def checkpoints(self) -> list[Path]:
        return [result.best_checkpoint for result in self.folds]


def cross_validate(config: TrainConfig, *, progress: bool = True) -> CrossValidation:
    """Train folds ``0..config.folds-1`` one after the other, then score out of fold."""
    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.evaluate import evaluate, write_cases_csv, write_scores_json
    from unet_resnet.metrics import scores_from_confusion, summarize_cases

    if config.folds < 2:
        raise ConfigError(f"cross-validate needs --folds of at least 2, got {config.folds}.")
    if config.task != "multiclass":
        raise ConfigError(
            "cross-validate pools one confusion matrix over the folds (multiclass); for "
            "--task multilabel train each fold with `unet-resnet train --folds K --fold k`."
        )
    out = Path(config.out)
    splits = config.splits or str(out / "splits.json")
    results, confusion, rows, per_fold = [], None, [], []
    for fold in range(config.folds):
        fold_config = dataclasses.replace(
            config, out=str(out / f"fold_{fold}"), fold=fold, splits=splits
        )
        result = train(fold_config)
        if result.interrupted:
            raise KeyboardInterrupt
        results.append(result)
    for fold, result in enumerate(results):
        segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
        options = SplitOptions(image_size=config.image_size).for_checkpoint(
            segmenter.classes,
            segmenter.volume,
            split=segmenter.split,
            given=config.group("layout"),
        )
        dataset = open_split(config.data, "train", config.dataset, options)
        held_out = _held_out(splits, fold)
        scores = evaluate(segmenter, restrict_to_cases(dataset, held_out), progress=progress)
        matrix = torch.tensor(scores["confusion_matrix"])
        confusion = matrix if confusion is None else confusion + matrix
        rows += [{**row, "fold": fold} for row in scores.get("cases", [])]
        per_fold.append({"fold": fold, "cases": len(held_out), "miou": scores["miou"]})
    pooled = scores_from_confusion(confusion, segmenter.classes.names)
    pooled["folds"] = per_fold
    if rows:
        pooled["cases"] = rows
        pooled["per_case"] = summarize_cases(rows)
        pooled["nsd_tolerance_mm"] = scores["nsd_tolerance_mm"]
        write_cases_csv(pooled, out / "cases.csv")
    write_scores_json(pooled, out / "cv_scores.json")
    return CrossValidation(out, results, pooled)


def _held_out(splits: str, fold: int) -> list[str]:
    import json

    return list(json.loads(Path(splits).read_text())["folds"][fold])
