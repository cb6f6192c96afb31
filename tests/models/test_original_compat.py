"""Checkpoint compatibility with the original single-file implementation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests import reference_original
from unet_resnet.models import UNetWithResnet50Encoder

MANIFEST = Path(__file__).resolve().parents[3] / "shared" / "reference" / "original_state_dict.tsv"


def _shape(tensor: torch.Tensor) -> str:
    return "x".join(str(s) for s in tensor.shape)


@pytest.fixture(scope="module")
def ours():
    return UNetWithResnet50Encoder(3, encoder_weights=None)


@pytest.mark.skipif(not MANIFEST.exists(), reason="shared/reference is not beside the repo")
def test_state_dict_matches_reference_manifest(ours):
    rows = MANIFEST.read_text().splitlines()[1:]
    expected = [tuple(row.split("\t")) for row in rows if row]
    actual = [(key, _shape(value)) for key, value in ours.state_dict().items()]
    assert actual == expected


def test_original_checkpoint_loads_strict_and_gives_same_outputs(ours, tmp_path):
    torch.manual_seed(1)
    original = reference_original.UNetWithResnet50Encoder(n_classes=3)
    # Make BatchNorm statistics non-trivial, as after training, so the comparison means more.
    original.train()
    with torch.no_grad():
        for _ in range(2):
            original(torch.randn(2, 3, 64, 64))
    path = tmp_path / "original.pth"
    torch.save(original.state_dict(), path)

    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    original.eval()
    ours.eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected_logits, expected_features = original(x, with_output_feature_map=True)
        logits, features = ours(x, with_output_feature_map=True)
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(features, expected_features)
