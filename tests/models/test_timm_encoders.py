"""timm backbones in the guide's U-Net (``tu-NAME``): shapes, training, checkpoints, export,
the fast path, weights from the Hub cache or a local file, and the errors."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from unet_resnet import Segmenter
from unet_resnet.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from unet_resnet.cli import main
from unet_resnet.data import ClassInfo
from unet_resnet.errors import ConfigError, WeightsFileError, WeightsUnavailableError
from unet_resnet.export import export_model
from unet_resnet.models import UNetWithResnet50Encoder, create_model, list_models
from unet_resnet.models.timm_encoder import list_timm_encoders

timm = pytest.importorskip("timm")

# One small member of each family the issue names: ResNet, ConvNeXt (no stride-2 feature),
# EfficientNet, MobileNetV3, RegNet.
FAMILIES = [
    "tu-resnet18",
    "tu-convnext_atto",
    "tu-efficientnet_b0",
    "tu-mobilenetv3_small_050",
    "tu-regnetx_002",
]


def _model(encoder: str, classes: int = 3, **kwargs) -> UNetWithResnet50Encoder:
    torch.manual_seed(0)
    return UNetWithResnet50Encoder(classes, encoder=encoder, encoder_weights=None, **kwargs)


def test_tested_list_is_what_this_file_covers():
    assert set(list_timm_encoders()) == set(FAMILIES)
    assert {f"unet_{name}" for name in FAMILIES} <= set(list_models())


@pytest.mark.parametrize("encoder", FAMILIES)
def test_family_trains_round_trips_exports_and_packs(encoder, tmp_path):
    model = _model(encoder)
    # Odd sizes come back at full resolution, including encoders that start at stride 4.
    model.eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 70, 90)).shape == (1, 3, 70, 90)

    # One optimiser step lowers the loss on a fixed batch.
    model.train()
    x = torch.randn(4, 3, 64, 64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 1).long()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]

    # Checkpoint round trip: the encoder name is in the metadata and rebuilds the model.
    model.eval()
    meta = CheckpointMeta(model.config, ClassInfo(["a", "b", "c"]), image_size=64)
    path = tmp_path / "model.pt"
    save_checkpoint(path, model, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert loaded_meta.model_config["encoder"] == encoder
    check = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(loaded(check), model(check), rtol=0, atol=0)

    # ONNX export passes its parity check.
    report = export_model(path, tmp_path / "model.onnx", format="onnx")
    assert report.max_abs_diff <= 1e-3

    # The fast path: oneDNN-packed convolutions agree with plain ones.
    image = np.random.default_rng(0).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    packed = Segmenter.from_checkpoint(path, precision="fp32", pack_weights=True)
    plain = Segmenter.from_checkpoint(path, precision="fp32", pack_weights=False)
    np.testing.assert_allclose(
        packed.predict_proba(image), plain.predict_proba(image), atol=1e-4, rtol=0
    )


def test_missing_stride_two_level_is_an_up_block_without_skip():
    model = _model("tu-convnext_atto")
    assert model.encoder_reductions == (1, 4, 8, 16, 32)
    assert model.skip_indices == (3, 2, 1, None, 0)
    # The stride-2 up block takes only the upsampled tensor (no skip channels).
    block = model.up_blocks[3]
    assert block.conv_block_1.conv.in_channels == model.decoder_channels[3]


def test_guide_model_is_untouched_by_the_encoder_contract():
    model = _model("resnet50")
    assert model.decoder_channels == (1024, 512, 256, 128, 64)
    assert model.skip_indices == (4, 3, 2, 1, 0)
    assert not hasattr(model, "encoder") or "encoder" not in model._modules


def test_frozen_timm_encoder_gets_no_gradients():
    model = _model("tu-resnet18").freeze_encoder().train()
    model(torch.randn(2, 3, 64, 64)).sum().backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert model.out.weight.grad is not None


def test_create_model_and_in_channels():
    model = create_model(
        "unet_tu-efficientnet_b0", num_classes=2, in_channels=5, encoder_weights=None
    )
    assert model(torch.randn(1, 5, 40, 40)).shape == (1, 2, 40, 40)


def _timm_state_dict(name: str, seed: int = 1, in_chans: int = 3) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return timm.create_model(name, pretrained=False, in_chans=in_chans).state_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_timm_weights_from_a_local_file(tmp_path, suffix):
    state_dict = _timm_state_dict("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    else:
        torch.save(state_dict, path)
    model = UNetWithResnet50Encoder(2, encoder="tu-resnet18", encoder_weights=str(path))
    torch.testing.assert_close(model.encoder.conv1.weight, state_dict["conv1.weight"])
    torch.testing.assert_close(
        model.encoder.layer4[1].conv2.weight, state_dict["layer4.1.conv2.weight"]
    )


def _place_in_hub_cache(cache, repo: str, state_dict) -> None:
    folder = cache / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    save_file(
        {k: v.contiguous() for k, v in state_dict.items()}, str(snapshot / "model.safetensors")
    )


def test_imagenet_weights_come_from_the_hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    state_dict = _timm_state_dict("convnext_atto", seed=4)
    _place_in_hub_cache(cache, "timm/convnext_atto.d2_in1k", state_dict)
    model = UNetWithResnet50Encoder(2, encoder="tu-convnext_atto", encoder_weights="imagenet")
    torch.testing.assert_close(model.encoder.stem_0.weight, state_dict["stem.0.weight"])
    # in_channels=1 adapts the pretrained stem (timm's adaptation: the RGB kernels summed).
    grey = UNetWithResnet50Encoder(
        2, encoder="tu-convnext_atto", encoder_weights="imagenet", in_channels=1
    )
    torch.testing.assert_close(
        grey.encoder.stem_0.weight, state_dict["stem.0.weight"].sum(1, keepdim=True)
    )


@pytest.mark.parametrize("switch", ["HF_HUB_OFFLINE", "UNET_RESNET_OFFLINE"])
def test_offline_without_cache_is_one_clear_error(tmp_path, monkeypatch, switch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("UNET_RESNET_OFFLINE", raising=False)
    monkeypatch.setenv(switch, "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    with pytest.raises(WeightsUnavailableError) as info:
        UNetWithResnet50Encoder(2, encoder="tu-convnext_atto", encoder_weights="imagenet")
    message = str(info.value)
    assert "convnext_atto" in message and "timm/convnext_atto.d2_in1k" in message
    assert str(tmp_path / "empty") in message and switch in message
    assert "encoder_weights=None" in message


def test_timm_missing_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(ConfigError, match=r"unet-resnet\[timm\]"):
        UNetWithResnet50Encoder(2, encoder="tu-resnet18", encoder_weights=None)


def test_unknown_timm_model_and_bad_weights_tag():
    with pytest.raises(ConfigError, match="not_a_model"):
        UNetWithResnet50Encoder(2, encoder="tu-not_a_model", encoder_weights=None)
    with pytest.raises(ConfigError, match="imagenet"):
        UNetWithResnet50Encoder(2, encoder="tu-resnet18", encoder_weights="IMAGENET1K_V2")
    with pytest.raises(ConfigError, match="stride"):
        UNetWithResnet50Encoder(2, encoder="tu-vit_tiny_patch16_224", encoder_weights=None)


def test_wrong_timm_weights_file_is_named(tmp_path):
    path = tmp_path / "other.safetensors"
    save_file(_timm_state_dict("resnet18"), str(path))
    with pytest.raises(WeightsFileError, match="other.safetensors"):
        UNetWithResnet50Encoder(2, encoder="tu-convnext_atto", encoder_weights=str(path))


def _multispectral_resnet50(path, bands: int = 13) -> dict[str, torch.Tensor]:
    torch.manual_seed(5)
    resnet = torchvision.models.resnet50(weights=None)
    resnet.conv1 = torch.nn.Conv2d(bands, 64, 7, 2, 3, bias=False)
    state_dict = resnet.state_dict()
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(path))
    return state_dict


def test_multispectral_resnet50_weights_load_unchanged(tmp_path):
    path = tmp_path / "resnet50_sentinel2.safetensors"
    state_dict = _multispectral_resnet50(path)
    model = UNetWithResnet50Encoder(
        2, encoder="resnet50", encoder_weights=str(path), in_channels=13
    )
    torch.testing.assert_close(model.input_block[0].weight, state_dict["conv1.weight"])
    torch.testing.assert_close(
        model.down_blocks[3][2].conv3.weight, state_dict["layer4.2.conv3.weight"]
    )
    assert model(torch.randn(1, 13, 64, 64)).shape == (1, 2, 64, 64)


def test_multispectral_channel_mismatch_says_both_counts(tmp_path):
    path = tmp_path / "resnet50_sentinel2.safetensors"
    _multispectral_resnet50(path)
    with pytest.raises(WeightsFileError, match=r"13 input channels.*in_channels=4.*in_channels=13"):
        UNetWithResnet50Encoder(2, encoder="resnet50", encoder_weights=str(path), in_channels=4)


def test_multispectral_timm_weights(tmp_path):
    path = tmp_path / "resnet18_13.safetensors"
    state_dict = _timm_state_dict("resnet18", in_chans=13)
    save_file(state_dict, str(path))
    model = UNetWithResnet50Encoder(
        2, encoder="tu-resnet18", encoder_weights=str(path), in_channels=13
    )
    torch.testing.assert_close(model.encoder.conv1.weight, state_dict["conv1.weight"])
    with pytest.raises(WeightsFileError, match="13 input channels"):
        UNetWithResnet50Encoder(2, encoder="tu-resnet18", encoder_weights=str(path), in_channels=4)


def test_train_and_predict_cli_with_a_timm_encoder(demo_data, tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", str(demo_data), "--out", str(run), "--encoder"]
    argv += ["tu-mobilenetv3_small_050", "--encoder-weights", "none", "--epochs", "1"]
    argv += ["--image-size", "64", "--batch-size", "8", "--workers", "0"]
    assert main(argv) == 0, capsys.readouterr().err
    best = run / "checkpoints" / "best.pt"
    _, meta = load_checkpoint(best)
    assert meta.model_config["encoder"] == "tu-mobilenetv3_small_050"
    out = tmp_path / "pred"
    code = main(["predict", str(demo_data / "test" / "images"), "--checkpoint", str(best),
                 "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert len(list(out.glob("*.png"))) == 2


def test_bad_encoder_flag_is_one_line(demo_data, tmp_path, capsys):
    argv = ["train", "--data", str(demo_data), "--out", str(tmp_path / "r"), "--encoder", "tu-"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--encoder" in err and "Traceback" not in err
