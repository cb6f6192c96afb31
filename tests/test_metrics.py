"""Metrics from one confusion matrix over the whole set."""

from __future__ import annotations

import math

import torch

from unet_resnet.metrics import SegmentationMetrics, scores_from_confusion


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
