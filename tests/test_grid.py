"""The grid rules: one overlap rounding, one chunk margin, chunks that cover a scene exactly."""

from __future__ import annotations

import numpy as np
import pytest

from unet_resnet.grid import (
    MIN_CHUNK_MARGIN,
    chunk_margin,
    chunk_windows,
    count_tiles,
    overlap_pixels,
)


def test_chunk_margin_is_the_overlap_but_at_least_the_minimum():
    assert chunk_margin(512, 0.25) == 128
    assert chunk_margin(128, 0.25) == MIN_CHUNK_MARGIN
    assert chunk_margin(512, 200) == 200
    assert chunk_margin(510, 0.25) == overlap_pixels(510, 0.25)  # same rounding as the tiles


@pytest.mark.parametrize(("h", "w", "size", "margin"), [(300, 260, 100, 64), (50, 70, 100, 8)])
def test_chunks_cover_the_scene_once_and_read_inside_it(h, w, size, margin):
    covered = np.zeros((h, w), dtype=int)
    for chunk in chunk_windows(h, w, size, margin):
        top, left, ch, cw = chunk.core
        t0, l0, rh, rw = chunk.read
        covered[top : top + ch, left : left + cw] += 1
        assert 0 <= t0 <= top and 0 <= l0 <= left
        assert t0 + rh <= h and l0 + rw <= w
        assert top - t0 == min(margin, top) and chunk.offset == (top - t0, left - l0)
        assert t0 + rh == min(h, top + ch + margin)
    assert (covered == 1).all()


def test_count_tiles_single_and_grid():
    assert count_tiles(100, 100, 128, 0.25) == 1
    assert count_tiles(300, 128, 128, 0.25) == 3
