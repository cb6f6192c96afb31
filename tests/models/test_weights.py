"""Pretrained weights: hub cache, local files, adapted first conv, the clear offline error."""

from __future__ import annotations

import urllib.error

import pytest
import torch
from safetensors.torch import save_file

from unet_resnet.errors import WeightsFileError, WeightsUnavailableError
from unet_resnet.models import UNetWithResnet50Encoder
from unet_resnet.models import weights as weights_module
from unet_resnet.models.weights import OFFLINE_ENV, cached_weights_path


def test_imagenet_weights_load_from_torch_home_cache(cached_imagenet):
    expected = cached_imagenet("resnet18")
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="imagenet")
    torch.testing.assert_close(model.input_block[0].weight, expected["conv1.weight"])
    torch.testing.assert_close(
        model.down_blocks[3][1].conv2.weight, expected["layer4.1.conv2.weight"]
    )
    torch.testing.assert_close(model.input_block[1].running_var, expected["bn1.running_var"])


def test_explicit_torchvision_enum_name(cached_imagenet):
    expected = cached_imagenet("resnet18")
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="IMAGENET1K_V1")
    torch.testing.assert_close(model.input_block[0].weight, expected["conv1.weight"])


def test_unknown_enum_name_lists_choices():
    with pytest.raises(ValueError, match="IMAGENET1K_V1"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="IMAGENET9K")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_from_local_path(tmp_path, suffix):
    from tests.conftest import make_resnet_state_dict

    state_dict = make_resnet_state_dict("resnet18", seed=3)
    path = tmp_path / f"encoder{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save({"state_dict": state_dict}, path)  # nested, as training scripts save it
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=str(path))
    torch.testing.assert_close(model.input_block[0].weight, state_dict["conv1.weight"])


def test_offline_without_cache_gives_clear_error(offline_torch_home):
    with pytest.raises(WeightsUnavailableError) as info:
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="imagenet")
    message = str(info.value)
    expected = cached_weights_path("https://download.pytorch.org/models/resnet18-f37072fd.pth")
    assert str(expected) in message
    assert str(offline_torch_home) in message
    assert "encoder_weights=None" in message
    assert "https://download.pytorch.org/models/resnet18-f37072fd.pth" in message
    assert info.value.__cause__ is None


def test_failed_download_gives_clear_error(monkeypatch):
    monkeypatch.delenv(OFFLINE_ENV)

    def no_network(url, destination):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(weights_module, "_download", no_network)
    with pytest.raises(WeightsUnavailableError, match="URLError.*Name or service not known"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="imagenet")


def test_download_lands_in_torch_home(monkeypatch, offline_torch_home):
    """With network, the file is fetched once into $TORCH_HOME/hub/checkpoints."""
    from tests.conftest import make_resnet_state_dict

    monkeypatch.delenv(OFFLINE_ENV)
    calls = []

    def fake_download(url, destination):
        calls.append(url)
        destination.parent.mkdir(parents=True, exist_ok=True)
        torch.save(make_resnet_state_dict("resnet18", seed=5), destination)

    monkeypatch.setattr(weights_module, "_download", fake_download)
    UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="imagenet")
    UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights="imagenet")
    assert calls == ["https://download.pytorch.org/models/resnet18-f37072fd.pth"]
    assert (offline_torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth").is_file()


def test_missing_local_file_names_it(tmp_path):
    with pytest.raises(WeightsFileError, match="not found: .*nope.pth"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=tmp_path / "nope.pth")


def test_wrong_architecture_file_is_named(tmp_path):
    from tests.conftest import make_resnet_state_dict

    path = tmp_path / "r18.pth"
    torch.save(make_resnet_state_dict("resnet18"), path)
    with pytest.raises(WeightsFileError, match=r"r18.pth do not fit torchvision's resnet50"):
        UNetWithResnet50Encoder(2, encoder="resnet50", encoder_weights=path)


def test_corrupt_file_is_named(tmp_path):
    path = tmp_path / "broken.pth"
    path.write_bytes(b"not a torch file")
    with pytest.raises(WeightsFileError, match="broken.pth"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=path)


def test_pickled_code_is_refused(tmp_path):
    """weights_only loading: a file that would run code on unpickling is rejected."""

    class Exploit:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pth"
    torch.save({"conv1.weight": Exploit()}, path)
    with pytest.raises(WeightsFileError, match="evil.pth"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=path)


@pytest.mark.parametrize("in_channels", [1, 2, 4, 13])
def test_first_conv_adapted_from_pretrained(cached_imagenet, in_channels):
    rgb = cached_imagenet("resnet18")["conv1.weight"]
    model = UNetWithResnet50Encoder(
        2, in_channels=in_channels, encoder="resnet18", encoder_weights="imagenet"
    )
    weight = model.input_block[0].weight.detach()
    assert weight.shape == (64, in_channels, 7, 7)
    if in_channels == 1:
        torch.testing.assert_close(weight[:, 0], rgb.sum(1))
    else:
        for c in range(in_channels):
            torch.testing.assert_close(weight[:, c], rgb[:, c % 3] * 3 / in_channels)
    # The rest of the encoder is still the pretrained one.
    torch.testing.assert_close(
        model.input_block[1].weight, cached_imagenet("resnet18")["bn1.weight"]
    )
