"""Ensembles of checkpoints: the mean of the members' probabilities, through the fast path,
tiling and the CLI; members that do not fit together are refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_resnet import Segmenter
from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
from unet_resnet.cli import main
from unet_resnet.data import ClassInfo
from unet_resnet.errors import ConfigError
from unet_resnet.models import UNetWithResnet50Encoder


def _checkpoint(path, seed, names=("a", "b", "c"), mean=(0.5,) * 3, std=(0.25,) * 3):
    torch.manual_seed(seed)
    model = UNetWithResnet50Encoder(len(names), encoder="resnet18", encoder_weights=None)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    meta = CheckpointMeta(model.config, ClassInfo(list(names)), mean=list(mean), std=list(std))
    save_checkpoint(path, model.eval(), meta)
    return path


@pytest.mark.parametrize("tile_size", [1024, 48])
def test_ensemble_is_the_mean_of_the_members(tmp_path, tile_size):
    paths = [_checkpoint(tmp_path / f"m{k}.pt", seed=k) for k in range(2)]
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    options = dict(precision="fp32", tile_size=tile_size, overlap=16)
    members = [Segmenter.from_checkpoint(p, **options).predict_proba(image) for p in paths]
    ensemble = Segmenter.from_checkpoint(paths, **options)
    np.testing.assert_allclose(ensemble.predict_proba(image), np.mean(members, 0), atol=1e-5)
    assert ensemble.classes.names == ["a", "b", "c"]


def test_members_must_share_classes(tmp_path):
    a = _checkpoint(tmp_path / "a.pt", 0)
    b = _checkpoint(tmp_path / "b.pt", 1, names=("a", "b", "x"))
    with pytest.raises(ConfigError, match=r"a\.pt and .*b\.pt cannot be ensembled"):
        Segmenter.from_checkpoint([a, b])


def test_predict_cli_with_two_checkpoints(tmp_path, demo_data, capsys):
    paths = [str(_checkpoint(tmp_path / f"m{k}.pt", seed=k)) for k in range(2)]
    out = tmp_path / "pred"
    images = str(demo_data / "test" / "images")
    argv = ["predict", "--checkpoint", paths[0], images, "--checkpoint", paths[1]]
    assert main([*argv, "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 2


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_members_with_their_own_normalisation_each_normalise_their_input(tmp_path, precision):
    """Cross-validation folds of data that is not 8-bit each fit their own normalisation; the
    ensemble refused them ("they differ in normalisation"). Each member now reads the image
    as its own checkpoint says: the ensemble is the mean of the members run alone."""
    stats = [((0.5,) * 3, (0.25,) * 3), ((0.3, 0.4, 0.5), (0.1, 0.2, 0.3))]
    paths = [
        _checkpoint(tmp_path / f"m{k}.pt", seed=k, mean=m, std=s) for k, (m, s) in enumerate(stats)
    ]
    image = np.random.default_rng(0).integers(0, 65535, (64, 80, 3), dtype=np.uint16)
    options = dict(precision=precision, tile_size=1024)
    members = [Segmenter.from_checkpoint(p, **options).predict_proba(image) for p in paths]
    ensemble = Segmenter.from_checkpoint(paths, **options).predict_proba(image)
    mean = np.mean(members, 0)
    if precision == "fp32":
        np.testing.assert_allclose(ensemble, mean, atol=1e-5)
    else:  # bf16: the arg-max agrees where the members' mean is not a near tie
        clear = np.sort(mean, 0)[-1] - np.sort(mean, 0)[-2] > 0.05
        assert (ensemble.argmax(0) == mean.argmax(0))[clear].mean() > 0.99


def test_members_of_different_tasks_or_channels_are_still_refused(tmp_path):
    a = _checkpoint(tmp_path / "a.pt", 0, mean=(0.1,) * 3)
    b = _checkpoint(tmp_path / "b.pt", 1, names=("a", "b"), mean=(0.9,) * 3)
    with pytest.raises(ConfigError, match="classes"):
        Segmenter.from_checkpoint([a, b])
