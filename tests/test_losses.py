"""Losses: ignore_index, class weights, finite under bf16, sensible minimum."""

from __future__ import annotations

import pytest
import torch

from unet_resnet.losses import build_loss

NAMES = ["ce", "dice", "ce_dice", "focal", "lovasz", "tversky"]


def _batch(seed=0, c=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, c, (2, 8, 8), generator=g)
    target[:, :2] = 255
    return logits, target


@pytest.mark.parametrize("name", NAMES)
def test_finite_positive_with_gradient(name):
    logits, target = _batch()
    loss = build_loss(name)(logits, target)
    assert loss.ndim == 0 and torch.isfinite(loss) and loss > 0
    loss.backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


@pytest.mark.parametrize("name", NAMES)
def test_ignored_pixels_do_not_count(name):
    logits, target = _batch()
    loss = build_loss(name)(logits, target)
    changed = logits.detach().clone()
    changed[:, :, :2] = torch.randn_like(changed[:, :, :2]) * 100  # only ignored rows
    assert torch.allclose(build_loss(name)(changed, target), loss.detach(), atol=1e-5)
    loss.backward()
    assert logits.grad[:, :, :2].abs().max() == 0


@pytest.mark.parametrize("name", NAMES)
def test_class_weights_change_the_loss(name):
    logits, target = _batch()
    plain = build_loss(name)(logits, target)
    weighted = build_loss(name, class_weights=[0.1, 1.0, 5.0])(logits, target)
    assert not torch.allclose(plain, weighted)


@pytest.mark.parametrize("name", NAMES)
def test_bf16_logits_stay_finite_and_close(name):
    logits, target = _batch()
    # Large logits overflow a naive bf16/fp16 softmax-and-sum.
    big = (logits.detach() * 50).bfloat16()
    loss_bf16 = build_loss(name)(big, target)
    loss_fp32 = build_loss(name)(big.float(), target)
    assert loss_bf16.dtype == torch.float32 and torch.isfinite(loss_bf16)
    torch.testing.assert_close(loss_bf16, loss_fp32)


@pytest.mark.parametrize("name", ["dice", "lovasz", "tversky", "ce"])
def test_perfect_prediction_is_near_zero(name):
    target = torch.randint(0, 3, (2, 8, 8))
    logits = torch.nn.functional.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert build_loss(name)(logits, target) < 1e-3


@pytest.mark.parametrize("name", NAMES)
def test_all_ignored_batch_is_zero_not_nan(name):
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    loss = build_loss(name)(logits, torch.full((1, 4, 4), 255))
    assert torch.isfinite(loss) and loss == 0


def test_unknown_loss_lists_choices():
    with pytest.raises(ValueError, match="ce, dice, ce_dice, focal, lovasz, tversky"):
        build_loss("hinge")


# Multilabel: N x C x H x W targets of 0/1 with ignore_index, a sigmoid per class -----------
ML_NAMES = ["bce", "dice", "bce_dice", "tversky", "ce", "ce_dice"]


def _ml_batch(seed=0, c=3):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, c, 8, 8, generator=g, requires_grad=True)
    target = torch.randint(0, 2, (2, c, 8, 8), generator=g)
    target[:, 1, :2] = 255  # class 1 unlabelled in two rows; the others labelled there
    return logits, target


@pytest.mark.parametrize("name", ML_NAMES)
def test_multilabel_ignore_is_per_class(name):
    logits, target = _ml_batch()
    loss = build_loss(name, task="multilabel")(logits, target)
    assert torch.isfinite(loss) and loss > 0
    loss.backward()
    assert logits.grad[:, 1, :2].abs().max() == 0  # the ignored class there: no gradient
    assert logits.grad[:, 0, :2].abs().max() > 0  # the labelled classes there: gradient


@pytest.mark.parametrize("name", ML_NAMES)
def test_multilabel_overlapping_truth_is_reachable(name):
    target = torch.zeros(1, 2, 8, 8, dtype=torch.long)
    target[0, :, 2:6, 2:6] = 1  # both classes on the same pixels
    perfect = (target.float() * 2 - 1) * 50
    wrong = -perfect
    loss = build_loss(name, task="multilabel")
    assert loss(perfect, target) < 1e-3 < loss(wrong, target)


def test_bce_equals_torch_on_labelled_pixels_and_weights_scale_classes():
    logits, target = _ml_batch(1)
    valid = target != 255
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[valid], target[valid].float()
    )
    torch.testing.assert_close(build_loss("bce", task="multilabel")(logits, target), expected)
    weighted = build_loss("bce", task="multilabel", class_weights=[0.0, 0.0, 1.0])
    only_last = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 2], target[:, 2].float()
    )
    torch.testing.assert_close(weighted(logits, target), only_last)


def test_losses_without_a_multilabel_form_are_refused():
    with pytest.raises(ValueError, match="not available for the multilabel task.*bce"):
        build_loss("lovasz", task="multilabel")
    with pytest.raises(ValueError, match="not available for the multiclass task"):
        build_loss("bce")
