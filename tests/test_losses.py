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
