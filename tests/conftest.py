"""Shared fixtures: an isolated, offline torch cache and fake pretrained weight files.

Tests never touch the network: TORCH_HOME points at an empty temporary folder and
UNET_RESNET_OFFLINE=1 forbids downloads. Tests that need "ImageNet" weights get a file with
known random values placed where torch's hub cache would keep the real one.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torchvision

from unet_resnet.models.weights import OFFLINE_ENV, cached_weights_path, resolve_torchvision_weights


@pytest.fixture(autouse=True)
def offline_torch_home(tmp_path_factory, monkeypatch) -> Path:
    home = tmp_path_factory.mktemp("torch_home")
    monkeypatch.setenv("TORCH_HOME", str(home))
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
