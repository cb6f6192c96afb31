"""Mask-aware augmentation: joint geometry, image-only photometrics, any channel count."""

from __future__ import annotations

import pytest
import torch
from torchvision import tv_tensors

from unet_resnet.data.transforms import (
    RandomBrightnessContrast,
    RandomScaleCrop,
    build_eval_transform,
    build_train_transform,
)


def _pair(channels=3, h=80, w=96, seed=0):
    """An image whose first channel encodes the mask: geometry must keep them in register."""
    g = torch.Generator().manual_seed(seed)
    # Blocky labels (16x16 cells) so interpolation only matters at block edges.
    cells = torch.randint(0, 4, (-(-h // 16), -(-w // 16)), generator=g)
    mask = cells.repeat_interleave(16, 0).repeat_interleave(16, 1)[:h, :w]
    image = torch.rand(channels, h, w, generator=g)
    image[0] = mask.float() / 10
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


@pytest.mark.parametrize("preset", ["none", "light", "default", "strong"])
def test_presets_keep_image_and_mask_in_register(preset):
    torch.manual_seed(0)
    transform = build_train_transform(preset, size=64, ignore_index=255)
    for seed in range(5):
        image, mask = transform(*_pair(seed=seed))
        assert image.shape == (3, 64, 64) and mask.shape == (64, 64)
        assert mask.dtype == torch.int64
        assert set(mask.unique().tolist()) <= {0, 1, 2, 3, 255}  # nearest: no new labels
        labelled = mask != 255
        if preset in ("none", "light"):
            # Crops and flips are exact.
            torch.testing.assert_close(image[0][labelled], mask[labelled].float() / 10)
        else:
            # Rescaling/rotation blur edges, brightness/contrast/noise change values by an
            # increasing map: the image's median per label must still rise with the label.
            medians = [image[0][mask == k].median() for k in range(4) if (mask == k).sum() > 20]
            assert medians == sorted(medians)


def test_padding_gets_ignore_index():
    image, mask = _pair(h=16, w=24)
    out_image, out_mask = build_train_transform("none", size=40, ignore_index=99)(image, mask)
    assert out_mask.shape == (40, 40)
    assert (out_mask == 99).sum() == 40 * 40 - 16 * 24
    assert (out_image[:, out_mask == 99] == 0).all()


def test_scale_crop_zooms():
    torch.manual_seed(0)
    image, mask = _pair(h=64, w=64)
    zoom_in = RandomScaleCrop(64, scale=(2.0, 2.0))
    _, out_mask = zoom_in(image, mask)
    assert out_mask.shape == (64, 64)
    # 2x zoom: each 16-pixel label block becomes 32 pixels wide.
    row = out_mask[32]
    runs = torch.unique_consecutive(row, return_counts=True)[1]
    assert runs[1:-1].min() >= 31 if len(runs) > 2 else runs.max() > 16


@pytest.mark.parametrize("channels", [1, 4, 13])
def test_photometric_any_channel_count_leaves_mask(channels):
    torch.manual_seed(0)
    image, mask = _pair(channels=channels)
    out_image, out_mask = RandomBrightnessContrast(0.5, 0.5, p=1.0)(image, mask)
    assert out_image.shape == image.shape
    assert not torch.equal(out_image, image)
    assert torch.equal(out_mask, mask)
    strong_image, _ = build_train_transform("strong", size=48)(image, mask)
    assert strong_image.shape == (channels, 48, 48)


def test_normalisation_at_the_end():
    image, mask = _pair(channels=2)
    mean, std = [0.5, 0.25], [0.1, 0.2]
    out_image, out_mask = build_eval_transform(mean=mean, std=std)(image, mask)
    torch.testing.assert_close(out_image[1], (image[1] - 0.25) / 0.2)
    assert torch.equal(out_mask, mask)


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="none, light, default, strong"):
        build_train_transform("extreme", size=32)
