"""The run report and the review queue of a prediction folder.

Every ``predict`` run leaves ``OUT/predict_report.json``: what the run did (engine, inputs,
failures), each predicted input's ``quality`` estimate (:mod:`unet_resnet.uncertainty`: the
expected mIoU under the model's own probabilities, with what drives it) and
``review_order``, the inputs from the least to the most trustworthy (to *check* first), and
``label_order``, from the most to the fewest expected wrong pixels (to *label* first, for the
next round of training). A later run into the same folder adds its inputs' estimates to the
earlier ones (nothing an earlier run found is lost), so the orders cover the whole folder.
``--review-top N`` writes the first N of one order (``--review-for check|label``) as
``OUT/review.csv``: the images to send to a person (Label Studio, CVAT) first.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from unet_resnet.errors import ConfigError
from unet_resnet.io import atomic_path

__all__ = [
    "REPORT_FILE",
    "REVIEW_FILE",
    "REVIEW_ORDERS",
    "label_order",
    "read_report",
    "write_report",
    "write_review",
]

REPORT_FILE = "predict_report.json"
REVIEW_FILE = "review.csv"

#: the columns of review.csv
REVIEW_COLUMNS = (
    "rank",
    "input",
    "quality",
    "expected_errors",
    "driver",
    "foreground_uncertainty",
    "boundary_uncertainty",
    "worst_class",
    "worst_class_iou",
    "missed_class",
    "missed_class_probability",
)


def read_report(out: Path) -> dict[str, Any]:
    """The folder's report (an empty one where there is none or it cannot be read)."""
    path = Path(out) / REPORT_FILE
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return report if isinstance(report, dict) else {}


def write_report(
    out: Path, quality: dict[str, dict], summary: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Write ``OUT/predict_report.json``: this run's ``summary``, the quality estimates of
    earlier runs into the folder updated with this run's, and the review order over all of
    them (lowest quality first; equal scores by name). Returns what was written."""
    earlier = read_report(out).get("quality")
    merged = dict(earlier) if isinstance(earlier, dict) else {}
    merged.update(quality)
    orders = {key: make(merged) for key, make, _ in REVIEW_ORDERS.values()}
    report = {**(summary or {}), "quality": merged, **orders}
    with atomic_path(Path(out) / REPORT_FILE) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _ordered(quality: dict[str, dict], field: str, sign: float, missing: float) -> list[str]:
    """Inputs by ``sign`` x their ``field`` (``missing`` where it is absent), then by name."""

    def key(item: tuple[str, dict]) -> tuple[float, str]:
        score = item[1].get(field) if isinstance(item[1], dict) else None
        score = score if isinstance(score, int | float) and math.isfinite(score) else missing
        return sign * score, item[0]

    return [name for name, _ in sorted(quality.items(), key=key)]


def review_order(quality: dict[str, dict]) -> list[str]:
    """Inputs by quality, lowest (check first) to highest; no estimate counts as the worst."""
    return _ordered(quality, "quality", 1.0, -1.0)


def label_order(quality: dict[str, dict]) -> list[str]:
    """Inputs by expected wrong pixels, most (label first) to fewest; no estimate (an
    earlier release's report) counts as the most."""
    return _ordered(quality, "expected_errors", -1.0, math.inf)


#: ``--review-for`` -> (the report's order it follows, how it is made, what comes first)
REVIEW_ORDERS: dict[str, tuple[str, Any, str]] = {
    "check": ("review_order", review_order, "the masks the model trusts least"),
    "label": ("label_order", label_order, "the images with the most expected wrong pixels"),
}


def write_review(out: Path, report: dict[str, Any], top: int, order: str = "check") -> Path:
    """``OUT/review.csv``: the first ``top`` inputs of one of the report's orders
    (:data:`REVIEW_ORDERS`) with their scores and what drives them."""
    if top < 1:
        raise ConfigError(f"Invalid --review-top {top}: at least 1 image.")
    if order not in REVIEW_ORDERS:
        choices = ", ".join(REVIEW_ORDERS)
        raise ConfigError(f"Invalid --review-for {order!r}: expected one of {choices}.")
    quality = report.get("quality", {})
    key, make, _ = REVIEW_ORDERS[order]
    names = report.get(key)
    if not isinstance(names, list):  # a report from before that order existed
        names = make(quality)
    path = Path(out) / REVIEW_FILE
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(REVIEW_COLUMNS)
        for rank, name in enumerate(names[:top], start=1):
            entry = quality.get(name, {})
            writer.writerow([rank, name, *(entry.get(c, "") for c in REVIEW_COLUMNS[2:])])
    return path
