"""Colour masks, overlays with a legend, and display versions of any image.

Shared by training (TensorBoard grids), ``predict`` (NAME_overlay.png), the demo and the web
page, so a mask looks the same everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = ["colorize", "display_rgb", "overlay", "overlay_with_legend"]

Color = tuple[int, int, int]


def colorize(mask: np.ndarray, colors: Sequence[Color], ignore_index: int = 255) -> np.ndarray:
    """``H x W`` class indices to ``H x W x 3`` uint8 colours (ignored pixels black)."""
    lut = np.zeros((max(256, len(colors)), 3), dtype=np.uint8)
    lut[: len(colors)] = np.asarray(colors, dtype=np.uint8)
    safe = np.where((mask >= 0) & (mask < len(lut)) & (mask != ignore_index), mask, len(lut) - 1)
    out = lut[safe]
    out[mask == ignore_index] = 0
    return out


def display_rgb(image: np.ndarray) -> np.ndarray:
    """Any ``H x W x C`` image as 8-bit RGB for display.

    8-bit RGB passes through; one band is shown grey; other band counts show their first
    three bands. Non-8-bit data is stretched between its 2nd and 98th percentiles, as GIS and
    medical viewers do, so 12/16-bit images are not black.
    """
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    elif image.shape[-1] != 3:
        image = image[..., :3] if image.shape[-1] > 3 else np.repeat(image[..., :1], 3, axis=-1)
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    data = image.astype(np.float32)
    lo, hi = np.nanpercentile(data, 2), np.nanpercentile(data, 98)
    if hi <= lo:
        hi = lo + 1
    return (np.clip((data - lo) / (hi - lo), 0, 1) * 255).astype(np.uint8)


def overlay(
    image: np.ndarray,
    mask: np.ndarray,
    colors: Sequence[Color],
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
    skip_background: bool = True,
) -> np.ndarray:
    """Blend the coloured mask over the image; class 0 left clear when ``skip_background``.

    ``mask`` is ``H x W`` class indices, or ``C x H x W`` 0/1 planes of overlapping classes
    (multilabel): there a pixel takes the mean colour of its classes, so overlaps show as
    mixed colours, and pixels of no class stay clear.

    Blended in bands of rows, so the float working set stays small: memory is the 8-bit
    display image and the 8-bit result, whatever the image's size.
    """
    rgb = display_rgb(image)
    out = np.empty_like(rgb)
    planes = mask.ndim == 3
    palette = np.asarray(colors, dtype=np.float32)
    for top in range(0, rgb.shape[0], _BAND_ROWS):
        rows = slice(top, top + _BAND_ROWS)
        band = rgb[rows].astype(np.float32)
        if planes:
            on = (mask[:, rows] == 1).astype(np.float32)
            count = on.sum(0)
            colored = np.einsum("chw,cd->hwd", on, palette) / np.maximum(count, 1)[..., None]
            blend = count > 0
        else:
            labels = mask[rows]
            colored = colorize(labels, colors, ignore_index).astype(np.float32)
            blend = (labels != ignore_index) & ((labels != 0) if skip_background else True)
        band[blend] = (1 - alpha) * band[blend] + alpha * colored[blend]
        out[rows] = band.astype(np.uint8)
    return out


_BAND_ROWS = 512


def overlay_with_legend(
    image: np.ndarray,
    mask: np.ndarray,
    names: Sequence[str],
    colors: Sequence[Color],
    *,
    alpha: float = 0.5,
    ignore_index: int = 255,
) -> Image.Image:
    """The overlay with a legend strip below: each class's colour, name and area share (for
    ``C x H x W`` planes, each class's share of the image and the share where classes
    overlap)."""
    blended = Image.fromarray(overlay(image, mask, colors, alpha=alpha, ignore_index=ignore_index))
    lines = []
    if mask.ndim == 3:
        on = mask == 1
        counts = on.reshape(on.shape[0], -1).sum(1)
        total = max(on[0].size, 1)
        overlap = int((on.sum(0) > 1).sum())
        lines.append((None, f"overlap (2+ classes): {overlap / total:.1%}"))
    else:
        valid = mask[(mask >= 0) & (mask < len(names))]
        counts = np.bincount(valid.ravel(), minlength=len(names))
        total = max(int(counts.sum()), 1)
    lines = [
        (tuple(color), f"{name}: {counts[k] / total:.1%}")
        for k, (name, color) in enumerate(zip(names, colors, strict=True))
    ] + lines
    font = ImageFont.load_default()
    row = 14
    width = max(blended.width, 160)
    legend = Image.new("RGB", (width, row * len(lines) + 6), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for k, (color, text) in enumerate(lines):
        y = 3 + k * row
        if color is not None:
            draw.rectangle([4, y + 1, 14, y + 11], fill=color, outline=(0, 0, 0))
        draw.text((20, y), text, fill=(0, 0, 0), font=font)
    canvas = Image.new("RGB", (width, blended.height + legend.height), (255, 255, 255))
    canvas.paste(blended, (0, 0))
    canvas.paste(legend, (0, blended.height))
    return canvas
