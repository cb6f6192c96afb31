"""A small trained checkpoint shared by the inference tests."""

from __future__ import annotations

import pytest

from unet_resnet.data import make_demo_dataset
from unet_resnet.training import TrainConfig, train


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), 24, 4, 64, seed=0, n_test=2)


@pytest.fixture(scope="session")
def checkpoint(demo_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    config = TrainConfig(
        data=str(demo_data),
        out=str(out),
        encoder="resnet18",
        encoder_weights=None,
        image_size=64,
        batch_size=8,
        epochs=6,
        lr=3e-3,
        augment="light",
        workers=0,
        progress=False,
        log_images_every=0,
    )
    return train(config).best_checkpoint
