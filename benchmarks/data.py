"""Data loading: decode + augment + collate images/s for the default preset."""

from __future__ import annotations

import tempfile
import time
from typing import Any


def bench_data(size: int = 512, workers: int = 2, n: int = 48, batch: int = 8) -> dict[str, Any]:
    """Loader images/s for the default augmentation preset (decode + augment + collate)."""
    from torch.utils.data import DataLoader

    from unet_resnet.data import SegmentationFolder, build_train_transform, make_demo_dataset
    from unet_resnet.data.datasets import pad_collate

    with tempfile.TemporaryDirectory(prefix="bench-data-") as tmp:
        root = make_demo_dataset(tmp, n, 0, size, seed=0)
        ds = SegmentationFolder(
            root, "train", transform=build_train_transform("default", size=size)
        )
        loader = DataLoader(
            ds,
            batch_size=batch,
            num_workers=workers,
            collate_fn=pad_collate,
            persistent_workers=workers > 0,
        )
        for _ in loader:  # warm-up epoch: worker start-up
            pass
        start = time.perf_counter()
        count = 0
        for _ in range(2):
            for images, _ in loader:
                count += images.shape[0]
    return {
        "size": size,
        "workers": workers,
        "preset": "default",
        "images_per_s": count / (time.perf_counter() - start),
    }
