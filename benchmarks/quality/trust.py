"""Probabilities you can trust, measured on the real-image sets of ``benchmarks/quality``.

``python -m benchmarks.quality.trust [--datasets nuclei brain textures] [--epochs N]``. Per
dataset: one ``unet-resnet train`` run with the defaults (the guide's ResNet-50 U-Net, random
init, 5 epochs; nuclei 20, see :data:`EPOCHS`; ``calibrate`` off, so this benchmark fits the
temperature itself), then on the validation images:

- **Calibration, cross-fitted**: the validation images in two halves (even and odd index);
  a temperature fitted on each half (by NLL, as ``calibrate`` does) is applied to the other
  half, so no image is scored at a temperature fitted on it. ECE/ACE/MCE over all validation
  pixels at temperature 1 (before) and at the cross-fitted temperatures (after); mIoU at both
  (temperature scaling keeps the arg-max: equal).
- **The quality estimate**: each validation image's estimate (the expected mIoU that
  ``predict`` writes in ``predict_report.json``) against its true mIoU: Spearman's rank
  correlation (what ``evaluate`` reports as ``quality``), with the calibrated model; also
  with test-time augmentation (``predict --tta``: the estimate from the views' mean).
- **Out of fold**, for a dataset whose validation split is too small to rank (nuclei: 4
  tiles; :data:`~benchmarks.quality.datasets.FOLDS`): one model per fold (each quarter of the
  image held out in turn, the last being the standard split), every tile scored by the model
  that never saw it, and Spearman over all of them (16 tiles), as nnU-Net's cross-validation
  pools its folds. The calibration columns stay the standard split's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.quality.datasets import FOLDS, fold_split
from benchmarks.quality.harness import main_over_datasets, train_defaults


def cross_fitted(segmenter, dataset) -> dict[str, Any]:
    """ECE/ACE/MCE before and after temperatures fitted on the other half of ``dataset``."""
    from unet_resnet.calibration import CalibrationStats, rescale

    classes = segmenter.classes
    images = []
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        if mask is not None:
            images.append((segmenter.image_probabilities(image), mask))

    def stats() -> CalibrationStats:
        return CalibrationStats(classes.num_classes, ignore_index=classes.ignore_index)

    halves = [images[0::2], images[1::2]]
    temperatures = []
    for half in halves:
        fit = stats()
        for probs, mask in half:
            fit.update(probs, mask)
        temperatures.append(fit.fit_temperature())
    before, after = stats(), stats()
    for k, half in enumerate(halves):
        other = temperatures[1 - k]  # fitted on the other half
        for probs, mask in half:
            before.update(probs, mask)
            after.update(rescale(probs, other), mask)
    return {
        "temperatures": temperatures,
        "before": before.summary(),
        "after": after.summary(),
    }


def crop_quality(segmenter, dataset, size: int = 64) -> dict[str, Any]:
    """The quality check on ``size``-pixel crops of the validation images (a grid, each crop
    predicted on its own): more, smaller images where a split has few (nuclei: 4)."""
    from unet_resnet.inference.formats.base import image_quality
    from unet_resnet.uncertainty import image_iou, spearman

    classes = segmenter.classes
    estimated, observed = [], []
    for index in range(len(dataset)):
        image, mask = dataset.load(index)
        for top in range(0, image.shape[0] - size + 1, size):
            for left in range(0, image.shape[1] - size + 1, size):
                window = (slice(top, top + size), slice(left, left + size))
                _, labels, estimate = image_quality(segmenter, image[window])
                truth = image_iou(
                    labels, mask[window], classes.num_classes, ignore_index=classes.ignore_index
                )
                if truth == truth:
                    estimated.append(estimate["quality"])
                    observed.append(truth)
    return {"crop": size, "crops": len(observed), "spearman": spearman(estimated, observed)}


#: dataset -> training epochs where the default (``--epochs``, 5) would be far fewer
#: optimizer steps than the others take: nuclei has 12 training tiles, so 5 epochs at batch 4
#: would be 15 steps; 20 epochs are 60, about what brain (69) and textures (40) take in 5
EPOCHS = {"nuclei": 20}


def _one_split(name: str, root: Path, epochs: int, out: Path, encoder: str) -> dict[str, Any]:
    from unet_resnet import Segmenter
    from unet_resnet.data import SegmentationFolder
    from unet_resnet.inference.evaluate import calibrate, evaluate

    start = time.perf_counter()
    result = train_defaults(name, root, out, epochs=epochs, encoder=encoder, calibrate=False)
    train_seconds = time.perf_counter() - start
    val = SegmentationFolder(root, "val")
    raw = Segmenter.from_checkpoint(result.best_checkpoint, precision="fp32")
    calibration = cross_fitted(raw, val)
    whole = calibrate(raw, val)["temperature"]  # what `train` stores (all of val)

    def calibrated(**options):
        return Segmenter.from_checkpoint(
            result.best_checkpoint, precision="fp32", temperature=whole, **options
        )

    scores_raw = evaluate(raw, val, progress=False)
    scores = evaluate(calibrated(), val, progress=False)
    scores_tta = evaluate(calibrated(tta=True), val, progress=False)  # as `predict --tta`
    crops = crop_quality(calibrated(), val)
    before, after = calibration["before"]["ece"], calibration["after"]["ece"]
    return {
        "dataset": name,
        "epochs": epochs,
        "encoder": encoder,
        "val_images": len(val),
        "train_seconds": round(train_seconds, 1),
        "miou_t1": scores_raw["miou"],
        "miou_calibrated": scores["miou"],
        "temperature": whole,
        "cross_fitted_temperatures": calibration["temperatures"],
        "ece_before": before,
        "ece_after": after,
        "ece_ratio": after / before if before else None,
        "ece_target_met": bool(after <= before / 2 or after <= 0.01),
        "ace_before": calibration["before"]["ace"],
        "ace_after": calibration["after"]["ace"],
        "mce_before": calibration["before"]["mce"],
        "mce_after": calibration["after"]["mce"],
        "quality_spearman": scores["quality"]["spearman"],
        "quality_spearman_t1": scores_raw["quality"]["spearman"],
        "quality_spearman_tta": scores_tta["quality"]["spearman"],
        "quality_spearman_crops": crops["spearman"],
        "quality_crops": crops["crops"],
        "quality_estimated": scores["quality"]["estimated"],
        "quality_observed": scores["quality"]["observed"],
        "quality_estimated_tta": scores_tta["quality"]["estimated"],
        "quality_observed_tta": scores_tta["quality"]["observed"],
    }


def run_dataset(
    name: str,
    root: Path,
    epochs: int,
    work: Path,
    encoder: str,
    folds: tuple[int, Callable[[str], int]] | None = None,
) -> dict[str, Any]:
    """One row: the standard split's; for a dataset in :data:`FOLDS` (or given ``folds``)
    also one model per fold, each scoring the images it never saw, and the quality
    estimate's Spearman over all of them (``quality_spearman_out_of_fold``)."""
    from unet_resnet.uncertainty import spearman

    folds = folds or FOLDS.get(name)
    if folds is None:
        return _one_split(name, root, epochs, work / name, encoder)
    runs = []
    for fold in range(folds[0]):
        split = fold_split(root, folds, fold, work / f"{name}-fold{fold}")
        runs.append(_one_split(name, split, epochs, work / f"{name}-fold{fold}-run", encoder))
        print(
            f"{name} fold {fold}: mIoU {100 * runs[-1]['miou_calibrated']:.2f}, Spearman "
            f"{runs[-1]['quality_spearman']:.3f} (TTA {runs[-1]['quality_spearman_tta']:.3f})",
            flush=True,
        )

    def pooled(suffix: str) -> float:
        return spearman(
            [v for r in runs for v in r["quality_estimated" + suffix]],
            [v for r in runs for v in r["quality_observed" + suffix]],
        )

    keep = ("miou_calibrated", "temperature", "ece_before", "ece_after", "quality_spearman")
    keep += ("quality_spearman_tta", "quality_estimated", "quality_observed")
    return {
        **runs[-1],  # the standard split is the last fold
        "folds": [{"fold": fold, **{k: r[k] for k in keep}} for fold, r in enumerate(runs)],
        "quality_images_out_of_fold": sum(len(r["quality_observed"]) for r in runs),
        "quality_spearman_out_of_fold": pooled(""),
        "quality_spearman_tta_out_of_fold": pooled("_tta"),
    }


