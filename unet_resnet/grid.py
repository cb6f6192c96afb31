"""Grid arithmetic shared by training windows, tiled prediction and streamed scenes.

Pure integer rules, no tensors: where tiles start, how many pixels tiles overlap, and how a
large scene is cut into chunks read with a margin of context. Every caller uses these, so the
rules exist once (one overlap rounding, one margin rule).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from unet_resnet.errors import ConfigError

__all__ = [
    "MIN_CHUNK_MARGIN",
    "Chunk",
    "chunk_margin",
    "chunk_windows",
    "count_tiles",
    "overlap_pixels",
    "tile_starts",
]

#: Context read around each chunk of a streamed scene, at least: the model's receptive field
#: near a border is what matters, and 64 px covers the decoder's 3x3 convolutions at every level.
MIN_CHUNK_MARGIN = 64


def overlap_pixels(tile_size: int, overlap: float) -> int:
    """``overlap`` below 1 is a fraction of the tile, otherwise a number of pixels."""
    pixels = round(overlap * tile_size) if overlap < 1 else int(overlap)
    if not 0 <= pixels < tile_size:
        raise ConfigError(
            f"overlap must be smaller than the tile ({tile_size} px), got {overlap} ({pixels} px)."
        )
    return pixels


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Starts of tiles covering ``length``; the last tile is flush with the end."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def count_tiles(h: int, w: int, tile_size: int, overlap: float) -> int:
    """How many tiles sliding-window prediction runs for an ``h x w`` image."""
    if h <= tile_size and w <= tile_size:
        return 1
    stride = tile_size - overlap_pixels(tile_size, overlap)
    th, tw = min(tile_size, h), min(tile_size, w)
    return len(tile_starts(h, th, stride)) * len(tile_starts(w, tw, stride))


def chunk_margin(tile_size: int, overlap: float) -> int:
    """Context read around each chunk: the tile overlap, and at least :data:`MIN_CHUNK_MARGIN`."""
    return max(MIN_CHUNK_MARGIN, overlap_pixels(tile_size, overlap))


@dataclass(frozen=True)
class Chunk:
    """One chunk of a scene: the ``core`` it writes and the larger ``read`` window it reads.

    Windows are ``(top, left, height, width)``; ``offset`` is where the core starts inside the
    read window.
    """

    core: tuple[int, int, int, int]
    read: tuple[int, int, int, int]

    @property
    def offset(self) -> tuple[int, int]:
        return self.core[0] - self.read[0], self.core[1] - self.read[1]


def chunk_windows(height: int, width: int, size: int, margin: int) -> Iterator[Chunk]:
    """Chunks of at most ``size`` x ``size`` covering the scene, each read with ``margin``."""
    for top in range(0, height, size):
        for left in range(0, width, size):
            h, w = min(size, height - top), min(size, width - left)
            t0, l0 = max(0, top - margin), max(0, left - margin)
            t1, l1 = min(height, top + h + margin), min(width, left + w + margin)
            yield Chunk((top, left, h, w), (t0, l0, t1 - t0, l1 - l0))
