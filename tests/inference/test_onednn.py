"""The CPU fast paths: packed convolutions with fused ReLU/residual add equal plain ones;
compiled equals packed."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from unet_resnet import Segmenter
from unet_resnet.accel import onednn
from unet_resnet.accel.fastpath import fold_batchnorm
from unet_resnet.models import UNetWithResnet50Encoder

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="no oneDNN in this build")


def _folded(encoder: str, upsampling: str, dtype: torch.dtype, in_channels: int = 3):
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(
        3,
        in_channels=in_channels,
        encoder=encoder,
        encoder_weights=None,
        upsampling_method=upsampling,
        decoder_channels=(64, 48, 32, 24, 16),
    )
    with torch.no_grad():  # non-trivial BatchNorm statistics to fold
        model.train()(torch.randn(2, in_channels, 64, 64))
    model = fold_batchnorm(model.eval())
    return model.to(dtype).to(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize(
    ("encoder", "upsampling", "dtype", "atol"),
    [
        ("resnet18", "conv_transpose", torch.float32, 1e-4),
        ("resnet50", "conv_transpose", torch.float32, 1e-4),
        ("resnet18", "bilinear", torch.float32, 1e-4),
        ("resnet50", "conv_transpose", torch.bfloat16, 3e-2),
    ],
)
def test_packed_model_equals_plain(encoder, upsampling, dtype, atol):
    model = _folded(encoder, upsampling, dtype, in_channels=4)
    packed = onednn.pack_for_cpu(copy.deepcopy(model))
    plain_types = (nn.Conv2d, nn.ConvTranspose2d, nn.ReLU, nn.BatchNorm2d)
    assert not any(isinstance(m, plain_types) for m in packed.modules())
    # An odd size: the model pads to 32 and crops a strided view for its last convolution.
    x = torch.randn(2, 4, 70, 90, dtype=dtype).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        expected = model(x).float().softmax(1)
        got = packed(x).float().softmax(1)
    assert got.shape == (2, 3, 70, 90)
    torch.testing.assert_close(got, expected, atol=atol, rtol=0)


def _model_and_image(h: int, w: int):
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).eval()
    return model, np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


@needs_onednn
def test_segmenter_packs_on_cpu_and_agrees_with_unpacked():
    model, image = _model_and_image(80, 100)
    fast = Segmenter(model, device="cpu", precision="fp32", pack_weights=True)
    plain = Segmenter(model, device="cpu", precision="fp32", pack_weights=False)
    assert fast.packed and not plain.packed
    np.testing.assert_allclose(fast.predict_proba(image), plain.predict_proba(image), atol=1e-4)
    # The user's model is left as it was.
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_packing_that_disagrees_is_refused_with_a_warning(monkeypatch):
    """The operators are PyTorch internals: if a build computes something else, the plain
    model is kept and the user is told, instead of wrong masks."""

    class Wrong(nn.Module):
        def __init__(self, inner, example=None):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return -self.inner(x)

    monkeypatch.setattr(onednn, "available", lambda: True)
    monkeypatch.setattr(onednn, "pack_for_cpu", Wrong)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).eval()
    with pytest.warns(UserWarning, match="differs from plain convolutions"):
        seg = Segmenter(model, device="cpu", precision="fp32", pack_weights=True)
    assert not seg.packed and not isinstance(seg.model, Wrong)

    def broken(_, example=None):
        raise RuntimeError("no such kernel")

    monkeypatch.setattr(onednn, "pack_for_cpu", broken)
    with pytest.warns(UserWarning, match="not available with this PyTorch"):
        seg = Segmenter(model, device="cpu", precision="fp32", pack_weights=True)
    assert not seg.packed
    assert seg.predict(np.zeros((40, 40, 3), np.uint8)).shape == (40, 40)


@pytest.mark.slow
def test_compiled_segmenter_agrees_with_the_packed_one():
    """``--compile`` (Inductor with freezing) is the other fast path; same predictions."""
    model, image = _model_and_image(64, 64)
    packed = Segmenter(model, device="cpu", precision="fp32", pack_weights=True)
    compiled = Segmenter(model, device="cpu", precision="fp32", compile=True)
    assert not compiled.packed
    np.testing.assert_allclose(
        compiled.predict_proba(image), packed.predict_proba(image), atol=1e-4
    )


@needs_onednn
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("shape", [(5, 24), (2, 7, 9, 24)])  # rows, or NHWC as in ConvNeXt
def test_packed_linear_equals_linear(dtype, atol, shape):
    torch.manual_seed(0)
    linear = nn.Linear(24, 40).to(dtype)
    packed = onednn.pack_for_cpu(copy.deepcopy(linear))
    assert isinstance(packed, onednn.PackedLinear)
    x = torch.randn(*shape, dtype=dtype)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).float(), linear(x).float(), atol=atol, rtol=0)


def _timm_activations():
    activations = pytest.importorskip("timm.layers.activations")
    return [
        nn.GELU,
        lambda: nn.GELU(approximate="tanh"),
        activations.GELU,
        activations.GELUTanh,
    ]


@needs_onednn
@pytest.mark.parametrize("which", range(4))
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float32, 1e-5), (torch.bfloat16, 5e-2)])
@pytest.mark.parametrize("use_conv", [False, True])  # ConvNeXt's two MLP forms
def test_timm_mlp_gets_its_gelu_fused(which, dtype, atol, use_conv):
    from timm.layers import Mlp

    act = _timm_activations()[which]
    torch.manual_seed(0)
    mlp = Mlp(24, 96, act_layer=act, use_conv=use_conv).eval().to(dtype)
    packed = onednn.pack_for_cpu(copy.deepcopy(mlp))
    kind = onednn.PackedConv2d if use_conv else onednn.PackedLinear
    assert isinstance(packed.fc1, kind) and packed.fc1.activation == "gelu"
    assert isinstance(packed.act, nn.Identity) and isinstance(packed.fc2, kind)
    x = torch.randn(2, 6, 6, 24, dtype=dtype)
    if use_conv:
        x = x.permute(0, 3, 1, 2)  # NCHW shape, channels_last layout
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).float(), mlp(x).float(), atol=atol, rtol=0)


@needs_onednn
def test_mlp_with_another_activation_is_left_unfused():
    from timm.layers import Mlp

    mlp = Mlp(8, 16, act_layer=nn.ReLU).eval()
    packed = onednn.pack_for_cpu(copy.deepcopy(mlp))
    assert isinstance(packed.act, nn.ReLU) and packed.fc1.activation == "none"


@needs_onednn
def test_convnext_unet_packs_its_mlps_and_agrees():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="tu-convnext_atto", encoder_weights=None).eval()
    segmenter = Segmenter(model, device="cpu", precision="bf16", pack_weights=True)
    modules = list(segmenter.model.modules())
    assert any(getattr(m, "activation", None) == "gelu" for m in modules)
    assert not any("GELU" in type(m).__name__ for m in modules)  # every GELU fused
    image = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    plain = Segmenter(model, device="cpu", precision="bf16", pack_weights=False)
    agree = (segmenter.predict(image) == plain.predict(image)).mean()
    assert agree > 0.99


def _timm_unet(encoder: str, dtype: torch.dtype = torch.float32):
    """A timm U-Net with non-trivial BatchNorm statistics, folded along a forward pass."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder=encoder, encoder_weights=None)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 64, 64))
    model = fold_batchnorm(model.eval(), torch.randn(1, 3, 64, 64))
    return model.to(dtype).to(memory_format=torch.channels_last)


