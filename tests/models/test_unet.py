"""The guide's U-Net: shapes for every encoder, odd sizes, bilinear path, channel counts."""

from __future__ import annotations

import pytest
import torch

from unet_resnet import create_model, list_models
from unet_resnet.errors import InputShapeError
from unet_resnet.models import UNetWithResnet50Encoder
from unet_resnet.models.unet import default_decoder_channels


class BaseUNetTester:
    """One test body per behaviour; subclasses only say which encoder they run it on."""

    encoder = "resnet18"
    sizes = [(64, 64), (50, 37), (33, 95)]

    @pytest.fixture(scope="class")
    @classmethod
    def model(cls):
        torch.manual_seed(0)
        return UNetWithResnet50Encoder(3, encoder=cls.encoder, encoder_weights=None)

    def test_forward_backward_shapes(self, model):
        model.train()
        for h, w in self.sizes:
            x = torch.randn(2, 3, h, w, requires_grad=True)
            logits = model(x)
            assert logits.shape == (2, 3, h, w)
            logits.mean().backward()
            assert x.grad is not None and x.grad.shape == x.shape
            assert model.out.weight.grad is not None
            model.zero_grad(set_to_none=True)

    def test_feature_map(self, model):
        model.eval()
        with torch.no_grad():
            logits, features = model(torch.randn(1, 3, 40, 72), with_output_feature_map=True)
        assert logits.shape == (1, 3, 40, 72)
        assert features.shape == (1, model.decoder_channels[-1], 40, 72)

    def test_encoder_contract(self, model):
        x = torch.randn(1, 3, 64, 64)
        with torch.no_grad():
            features = model.eval().encode(x)
        assert [f.shape[1] for f in features] == list(model.encoder_channels)
        assert [64 // f.shape[-1] for f in features] == list(model.encoder_reductions)
        assert model.decoder_channels == default_decoder_channels(model.encoder_channels)


class TestResNet18(BaseUNetTester):
    encoder = "resnet18"


class TestResNet34(BaseUNetTester):
    encoder = "resnet34"
    sizes = [(64, 64), (31, 17)]


class TestResNet50(BaseUNetTester):
    encoder = "resnet50"
    sizes = [(64, 64), (70, 45)]


@pytest.mark.parametrize(
    "encoder",
    ["resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d", "wide_resnet50_2"],
)
def test_deep_encoders_forward(encoder):
    model = UNetWithResnet50Encoder(2, encoder=encoder, encoder_weights=None).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 45, 64)).shape == (1, 2, 45, 64)
    assert model.encoder_channels[-1] == 2048
    assert model.bridge.bridge[0].conv.in_channels == 2048


def test_resnet18_decoder_is_sized_from_encoder():
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None)
    assert model.encoder_channels == (3, 64, 64, 128, 256, 512)
    assert model.bridge.bridge[0].conv.in_channels == 512
    assert model.up_blocks[0].upsample.in_channels == 512
    assert model.decoder_channels == (256, 128, 64, 32, 16)


def test_guide_size_500x375():
    model = UNetWithResnet50Encoder(2, encoder_weights=None).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 500, 375)).shape == (1, 2, 500, 375)


@pytest.mark.parametrize("in_channels", [1, 4, 13])
def test_in_channels(in_channels):
    model = UNetWithResnet50Encoder(
        2, in_channels=in_channels, encoder="resnet18", encoder_weights=None
    )
    assert model.input_block[0].in_channels == in_channels
    assert model.up_blocks[-1].conv_block_1.conv.in_channels == 16 + in_channels
    out = model(torch.randn(2, in_channels, 40, 40))
    assert out.shape == (2, 2, 40, 40)


@pytest.mark.parametrize("encoder", ["resnet18", "resnet50"])
def test_bilinear_upsampling(encoder):
    model = UNetWithResnet50Encoder(
        4, encoder=encoder, encoder_weights=None, upsampling_method="bilinear"
    )
    out = model(torch.randn(2, 3, 48, 80))
    assert out.shape == (2, 4, 48, 80)
    out.sum().backward()
    assert model.up_blocks[0].upsample[1].weight.grad is not None


