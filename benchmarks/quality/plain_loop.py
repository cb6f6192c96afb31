"""The baseline: the training loop a user writes in 30 lines, with the guide's model.

Adam (lr 1e-3), cross-entropy, cosine schedule per step, horizontal and vertical flips and
random crops, per-dataset z-score normalisation, bf16 autocast + channels_last where bf16 is
native, no validation during training: the recipe that beat our old defaults.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from unet_resnet.hardware import cpu_has_fast_bf16
from unet_resnet.io import read_image, read_mask_raw, to_float_image
from unet_resnet.models import UNetWithResnet50Encoder


def _load(root: Path, split: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, masks = [], []
    for path in sorted((root / split / "images").iterdir()):
        images.append(to_float_image(read_image(path)))
        masks.append(read_mask_raw(root / split / "masks" / f"{path.stem}.png").astype(np.int64))
    return images, masks


def train_plain(
    root: Path,
    *,
    num_classes: int,
    epochs: int,
    crop: int,
    batch_size: int,
    seed: int = 0,
    encoder: str = "resnet50",
) -> tuple[torch.nn.Module, list[float], list[float], float]:
    """Train the guide's model; returns ``(model, mean, std, seconds)``."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, masks = _load(root, "train")
    pixels = np.concatenate([im.reshape(-1, im.shape[-1]) for im in images])
    mean, std = pixels.mean(0), pixels.std(0) + 1e-6
    model = UNetWithResnet50Encoder(
        num_classes, in_channels=images[0].shape[-1], encoder=encoder, encoder_weights=None
    ).to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    bf16 = cpu_has_fast_bf16()

    def sample(i: int) -> tuple[np.ndarray, np.ndarray]:
        image, mask = (images[i] - mean) / std, masks[i]
        h, w = mask.shape
        pad_h, pad_w = max(0, crop - h), max(0, crop - w)
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)))
            mask = np.pad(mask, ((0, pad_h), (0, pad_w)), constant_values=255)
        top = rng.integers(0, mask.shape[0] - crop + 1)
        left = rng.integers(0, mask.shape[1] - crop + 1)
        image, mask = (
            image[top : top + crop, left : left + crop],
            mask[top : top + crop, left : left + crop],
        )
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
        return image.transpose(2, 0, 1).copy(), mask.copy()

    start = time.perf_counter()
    model.train()
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for b in range(steps_per_epoch):
            batch = [sample(i) for i in order[b * batch_size : (b + 1) * batch_size]]
            x = torch.from_numpy(np.stack([s[0] for s in batch])).float()
            y = torch.from_numpy(np.stack([s[1] for s in batch]))
            x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y, ignore_index=255)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
    seconds = time.perf_counter() - start
    return model.eval(), mean.tolist(), std.tolist(), seconds
