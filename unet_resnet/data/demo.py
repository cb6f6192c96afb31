"""The built-in synthetic dataset: the demo's default and the tests' fixture.

Shapes of three classes (disk, square, triangle) on textured backgrounds. Each class has its
own outline and surface pattern, but colours are drawn independently of the class,
backgrounds carry blobs of the same colours, shapes occlude each other and the whole image is
noisy, so no threshold on colour or brightness separates the classes: a model has to learn
pattern and shape.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from unet_resnet.data.classes import ClassInfo
from unet_resnet.io import write_mask_png

__all__ = ["DEMO_CLASSES", "make_demo_dataset", "make_demo_sample"]

DEMO_CLASSES = ClassInfo(
    names=["background", "disk", "square", "triangle"],
    colors=[(0, 0, 0), (220, 20, 60), (0, 128, 255), (255, 200, 0)],
)


def _smooth_field(rng: np.random.Generator, size: int, cells: int, channels: int) -> np.ndarray:
    coarse = rng.uniform(0, 255, (cells, cells, channels)).astype(np.uint8)
    img = Image.fromarray(coarse[..., 0] if channels == 1 else coarse)
    field = np.asarray(img.resize((size, size), Image.BICUBIC), dtype=np.float32)
    return field.reshape(size, size, channels)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Stripes at a random angle and frequency, one value per pixel in [-1, 1]."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    freq = rng.uniform(0.1, 0.6)
    return np.sin((x * np.cos(angle) + y * np.sin(angle)) * freq)


def _shape_mask(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    canvas = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(canvas)
    r = rng.uniform(size / 9, size / 4.5)
    cx, cy = rng.uniform(r * 0.5, size - r * 0.5, 2)
    if kind == 1:  # disk (a slightly elliptic one)
        ry = r * rng.uniform(0.8, 1.2)
        draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=1)
    elif kind == 2:  # square, rotated
        angle = rng.uniform(0, np.pi / 2)
        corners = [
            (cx + r * np.cos(angle + k * np.pi / 2), cy + r * np.sin(angle + k * np.pi / 2))
            for k in range(4)
        ]
        draw.polygon(corners, fill=1)
    else:  # triangle
        angle = rng.uniform(0, 2 * np.pi)
        corners = [
            (
                cx + r * 1.2 * np.cos(angle + k * 2 * np.pi / 3),
                cy + r * 1.2 * np.sin(angle + k * 2 * np.pi / 3),
            )
            for k in range(3)
        ]
        draw.polygon(corners, fill=1)
    return np.asarray(canvas, dtype=bool)


def _class_texture(rng: np.random.Generator, size: int, kind: int) -> np.ndarray:
    """Each shape class has its own surface pattern (in any colour): fine stripes, a checker
    board, or speckle. Pattern plus outline make a class; neither colour nor brightness does."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind == 1:
        angle = rng.uniform(0, np.pi)
        return np.sign(np.sin((x * np.cos(angle) + y * np.sin(angle)) * rng.uniform(1.2, 1.6)))
    if kind == 2:
        period = rng.uniform(3.0, 5.0)
        return np.sign(np.sin(x * np.pi / period) * np.sin(y * np.pi / period))
    return np.where(rng.random((size, size)) < 0.3, 1.0, -0.3)


def make_demo_sample(rng: np.random.Generator, size: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """One ``size x size`` RGB uint8 image and its class-index mask."""
    image = _smooth_field(rng, size, 4, 3) * 0.7 + 40
    image += _texture(rng, size)[..., None] * rng.uniform(5, 20)
    mask = np.zeros((size, size), dtype=np.uint8)

    # Background distractors: smooth blobs in shape-like colours, still background.
    blobs = _smooth_field(rng, size, 6, 1)[..., 0] > rng.uniform(190, 215)
    image[blobs] = rng.uniform(0, 255, 3) + _texture(rng, size)[blobs][:, None] * 20

    for _ in range(rng.integers(2, 5)):
        kind = int(rng.integers(1, 4))
        region = _shape_mask(rng, size, kind)
        color = rng.uniform(30, 225, 3)
        pattern = _class_texture(rng, size, kind)[region][:, None]
        image[region] = color + pattern * rng.uniform(25, 45)
        mask[region] = kind  # drawn later = in front: occlusion

    image += rng.normal(0, 10, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), mask


def make_demo_dataset(
    path: str | os.PathLike,
    n_train: int = 160,
    n_val: int = 40,
    size: int = 128,
    seed: int = 0,
    *,
    n_test: int = 0,
) -> Path:
    """Write the synthetic dataset in the folder layout and return its root.

    Layout: ``path/{train,val[,test]}/{images,masks}/NNNN.png`` (RGB images, palette-PNG
    masks) and ``path/classes.json`` with ``names`` and ``colors``.
    """
    root = Path(path)
    rng = np.random.default_rng(seed)
    for split, count in (("train", n_train), ("val", n_val), ("test", n_test)):
        if count <= 0:
            continue
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, mask = make_demo_sample(rng, size)
            Image.fromarray(image).save(root / split / "images" / f"{i:04d}.png")
            write_mask_png(root / split / "masks" / f"{i:04d}.png", mask, DEMO_CLASSES.colors)
    DEMO_CLASSES.save(root / "classes.json")
    return root
