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


# Multilabel ------------------------------------------------------------------------------
def test_multilabel_scores_each_class_on_its_own_pixels():
    from unet_resnet.metrics import MultilabelSegmentationMetrics

    truth = torch.zeros(1, 2, 4, 4, dtype=torch.long)
    truth[0, 0, :2] = 1  # class a: rows 0-1
    truth[0, 1, 1:3] = 1  # class b: rows 1-2 (overlaps a on row 1)
    truth[0, 1, 3] = 255  # class b unlabelled on row 3
    pred = torch.zeros_like(truth)
    pred[0, 0, :2] = 1  # a exact
    pred[0, 1, :2] = 1  # b: row 1 right, row 0 false alarm, row 2 missed
    pred[0, 1, 3] = 1  # on an ignored row: counts for nothing
    metric = MultilabelSegmentationMetrics(2, class_names=["a", "b"])
    metric.update(pred, truth)
    scores = metric.compute()
    assert scores["per_class"]["a"]["iou"] == 1.0
    assert scores["per_class"]["b"]["iou"] == pytest.approx(4 / 12)
    assert scores["per_class"]["b"]["dice"] == pytest.approx(8 / 16)
    assert scores["per_class"]["b"]["support"] == 8
    assert scores["miou"] == pytest.approx((1 + 4 / 12) / 2)
    assert scores["pixel_accuracy"] == pytest.approx((16 + 4) / 28)
    # Logits go through a sigmoid and each class's own threshold.
    logits = torch.where(pred == 1, 1.0, -1.0)  # sigmoid 0.73 / 0.27
    strict = MultilabelSegmentationMetrics(2, class_names=["a", "b"], thresholds=[0.5, 0.8])
    strict.update(logits, truth)
    assert strict.compute()["per_class"]["b"]["iou"] == 0.0  # nothing predicted, 8 missed


def test_threshold_tuner_picks_the_best_iou_per_class():
    from unet_resnet.metrics import ThresholdTuner

    truth = torch.zeros(1, 2, 1, 10, dtype=torch.long)
    truth[0, :, 0, :5] = 1
    probs = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.35, 0.3, 0.2, 0.1, 0.1, 0.1])
    # class 0: positives down to 0.35, negatives at most 0.3 -> best cut in (0.3, 0.35]
    # class 1: everything certain -> every threshold ties, 0.5 is kept
    logits = torch.stack([torch.logit(probs), torch.where(truth[0, 1, 0] == 1, 9.0, -9.0)])
    tuner = ThresholdTuner(2)
    tuner.update(logits[None, :, None], truth)
    best = tuner.best()
    assert best == [0.35, 0.5]
    scores = tuner.scores_at(best, ["x", "y"])
    assert scores["per_class"]["x"]["iou"] == 1.0 and scores["thresholds"] == best
    assert tuner.scores_at([0.5, 0.5], ["x", "y"])["per_class"]["x"]["iou"] == 0.8
