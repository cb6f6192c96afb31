"""Sliding-window inference: tiles, batched, blended so seams do not show.

Tiles of ``tile_size`` overlap by ``overlap`` (a fraction of the tile or pixels). Their
probabilities are accumulated with a weight window that falls off towards the tile border
(Gaussian by default, as in nnU-Net; or linear), then divided by the summed weights. Tiles are
placed so that the last one ends exactly at the image border, so no tile reads outside the
image (the model itself reflect-pads each tile to a multiple of 32). An image that fits in one
tile is a single plain forward pass.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from typing import Literal, get_args

import torch
from tqdm.auto import tqdm

from unet_resnet.grid import count_tiles, overlap_pixels, tile_starts

__all__ = [
    "BLENDS",
    "Blend",
    "count_tiles",
    "overlap_pixels",
    "sliding_window_inference",
    "tile_starts",
    "weight_window",
]

Blend = Literal["gaussian", "linear", "constant"]
BLENDS: tuple[str, ...] = get_args(Blend)


@functools.lru_cache(maxsize=32)
def _profile(n: int, blend: Blend) -> torch.Tensor:
    """One side of the weight window (float64, max 1, min 1e-3)."""
    x = torch.arange(n, dtype=torch.float64) + 0.5
    match blend:
        case "gaussian":
            sigma = n / 8  # nnU-Net's choice: centre dominates, border still counts
            w = torch.exp(-((x - n / 2) ** 2) / (2 * sigma**2))
        case "linear":
            w = 1 - (x - n / 2).abs() / (n / 2)
        case "constant":
            w = torch.ones(n, dtype=torch.float64)
        case _:
            raise ValueError(f"Unknown blend {blend!r}: gaussian, linear, constant.")
    # Never zero: border pixels that only one tile covers must still get a prediction.
    return (w / w.max()).clamp_min(1e-3)


@functools.lru_cache(maxsize=16)
def _window(height: int, width: int, blend: Blend) -> torch.Tensor:
    return (_profile(height, blend)[:, None] * _profile(width, blend)[None, :]).float()


def weight_window(height: int, width: int, blend: Blend = "gaussian") -> torch.Tensor:
    """The ``height x width`` blending weights for one tile (max 1, min 1e-3)."""
    return _window(height, width, blend)


def _coverage(length: int, starts: list[int], profile: torch.Tensor) -> torch.Tensor:
    """Summed weight profiles of the tiles along one axis."""
    total = torch.zeros(length, dtype=torch.float64)
    for start in starts:
        total[start : start + len(profile)] += profile
    return total


def _batches(items: list, size: int) -> Iterator[list]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def sliding_window_inference(
    image: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor],
    *,
    tile_size: int,
    overlap: float = 0.25,
    batch_size: int = 4,
    blend: Blend = "gaussian",
    progress: bool = False,
) -> torch.Tensor:
    """Probabilities (float32) for one ``C x H x W`` image, on ``image``'s device.

    Args:
        image: the input, any size and dtype; ``forward`` receives batches of its tiles as
            they are (so raw integer images can be normalised per tile batch).
        forward: maps an ``N x C x h x w`` batch to ``N x K x h x w`` class probabilities.
        tile_size: tile side in pixels.
        overlap: fraction of the tile (< 1) or pixels (>= 1) shared by neighbouring tiles.
        batch_size: tiles per forward call (the memory bound).
        blend: weight window for accumulating overlapping tiles.
        progress: show a progress bar over tiles.
    """
    _, h, w = image.shape
    if h <= tile_size and w <= tile_size:
        return forward(image.unsqueeze(0))[0].float()
    stride = tile_size - overlap_pixels(tile_size, overlap)
    th, tw = min(tile_size, h), min(tile_size, w)
    tops, lefts = tile_starts(h, th, stride), tile_starts(w, tw, stride)
    tiles = [(top, left) for top in tops for left in lefts]
    # Tiles form a grid and the window is separable, so the summed weights are too: an outer
    # product of two 1-D coverages instead of one full-size accumulation per tile. The four
    # 1-D profiles travel to the device as one copy (on a GPU each copy is a synchronisation).
    ph, pw = _profile(th, blend), _profile(tw, blend)
    ch, cw = _coverage(h, tops, ph), _coverage(w, lefts, pw)
    sides = torch.cat([ph, pw, ch, cw]).to(image.device, non_blocking=True)
    ph, pw, ch, cw = sides.split([th, tw, h, w])
    weight = torch.outer(ph, pw).float()
    norm = torch.outer(ch.float(), cw.float())
    out: torch.Tensor | None = None
    bar = tqdm(total=len(tiles), desc="tiles", unit="tile", disable=not progress, leave=False)
    for group in _batches(tiles, batch_size):
        batch = torch.stack([image[:, y : y + th, x : x + tw] for y, x in group])
        probs = forward(batch).float()
        if out is None:
            out = torch.zeros((probs.shape[1], h, w), dtype=torch.float32, device=image.device)
        for (y, x), p in zip(group, probs, strict=True):
            out[:, y : y + th, x : x + tw].addcmul_(p, weight)
        bar.update(len(group))
    bar.close()
    assert out is not None
    return out.div_(norm)
