"""Shared fixtures: an isolated, offline torch cache and fake pretrained weight files.

Tests never touch the network: TORCH_HOME and the Hugging Face Hub cache point at empty
temporary folders and UNET_RESNET_OFFLINE=1 (and HF_HUB_OFFLINE=1) forbid downloads. Tests
that need "ImageNet" weights get a file with known random values placed where torch's hub cache
would keep the real one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision

from unet_resnet.data import make_demo_dataset
from unet_resnet.models.weights import OFFLINE_ENV, cached_weights_path, resolve_torchvision_weights


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv(OFFLINE_ENV, "1")
    return home


def make_resnet_state_dict(encoder: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state dict with seeded random values (stands in for ImageNet)."""
    torch.manual_seed(seed)
    return torchvision.models.get_model(encoder, weights=None).state_dict()


_STATE_DICTS: dict[str, dict[str, torch.Tensor]] = {}


@pytest.fixture
def cached_imagenet(offline_torch_home):
    """Place fake IMAGENET1K_V1 files in the temporary hub cache; returns their state dicts."""

    def place(encoder: str) -> dict[str, torch.Tensor]:
        if encoder not in _STATE_DICTS:
            _STATE_DICTS[encoder] = make_resnet_state_dict(encoder)
        path = cached_weights_path(resolve_torchvision_weights(encoder, "imagenet").url)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(_STATE_DICTS[encoder], path)
        return _STATE_DICTS[encoder]

    return place


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), 24, 4, 64, seed=0, n_test=2)


@pytest.fixture(scope="session")
def checkpoint(demo_data, tmp_path_factory):
    from unet_resnet.training import TrainConfig, train

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
        calibrate=False,  # temperature 1: the calibration tests fit their own
    )
    return train(config).best_checkpoint


@pytest.fixture(autouse=True, scope="session")
def isolated_fastpath_cache(tmp_path_factory):
    """Fast-path measurements go to a per-session folder, never the user's cache; ``auto``
    times no other backend against torch (converting every test's model to OpenVINO and ONNX
    would cost minutes): tests/inference/test_backends.py and the OpenVINO cases time them."""
    folder = tmp_path_factory.mktemp("unet_resnet_cache")
    patch = pytest.MonkeyPatch()
    patch.setenv("UNET_RESNET_CACHE", str(folder))
    patch.setenv("UNET_RESNET_AUTO_BACKENDS", "torch")
    yield folder
    patch.undo()


def tiny_config(data, out, **overrides):
    """A TrainConfig for tiny, fast runs (resnet18, random init, 32 px, no workers)."""
    from unet_resnet.training import TrainConfig

    values = dict(
        data=str(data),
        out=str(out),
        encoder="resnet18",
        encoder_weights=None,
        image_size=32,
        batch_size=4,
        workers=0,
        progress=False,
        epochs=1,
        calibrate=False,  # the tests of calibration at the end of training turn it on
    )
    values.update(overrides)
    return TrainConfig(**values)


def spy_keep_freed_memory(monkeypatch, module) -> list[bool]:
    """Record the ``enabled`` of every ``keep_freed_memory`` block ``module`` enters (the
    real blocks still run)."""
    from unet_resnet.accel import memory

    entered: list[bool] = []

    def spy(enabled=True):
        entered.append(enabled)
        return memory.keep_freed_memory(enabled)

    monkeypatch.setattr(module, "keep_freed_memory", spy)
    return entered


_OWN_PROCESS_ENV = "UNET_RESNET_TEST_OWN_PROCESS"
#: The environment the suite started with: what earlier tests set in this process (Lightning's
#: DDP and seeding variables: WORLD_SIZE, LOCAL_RANK, MASTER_PORT, PL_GLOBAL_SEED, ...) must not
#: leak into a test run in a process of its own.
_START_ENV = dict(os.environ)
#: what the session sets for every test (its cache, the backends ``auto`` times) and carries
_CARRIED_ENV = ("UNET_RESNET_CACHE", "UNET_RESNET_AUTO_BACKENDS")


def elsewhere(request) -> bool:
    """Run the calling test again in a pytest process of its own; True in the caller, which
    then returns (the child's result is asserted here), False in that child, which runs the
    body. For tests whose outcome depended on what the suite's long process ran before them
    (say so where it is used)."""
    import os
    import subprocess
    import sys

    if os.environ.get(_OWN_PROCESS_ENV) == request.node.nodeid:
        return False
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "slow or not slow",
         request.node.nodeid],
        cwd=root, capture_output=True, text=True, timeout=1200,
        env={
            **_START_ENV,
            **{k: v for k, v in os.environ.items() if k in _CARRIED_ENV},
            _OWN_PROCESS_ENV: request.node.nodeid,
        },
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "1 passed" in done.stdout
    return True
