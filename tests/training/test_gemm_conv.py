"""Training convolutions as GEMMs: same values and gradients as PyTorch's, same parameters."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from unet_resnet.accel import gemm_conv
from unet_resnet.accel.gemm_conv import (
    GemmConv2d,
    GemmConvTranspose2d,
    gemm_rule,
    use_gemm_convolutions,
)


def _both(module: nn.Module) -> tuple[nn.Module, nn.Module]:
    reference = module.double()
    converted = copy.deepcopy(reference)
    assert use_gemm_convolutions(converted) == 1
    return reference, converted


def _compare(reference, converted, x, atol=1e-10):
    xa = x.double().detach().requires_grad_()
    xb = x.double().detach().clone().requires_grad_()
    ya, yb = reference(xa), converted(xb)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    torch.testing.assert_close(yb, ya, atol=atol, rtol=0)
    torch.testing.assert_close(xb.grad, xa.grad, atol=atol, rtol=0)
    for (name, pa), pb in zip(reference.named_parameters(), converted.parameters(), strict=True):
        torch.testing.assert_close(pb.grad, pa.grad, atol=atol, rtol=0, msg=name)
        assert pb.grad.shape == pa.shape


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize(
    ("kernel", "padding", "bias", "size"),
    [
        (3, 1, True, (5, 7)),
        (3, 0, False, (6, 6)),
        (5, 2, True, (4, 3)),
        ((3, 1), (1, 0), True, (5, 4)),
    ],
)
def test_gemm_convolution_equals_pytorchs(kernel, padding, bias, size, channels_last):
    torch.manual_seed(0)
    conv = nn.Conv2d(64, 6, kernel, padding=padding, bias=bias)
    reference, converted = _both(conv)
    x = torch.randn(2, 64, *size)
    assert gemm_rule(converted, x)  # few pixels for 64 x k x k: the GEMM path is taken
    if channels_last:
        reference = reference.to(memory_format=torch.channels_last)
        converted = converted.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    _compare(reference, converted, x)


@pytest.mark.parametrize("kernel", [2, 3])
@pytest.mark.parametrize("channels_last", [True, False])
def test_gemm_transposed_convolution_equals_pytorchs(kernel, channels_last):
    torch.manual_seed(0)
    reference, converted = _both(nn.ConvTranspose2d(8, 5, kernel, stride=kernel))
    x = torch.randn(3, 8, 4, 6)
    if channels_last:
        reference = reference.to(memory_format=torch.channels_last)
        converted = converted.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    _compare(reference, converted, x)


@pytest.mark.parametrize("weights_channels_last", [True, False])
def test_gradcheck_of_both_functions(weights_channels_last):
    """Both weight layouts (the GEMMs read the weight in its own memory order)."""
    torch.manual_seed(0)
    layout = torch.channels_last if weights_channels_last else torch.contiguous_format

    def weight(*shape):
        w = torch.randn(*shape, dtype=torch.double).contiguous(memory_format=layout)
        assert gemm_conv._kernel_last(w) == weights_channels_last
        return w.requires_grad_()

    x = torch.randn(2, 3, 4, 3, dtype=torch.double, requires_grad=True)
    w = weight(4, 3, 3, 3)
    b = torch.randn(4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda x, w, b: gemm_conv._ConvGemm.apply(x, w, b, 1, 1), (x, w, b)
    )
    wt = weight(3, 2, 2, 2)
    bt = torch.randn(2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(gemm_conv._ConvTranspose2x2Gemm.apply, (x, wt, bt))


def test_rule_takes_few_pixels_with_many_channels_only():
    bridge = GemmConv2d(2048, 2048, 3, padding=1)
    assert gemm_rule(bridge, torch.empty(8, 2048, 8, 8))  # 512 pixels, 18432 per output
    assert not gemm_rule(GemmConv2d(64, 64, 3, padding=1), torch.empty(8, 64, 256, 256))
    assert not gemm_rule(GemmConv2d(2048, 2048, 3, padding=1, stride=2), torch.empty(8, 2048, 8, 8))
    assert not gemm_rule(GemmConv2d(2048, 2048, 1), torch.empty(8, 2048, 8, 8))  # 1x1: no im2col
    assert not gemm_rule(GemmConv2d(2048, 2048, 3, padding=1, groups=2), torch.empty(1, 2048, 2, 2))


def test_only_plain_layers_that_fit_are_converted_and_parameters_stay():
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ConvTranspose2d(8, 8, 2, stride=2),
        nn.ConvTranspose2d(8, 8, 3, stride=2),  # overlapping patches: left as it is
        nn.Conv1d(8, 8, 3),
    )
    keys = list(model.state_dict())
    params = [id(p) for p in model.parameters()]
    assert use_gemm_convolutions(model) == 2
    assert [type(m) for m in model] == [
        GemmConv2d,
        GemmConvTranspose2d,
        nn.ConvTranspose2d,
        nn.Conv1d,
    ]
    assert list(model.state_dict()) == keys and [id(p) for p in model.parameters()] == params


def test_inference_takes_pytorchs_path(monkeypatch):
    def fail(*args):
        raise AssertionError("the GEMM path ran without gradients")

    monkeypatch.setattr(gemm_conv._ConvGemm, "apply", fail)
    monkeypatch.setattr(gemm_conv._ConvTranspose2x2Gemm, "apply", fail)
    model = nn.Sequential(nn.Conv2d(32, 4, 3, padding=1), nn.ConvTranspose2d(4, 4, 2, stride=2))
    use_gemm_convolutions(model)
    with torch.no_grad():
        model(torch.randn(1, 32, 2, 2))
    with pytest.raises(AssertionError, match="without gradients"):  # training does take it
        model(torch.randn(1, 32, 2, 2))


def test_autocast_bf16_runs_in_bf16_and_gives_fp32_gradients():
    torch.manual_seed(0)
    reference = nn.Conv2d(64, 16, 3, padding=1).to(memory_format=torch.channels_last)
    converted = copy.deepcopy(reference)
    use_gemm_convolutions(converted)
    x = torch.randn(2, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    outputs = []
    for conv in (reference, converted):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        assert conv.weight.grad.dtype == torch.float32
        outputs.append((y.float(), conv.weight.grad))
    torch.testing.assert_close(outputs[1][0], outputs[0][0], atol=0.05, rtol=0.02)
    torch.testing.assert_close(outputs[1][1], outputs[0][1], atol=0.5, rtol=0.03)


def _train(model, x, y, *, steps: int, bf16: bool) -> list[float]:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def test_training_steps_track_fp32_training_on_a_fixed_batch():
    """The default training path (GEMM layers, bf16 autocast) follows plain fp32 training of
    the same model from the same weights, and GEMM layers in fp32 follow it exactly."""
    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    base = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).train()
    base = base.to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    fp32 = _train(copy.deepcopy(base), x, y, steps=6, bf16=False)
    gemm = copy.deepcopy(base)
    assert use_gemm_convolutions(gemm) > 0
    gemm_fp32 = _train(copy.deepcopy(gemm), x, y, steps=6, bf16=False)
    gemm_bf16 = _train(gemm, x, y, steps=6, bf16=True)
    assert gemm_fp32 == pytest.approx(fp32, rel=1e-4)
    assert gemm_bf16 == pytest.approx(fp32, rel=0.05)
    assert gemm_bf16[-1] < 0.8 * gemm_bf16[0]  # and it learns


def test_the_training_module_uses_them_unless_told_not_to():
    from unet_resnet.checkpoint import CheckpointMeta
    from unet_resnet.data import ClassInfo
    from unet_resnet.models import UNetWithResnet50Encoder
    from unet_resnet.training import SegmentationModule

    config = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None).config
    meta = CheckpointMeta(config, ClassInfo.generic(2)).to_dict()
    on = SegmentationModule(meta, encoder_weights=None)
    off = SegmentationModule(meta, encoder_weights=None, gemm_convolutions=False)
    kinds = {type(m) for m in on.model.modules()}
    assert {GemmConv2d, GemmConvTranspose2d} <= kinds
    assert not {GemmConv2d, GemmConvTranspose2d} & {type(m) for m in off.model.modules()}
    assert list(on.model.state_dict()) == list(off.model.state_dict())


def test_under_autocast_the_model_sees_the_autocast_dtype_throughout():
    """The full-resolution skip (the input) would otherwise promote the decoder's widest
    concatenation to fp32."""
    from unet_resnet.checkpoint import CheckpointMeta
    from unet_resnet.data import ClassInfo
    from unet_resnet.models import UNetWithResnet50Encoder
    from unet_resnet.training import SegmentationModule

    config = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None).config
    meta = CheckpointMeta(config, ClassInfo.generic(2)).to_dict()
    module = SegmentationModule(meta, encoder_weights=None)
    seen = []
    last = module.model.up_blocks[-1]
    last.register_forward_pre_hook(lambda m, args: seen.append([a.dtype for a in args]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module(torch.randn(2, 3, 32, 32))
    assert seen == [[torch.bfloat16, torch.bfloat16]]
    module(torch.randn(2, 3, 32, 32))  # without autocast nothing is cast
    assert seen[-1] == [torch.float32, torch.float32]


def test_a_trained_module_model_gets_the_full_inference_fast_path():
    from unet_resnet.accel.fastpath import prepare_model
    from unet_resnet.checkpoint import CheckpointMeta
    from unet_resnet.data import ClassInfo
    from unet_resnet.models import UNetWithResnet50Encoder
    from unet_resnet.training import SegmentationModule

    config = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None).config
    meta = CheckpointMeta(config, ClassInfo.generic(2)).to_dict()
    module = SegmentationModule(meta, encoder_weights=None)
    built, _ = prepare_model(
        module.model,
        device=torch.device("cpu"),
        precision="fp32",
        in_channels=3,
        pack_weights=False,
    )
    kinds = {type(m) for m in built.modules()}
    assert not {GemmConv2d, GemmConvTranspose2d} & kinds
    assert nn.BatchNorm2d not in kinds  # every BatchNorm folded, as for a plain model
    assert GemmConv2d in {type(m) for m in module.model.modules()}  # the module's own is kept


@pytest.mark.parametrize("layer", ["conv", "transposed"])
@pytest.mark.parametrize("weights_channels_last", [True, False])
def test_gradients_come_back_in_the_weights_dtype_and_layout(layer, weights_channels_last):
    """Under autocast the GEMM layers cast the fp32 master weight themselves and hand back an
    fp32 gradient laid out as the weight is: autograd then keeps it as it is (no cast, no
    re-layout copy), and the fused optimiser needs no contiguous copy."""
    torch.manual_seed(0)
    if layer == "conv":
        module, x = nn.Conv2d(64, 16, 3, padding=1), torch.randn(2, 64, 3, 3)
    else:
        module, x = nn.ConvTranspose2d(16, 8, 2, stride=2), torch.randn(2, 16, 3, 3)
    if weights_channels_last:
        module = module.to(memory_format=torch.channels_last)
    reference = copy.deepcopy(module)
    use_gemm_convolutions(module)
    x = x.contiguous(memory_format=torch.channels_last)
    grads = []
    for m in (reference, module):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(x)
        assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
        # autograd.grad hands back what the layer produced (.grad would be re-laid out)
        grads.append(torch.autograd.grad(y.float().square().sum(), (m.weight, m.bias)))
    for grad, param in zip(grads[1], (module.weight, module.bias), strict=True):
        assert grad.dtype == torch.float32 and grad.stride() == param.stride()
    for ours, theirs in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(ours, theirs, atol=0.5, rtol=0.03)
