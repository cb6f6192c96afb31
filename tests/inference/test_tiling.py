"""Sliding-window inference: exact stitching, single-tile identity, no seams."""

from __future__ import annotations

import itertools

import pytest
import torch

from unet_resnet.inference.tiling import (
    count_tiles,
    overlap_pixels,
    sliding_window_inference,
    tile_starts,
    weight_window,
)
from unet_resnet.models import UNetWithResnet50Encoder


def test_tile_starts_cover_and_end_flush():
    assert tile_starts(100, 40, 30) == [0, 30, 60]
    assert tile_starts(40, 40, 30) == [0]
    assert tile_starts(10, 40, 30) == [0]
    starts = tile_starts(1000, 256, 192)
    assert starts[-1] + 256 == 1000 and all(b - a <= 192 for a, b in itertools.pairwise(starts))
    assert overlap_pixels(256, 0.25) == 64 and overlap_pixels(256, 32) == 32
    with pytest.raises(ValueError, match="smaller than the tile"):
        overlap_pixels(64, 64)
    assert count_tiles(100, 100, 40, 10) == 9  # starts 0, 30, 60 each way


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_weights_positive_peaked(blend):
    w = weight_window(32, 48, blend)
    assert w.shape == (32, 48) and w.min() > 0 and w.max() == pytest.approx(1.0)
    if blend != "constant":
        assert w[16, 24] > w[0, 0]


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
def test_local_model_is_stitched_exactly(blend):
    """For a per-pixel model, tiled output must equal the full-image output whatever the
    blending: weights are normalised everywhere."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 4, 1)

    def forward(x):
        return conv(x).softmax(1)

    image = torch.randn(3, 97, 130)
    with torch.no_grad():
        full = forward(image[None])[0]
        tiled = sliding_window_inference(
            image, forward, tile_size=32, overlap=0.25, batch_size=3, blend=blend
        )
    torch.testing.assert_close(tiled, full, atol=1e-5, rtol=1e-5)


def test_image_within_one_tile_is_a_plain_forward_pass():
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).eval()
    image = torch.randn(3, 50, 61)
    with torch.no_grad():
        expected = model(image[None]).softmax(1)[0]
        got = sliding_window_inference(
            image, lambda x: model(x).softmax(1), tile_size=64, overlap=0.25
        )
    assert torch.equal(got, expected)


def _smooth_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 16, w // 16, generator=g)
    return torch.nn.functional.interpolate(coarse, (h, w), mode="bilinear")[0] * 4 - 2


def test_unet_tiled_matches_full_and_has_no_seams():
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).eval()

    def forward(x):
        return model(x).softmax(1)

    image = _smooth_image(192, 256)
    tile, overlap = 96, 0.5
    with torch.no_grad():
        full = forward(image[None])[0]
        tiled = sliding_window_inference(image, forward, tile_size=tile, overlap=overlap)
    error = (tiled - full).abs().amax(0)
    assert error.mean() < 0.05
    assert (tiled.argmax(0) == full.argmax(0)).float().mean() > 0.9

    # Seams: the error in a 2-pixel band around each tile border is no worse than elsewhere.
    stride = tile - overlap_pixels(tile, overlap)
    borders = torch.zeros_like(error, dtype=torch.bool)
    for start in tile_starts(256, tile, stride)[1:]:
        borders[:, max(0, start - 2) : start + 2] = True
        borders[:, max(0, start + tile - 2) : start + tile + 2] = True
    for start in tile_starts(192, tile, stride)[1:]:
        borders[max(0, start - 2) : start + 2, :] = True
    assert error[borders].mean() < 2 * error[~borders].mean() + 1e-3