@needs_onednn
@pytest.mark.parametrize(
    ("encoder", "activations"),
    [("tu-efficientnet_b0", {"swish"}), ("tu-mobilenetv3_small_050", {"hardswish", "relu"})],
)
def test_activations_after_timm_convolutions_are_fused(encoder, activations):
    """timm's blocks call their convolutions conv_pw/conv_dw and their activations bn1.act;
    the forward pass finds the pairs and each activation runs inside its convolution."""
    model = _timm_unet(encoder)
    x = torch.randn(1, 3, 64, 96).contiguous(memory_format=torch.channels_last)
    packed = onednn.pack_for_cpu(copy.deepcopy(model), x)
    onednn.settle(packed)
    fused = {m.activation for m in packed.modules() if isinstance(m, onednn.PackedConv2d)}
    assert activations <= fused
    left = [m for m in packed.modules() if type(m) in (nn.SiLU, nn.Hardswish)]
    # what is left is a squeeze-excite gate's activation or one fed by more than a conv
    assert len(left) < len([m for m in model.modules() if type(m) in (nn.SiLU, nn.Hardswish)]) / 2
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).softmax(1), model(x).softmax(1), atol=1e-4, rtol=0)


def _fake_layer_timer(monkeypatch, plain_wins):
    """Layers for which ``plain_wins(layer)`` measure twice as fast plain, the others twice as
    fast packed; returns the layers timed."""
    timed = []

    def fake(layer, args, kwargs):
        layer(*args, **kwargs)  # both modes must run on the real input
        timed.append(layer)
        return 1.0 if layer.packed != plain_wins(layer) else 2.0

    monkeypatch.setattr(onednn, "_layer_seconds", fake)
    return timed


@needs_onednn
def test_each_layer_runs_packed_or_plain_whichever_measured_faster(monkeypatch):
    model = _folded("resnet18", "conv_transpose", torch.float32)

    def narrow(layer):  # layers with at most 32 output channels measure faster plain
        weight = getattr(layer, "plain_weight", None)
        return weight is not None and weight.shape[0] <= 32

    timed = _fake_layer_timer(monkeypatch, narrow)
    x = torch.randn(1, 3, 64, 64).contiguous(memory_format=torch.channels_last)
    packed = onednn.pack_for_cpu(copy.deepcopy(model), x)
    kinds = (onednn.PackedConv2d, onednn.PackedConvTranspose2d)
    layers = {n: m for n, m in packed.named_modules() if isinstance(m, kinds)}
    expect_plain = sorted(n for n, m in layers.items() if narrow(m))
    plain = onednn.choose_per_layer(packed, x)
    assert len(timed) == 2 * len(set(map(id, timed)))  # every layer timed in both modes
    assert sorted(plain) == expect_plain and expect_plain  # and some, not all, run plain
    assert sorted(onednn.plain_layers(packed)) == expect_plain
    assert len(expect_plain) < len(layers)
    for name, layer in layers.items():  # each keeps only the weight it runs with
        assert (layer.weight is None) == (name in plain)
        assert (layer.plain_weight is None) == (name not in plain)
    with torch.inference_mode():
        torch.testing.assert_close(packed(x).softmax(1), model(x).softmax(1), atol=1e-4, rtol=0)
