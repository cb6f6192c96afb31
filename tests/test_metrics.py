"""Metrics from one confusion matrix over the whole set."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from unet_resnet.metrics import (
    SegmentationMetrics,
    case_scores,
    hd95,
    scores_from_confusion,
    summarize_cases,
)


def test_hand_computed_scores():
    # rows: truth, cols: prediction
    cm = torch.tensor([[3, 1], [2, 4]])
    s = scores_from_confusion(cm, ["bg", "fg"])
    assert math.isclose(s["per_class"]["bg"]["iou"], 3 / 6)
    assert math.isclose(s["per_class"]["fg"]["iou"], 4 / 7)
    assert math.isclose(s["miou"], (3 / 6 + 4 / 7) / 2)
    assert math.isclose(s["per_class"]["fg"]["dice"], 8 / 11)
    assert math.isclose(s["per_class"]["fg"]["precision"], 4 / 5)
    assert math.isclose(s["per_class"]["fg"]["recall"], 4 / 6)
    assert math.isclose(s["pixel_accuracy"], 7 / 10)


def test_accumulated_over_the_set_not_averaged_per_batch():
    metric = SegmentationMetrics(2, class_names=["bg", "fg"])
    # Batch 1: big, all correct background. Batch 2: tiny, foreground all wrong.
    metric.update(
        torch.zeros(1, 10, 10, dtype=torch.long), torch.zeros(1, 10, 10, dtype=torch.long)
    )
    metric.update(torch.zeros(1, 1, 2, dtype=torch.long), torch.ones(1, 1, 2, dtype=torch.long))
    s = metric.compute()
    assert math.isclose(s["per_class"]["bg"]["iou"], 100 / 102)
    assert s["per_class"]["fg"]["iou"] == 0
    assert math.isclose(s["miou"], (100 / 102) / 2)
    assert s["confusion_matrix"] == [[100, 0], [2, 0]]


def test_ignore_index_and_logits_input():
    metric = SegmentationMetrics(3, ignore_index=255)
    target = torch.tensor([[[0, 1, 255, 2]]])
    logits = (
        torch.nn.functional.one_hot(torch.tensor([[[0, 1, 1, 0]]]), 3).permute(0, 3, 1, 2).float()
    )
    metric.update(logits, target)
    s = metric.compute()
    assert sum(map(sum, s["confusion_matrix"])) == 3  # the ignored pixel is not counted
    assert s["per_class"]["class_2"]["recall"] == 0


def test_absent_class_left_out_of_the_mean():
    s = scores_from_confusion(torch.tensor([[5, 0, 0], [0, 5, 0], [0, 0, 0]]))
    assert math.isnan(s["per_class"]["class_2"]["iou"])
    assert s["miou"] == 1.0


# Per-case volume metrics ------------------------------------------------------------------


def _volume(shape=(10, 12, 14)):
    return np.zeros(shape, dtype=bool)


def test_perfect_case():
    truth = _volume()
    truth[2:6, 3:8, 4:9] = True
    scores = case_scores(truth, truth, (1.0, 1.0, 1.0))
    assert scores == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "outcome": "hit"}


def test_miss_and_false_alarm_score_the_worst_distance():
    truth = _volume()
    truth[2:4, 2:4, 2:4] = True
    spacing = (2.0, 1.0, 0.5)
    diagonal = float(np.sqrt((10 * 2.0) ** 2 + 12.0**2 + (14 * 0.5) ** 2))
    miss = case_scores(_volume(), truth, spacing)
    assert miss == {"dice": 0.0, "iou": 0.0, "hd95": diagonal, "nsd": 0.0, "outcome": "miss"}
    alarm = case_scores(truth, _volume(), spacing)
    assert alarm["outcome"] == "false_alarm" and alarm["hd95"] == diagonal
    assert alarm["dice"] == 0.0
    both = case_scores(_volume(), _volume(), spacing)
    assert both == {"dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0, "outcome": "empty"}


def test_hd95_in_mm_with_anisotropic_spacing():
    pred, truth = _volume(), _volume()
    pred[0, 0, 0] = True
    truth[2, 0, 0] = True  # two voxels apart along an axis of 3 mm voxels: 6 mm
    assert case_scores(pred, truth, (3.0, 1.0, 1.0))["hd95"] == pytest.approx(6.0)
    truth[:] = False
    truth[0, 3, 0] = True  # three voxels apart along an axis of 0.5 mm voxels: 1.5 mm
    assert hd95(pred, truth, (3.0, 0.5, 1.0)) == pytest.approx(1.5)


def test_surface_dice_tolerance_and_partial_overlap():
    truth = _volume((20, 20, 20))
    truth[5:15, 5:15, 5:15] = True
    pred = np.roll(truth, 1, axis=0)  # one voxel (2 mm) off along the first axis
    strict = case_scores(pred, truth, (2.0, 1.0, 1.0), tolerance=1.0)
    loose = case_scores(pred, truth, (2.0, 1.0, 1.0), tolerance=2.0)
    assert 0 < strict["nsd"] < 1 and loose["nsd"] == 1.0
    assert strict["dice"] == pytest.approx(2 * 9 / 20)  # 9 of 10 slabs overlap
    assert strict["hd95"] == pytest.approx(2.0)


def test_distances_do_not_depend_on_the_volume_around_the_masks():
    small, big = _volume((12, 12, 12)), _volume((200, 60, 60))
    small[3:8, 4:9, 2:6] = True
    big[103:108, 34:39, 12:16] = True
    small_pred = np.roll(small, 2, axis=1)
    big_pred = np.roll(big, 2, axis=1)
    a = case_scores(small_pred, small, (1.0, 2.0, 1.0))
    b = case_scores(big_pred, big, (1.0, 2.0, 1.0))
    assert a == b


def test_summary_counts_misses_and_false_alarms():
    rows = [
        {"case": "a", "structure": "liver", "dice": 1.0, "iou": 1.0, "hd95": 0.0, "nsd": 1.0,
         "outcome": "hit"},
        {"case": "b", "structure": "liver", "dice": 0.0, "iou": 0.0, "hd95": 300.0, "nsd": 0.0,
         "outcome": "miss"},
        {"case": "c", "structure": "liver", "dice": 0.5, "iou": 0.33, "hd95": 6.0, "nsd": 0.4,
         "outcome": "false_alarm"},
    ]  # fmt: skip
    summary = summarize_cases(rows)["liver"]
    assert summary["cases"] == 3 and summary["misses"] == 1 and summary["false_alarms"] == 1
    assert summary["dice"]["mean"] == pytest.approx(0.5)
    assert summary["dice"]["median"] == pytest.approx(0.5)
    assert summary["hd95"]["std"] == pytest.approx(np.std([0, 300, 6], ddof=1))