def test_unknown_upsampling_method_lists_choices():
    with pytest.raises(ValueError, match="conv_transpose, bilinear"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None, upsampling_method="x")


def test_unknown_encoder_lists_choices():
    with pytest.raises(ValueError, match="resnet18.*wide_resnet50_2"):
        UNetWithResnet50Encoder(2, encoder="vgg16", encoder_weights=None)


def test_num_classes_alias():
    model = UNetWithResnet50Encoder(num_classes=5, encoder="resnet18", encoder_weights=None)
    assert model.n_classes == model.num_classes == 5
    assert model.out.out_channels == 5
    with pytest.raises(TypeError, match="disagree"):
        UNetWithResnet50Encoder(3, num_classes=5, encoder="resnet18", encoder_weights=None)


def test_lighter_decoder_channels():
    light = UNetWithResnet50Encoder(
        2, encoder_weights=None, decoder_channels=(256, 128, 64, 32, 16)
    )
    full = UNetWithResnet50Encoder(2, encoder_weights=None)
    n_params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # The encoder and the 2048-wide bridge stay; the up blocks shrink.
    assert n_params(light) < n_params(full) - 35e6
    assert light(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)
    with pytest.raises(ValueError, match="5 widths"):
        UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None, decoder_channels=(8,))


def test_wrong_input_channels_error_says_fix():
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None)
    with pytest.raises(InputShapeError, match=r"in_channels=4"):
        model(torch.randn(1, 4, 32, 32))
    with pytest.raises(InputShapeError, match=r"unsqueeze\(0\)"):
        model(torch.randn(3, 32, 32))


def test_padding_does_not_change_multiples_of_32():
    """Inputs already a multiple of 32 go through unpadded; others are cropped back."""
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        full = model(x)
        # The top-left 63x63 crop sees the same content, padded by one reflected row/column:
        # far from the border the logits agree with the unpadded run.
        cropped = model(x[..., :63, :63])
    assert cropped.shape == (1, 2, 63, 63)
    assert torch.allclose(full[..., :16, :16], cropped[..., :16, :16], atol=1e-4)


def test_freeze_encoder_keeps_weights_and_bn_statistics():
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None)
    model.freeze_encoder().train()
    encoder_before = {k: v.clone() for k, v in model.down_blocks.state_dict().items()}
    stem_bn_before = model.input_block[1].running_mean.clone()
    decoder_before = model.out.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            model(torch.randn(2, 3, 32, 32)), torch.randint(0, 2, (2, 32, 32))
        )
        loss.backward()
        optimizer.step()
    for key, value in model.down_blocks.state_dict().items():
        assert torch.equal(value, encoder_before[key]), key
    assert torch.equal(model.input_block[1].running_mean, stem_bn_before)
    assert not torch.equal(model.out.weight, decoder_before)
    assert not any(p.requires_grad for p in model.down_blocks.parameters())

    model.unfreeze_encoder().train()
    assert all(p.requires_grad for p in model.down_blocks.parameters())
    assert model.input_block[1].training


def test_registry():
    assert "unet_resnet50" in list_models() and "unet_resnet18" in list_models()
    model = create_model("unet_resnet18", num_classes=4, in_channels=1, encoder_weights=None)
    assert model.encoder_name == "resnet18" and model.n_classes == 4 and model.in_channels == 1
    with pytest.raises(ValueError, match="unet_resnet50"):
        create_model("unet_vgg", encoder_weights=None)


def test_config_rebuilds_architecture():
    from unet_resnet.models import model_from_config

    model = UNetWithResnet50Encoder(
        3, encoder="resnet18", in_channels=2, encoder_weights=None, upsampling_method="bilinear"
    )
    clone = model_from_config(model.config)
    clone.load_state_dict(model.state_dict(), strict=True)
    assert clone.config == model.config