def format_rows(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"{'dataset':<10} {'T':>6} {'ECE before':>10} {'after':>8} {'ratio':>6} "
        f"{'mIoU T=1':>9} {'mIoU T':>8} {'Spearman':>9} {'TTA':>6} {'(64px crops)':>12} "
        f"{'out-of-fold (TTA)':>18}"
    ]
    for r in rows:
        folds = "-"
        if "quality_spearman_out_of_fold" in r:
            folds = (
                f"{r['quality_spearman_out_of_fold']:.3f} "
                f"({r['quality_spearman_tta_out_of_fold']:.3f}) "
                f"[{r['quality_images_out_of_fold']}]"
            )
        lines.append(
            f"{r['dataset']:<10} {r['temperature']:6.3f} {r['ece_before']:10.4f} "
            f"{r['ece_after']:8.4f} {r['ece_ratio']:6.2f} {100 * r['miou_t1']:9.2f} "
            f"{100 * r['miou_calibrated']:8.2f} {r['quality_spearman']:9.3f} "
            f"{r['quality_spearman_tta']:6.3f} "
            f"{r['quality_spearman_crops']:6.3f} ({r['quality_crops']}) {folds:>18}"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    return main_over_datasets(
        argv, prog="python -m benchmarks.quality.trust", description=__doc__, name="trust",
        run_dataset=run_dataset, format_rows=format_rows, epochs=EPOCHS,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
