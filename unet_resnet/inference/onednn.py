"""CPU inference with oneDNN: convolution and linear weights packed once, ReLU, GELU and
residual adds fused.

In eager PyTorch every ``Conv2d`` call hands oneDNN a plain ``OIHW`` weight, which oneDNN
re-lays out into the blocked format its AMX/AVX-512 kernels read, on every call. For the
guide's model that re-layout is a large share of the time at batch 1 (the bridge's two
2048x2048x3x3 convolutions take about 40 ms each eager and 12 ms packed). ``torch.compile``
with freezing packs weights too, but costs a long first call and a C++ compiler; this module
does the same packing in eager mode, through the oneDNN operators PyTorch ships for
Inductor (``torch.ops.mkldnn``), and also fuses each ReLU and residual add into the
convolution before it, which saves a pass over every activation.

Those operators are internal to PyTorch, so :func:`pack_for_cpu` is used only behind
:func:`pack_checked`, which compares the packed model with the unpacked one on a random
input and keeps the unpacked model (with a warning) if they differ or anything fails.
Inputs: any float dtype the operators take (bf16, fp32), best in channels_last.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from unet_resnet.models.unet import ConvBlock

__all__ = [
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedLinear",
    "available",
    "pack_checked",
    "pack_for_cpu",
]


#: What packing covers; part of the fast path's cache key, so a change re-measures cached
#: choices. 2: linear layers, and GELUs fused into timm MLPs.
VERSION = 2


def available() -> bool:
    """Whether this PyTorch build has the oneDNN operators the packed modules call."""
    ops = torch.ops.mkldnn
    return torch.backends.mkldnn.is_available() and all(
        hasattr(ops, name)
        for name in (
            "_reorder_convolution_weight",
            "_convolution_pointwise",
            "_reorder_convolution_transpose_weight",
            "_convolution_transpose_pointwise",
            "_reorder_linear_weight",
            "_linear_pointwise",
        )
    )


def _pair(value) -> list[int]:
    return [int(v) for v in value]


class PackedConv2d(nn.Module):
    """A ``Conv2d`` with its weight pre-packed for oneDNN, optionally followed by a fused ReLU
    and, when ``forward`` gets a ``residual``, a fused ``relu(conv(x) + residual)``."""

    def __init__(self, conv: nn.Conv2d, activation: str = "none", algorithm: str = "") -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("Only zero padding given as numbers can be packed.")
        self.args = (_pair(conv.padding), _pair(conv.stride), _pair(conv.dilation), conv.groups)
        self.weight = torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight.detach(), *self.args, None
        )
        self.bias = None if conv.bias is None else conv.bias.detach()
        # activation: oneDNN's name ("none", "relu", "gelu"); algorithm: for "gelu", "none"
        # (exact erf) or "tanh"
        self.activation, self.algorithm = activation, algorithm
        self.extra = f"{conv.in_channels}, {conv.out_channels}, k={conv.kernel_size}"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, *self.args, self.activation, [], self.algorithm
            )
        unary = None if self.activation == "none" else self.activation
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *self.args, "add", 1.0, unary, [], ""
        )

    def extra_repr(self) -> str:
        return f"{self.extra}, activation={self.activation}"


class PackedConvTranspose2d(nn.Module):
    """A ``ConvTranspose2d`` with its weight pre-packed for oneDNN."""

    def __init__(self, conv: nn.ConvTranspose2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros":
            raise ValueError("Only zero padding can be packed.")
        self.args = (
            _pair(conv.padding),
            _pair(conv.output_padding),
            _pair(conv.stride),
            _pair(conv.dilation),
            conv.groups,
        )
        self.weight = torch.ops.mkldnn._reorder_convolution_transpose_weight(
            conv.weight.detach(), *self.args, None
        )
        self.bias = None if conv.bias is None else conv.bias.detach()
        self.extra = f"{conv.in_channels}, {conv.out_channels}, k={conv.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, self.weight, self.bias, *self.args, "none", [], ""
        )

    def extra_repr(self) -> str:
        return self.extra


class PackedLinear(nn.Module):
    """A ``Linear`` with its weight pre-packed for oneDNN, optionally followed by a fused
    GELU (the MLPs of ConvNeXt-style encoders: in bf16, a separate GELU over their widest
    activations costs more than the matrix product before it)."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None) -> None:
        super().__init__()
        self.weight = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self.bias = None if linear.bias is None else linear.bias.detach()
        # oneDNN's names: GELU with the exact erf ("none") or the tanh approximation
        self.activation, self.algorithm = ("none", "") if gelu is None else ("gelu", gelu)
        self.extra = f"{linear.in_features}, {linear.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, self.activation, [], self.algorithm
        )

    def extra_repr(self) -> str:
        gelu = "" if self.activation == "none" else f", gelu={self.algorithm}"
        return f"{self.extra}{gelu}"


def _gelu_algorithm(act: nn.Module) -> str | None:
    """oneDNN's GELU algorithm for a GELU module (PyTorch's or timm's), else None."""
    if type(act) is nn.GELU:
        return act.approximate
    timm_activations = sys.modules.get("timm.layers.activations")
    if timm_activations is not None:
        if type(act) is timm_activations.GELU:
            return "none"
        if type(act) is timm_activations.GELUTanh:
            return "tanh"
    return None


def _fuse_mlp(mlp: nn.Module) -> nn.Module | None:
    """timm's ``Mlp`` (fc1, act, drop1, norm, fc2, drop2; fc1 and fc2 are linear layers, or
    1x1 convolutions with ``use_conv``): the GELU fused into fc1."""
    gelu = _gelu_algorithm(mlp.act)
    if gelu is None:
        return None
    if type(mlp.fc1) is nn.Linear:
        mlp.fc1 = PackedLinear(mlp.fc1, gelu)
    elif type(mlp.fc1) is nn.Conv2d:
        mlp.fc1 = PackedConv2d(mlp.fc1, "gelu", gelu)
    else:
        return None
    mlp.act = nn.Identity()
    mlp.fc2 = _convert(mlp.fc2)
    for name in ("drop1", "norm", "drop2"):
        setattr(mlp, name, _convert(getattr(mlp, name)))
    return mlp


def _folded(*modules: nn.Module) -> bool:
    return all(isinstance(m, nn.Identity) for m in modules)


class _PackedBottleneck(nn.Module):
    """torchvision's Bottleneck with folded BatchNorms: three packed convs, the last one
    fused with the residual add and the ReLU."""

    def __init__(self, block: Bottleneck) -> None:
        super().__init__()
        self.conv1 = PackedConv2d(block.conv1, "relu")
        self.conv2 = PackedConv2d(block.conv2, "relu")
        self.conv3 = PackedConv2d(block.conv3, "relu")
        self.downsample = None if block.downsample is None else _convert(block.downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), residual=identity)


class _PackedBasicBlock(nn.Module):
    """torchvision's BasicBlock with folded BatchNorms: two packed convs, the second fused
    with the residual add and the ReLU."""

    def __init__(self, block: BasicBlock) -> None:
        super().__init__()
        self.conv1 = PackedConv2d(block.conv1, "relu")
        self.conv2 = PackedConv2d(block.conv2, "relu")
        self.downsample = None if block.downsample is None else _convert(block.downsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv2(self.conv1(x), residual=identity)


def _fuse_sequential(seq: nn.Sequential) -> nn.Sequential:
    """Convert the children; a convolution followed (past folded BatchNorms) by a ReLU gets the
    ReLU fused in and the ReLU becomes an Identity (names and positions are kept)."""
    names = list(seq._modules)
    for i, name in enumerate(names):
        child = seq._modules[name]
        if type(child) is nn.Conv2d:
            j = i + 1
            while j < len(names) and isinstance(seq._modules[names[j]], nn.Identity):
                j += 1
            relu = j < len(names) and type(seq._modules[names[j]]) is nn.ReLU
            seq._modules[name] = PackedConv2d(child, "relu" if relu else "none")
            if relu:
                seq._modules[names[j]] = nn.Identity()
        elif not isinstance(child, PackedConv2d | nn.Identity):
            seq._modules[name] = _convert(child)
    return seq


_RULES: dict[type, Callable[[nn.Module], nn.Module | None]] = {
    Bottleneck: lambda b: (
        _PackedBottleneck(b) if _folded(b.bn1, b.bn2, b.bn3) and type(b.relu) is nn.ReLU else None
    ),
    BasicBlock: lambda b: (
        _PackedBasicBlock(b) if _folded(b.bn1, b.bn2) and type(b.relu) is nn.ReLU else None
    ),
    ConvBlock: lambda b: (
        PackedConv2d(b.conv, "relu" if b.with_nonlinearity else "none")
        if _folded(b.bn) and type(b.relu) is nn.ReLU and type(b.conv) is nn.Conv2d
        else None
    ),
    nn.Conv2d: PackedConv2d,
    nn.ConvTranspose2d: PackedConvTranspose2d,
    nn.Linear: PackedLinear,
    nn.Sequential: _fuse_sequential,
}


def _rule(module: nn.Module) -> Callable[[nn.Module], nn.Module | None] | None:
    rule = _RULES.get(type(module))
    timm_layers = sys.modules.get("timm.layers")  # loaded when a timm encoder was built
    if rule is None and timm_layers is not None and type(module) is timm_layers.Mlp:
        return _fuse_mlp
    return rule


def _convert(module: nn.Module) -> nn.Module:
    rule = _rule(module)
    replaced = rule(module) if rule is not None else None
    if replaced is not None:
        return replaced
    for name, child in list(module.named_children()):
        setattr(module, name, _convert(child))
    return module


def pack_for_cpu(model: nn.Module) -> nn.Module:
    """Replace, in place, every convolution of an eval-mode model whose BatchNorms are folded
    (see :func:`~unet_resnet.inference.segmenter.fold_batchnorm`) by its packed version, with
    ReLUs and residual adds fused. Weights must already have their final dtype and device."""
    return _convert(model)


def pack_checked(
    model: nn.Module, example: torch.Tensor, *, atol: float = 1e-2
) -> tuple[nn.Module, bool]:
    """Pack ``model`` if this PyTorch build allows and the packed model's softmax outputs on
    ``example`` match the unpacked model's within ``atol``; otherwise keep it as it is.

    Returns ``(model, packed)``. ``model`` is modified in place only when packing succeeds.
    """
    if not available() or example.device.type != "cpu":
        return model, False
    import copy

    with torch.inference_mode():
        expected = model(example).float().softmax(1)
    try:
        packed = pack_for_cpu(copy.deepcopy(model))
        with torch.inference_mode():
            got = packed(example).float().softmax(1)
        error = (got - expected).abs().max().item()
    except (RuntimeError, ValueError, TypeError, NotImplementedError) as exc:
        warnings.warn(
            f"The oneDNN fast path is not available with this PyTorch ({exc}); using plain "
            "convolutions, which is correct but slower.",
            stacklevel=3,
        )
        return model, False
    if not error <= atol:
        warnings.warn(
            f"The oneDNN fast path differs from plain convolutions by {error:.3g} on a test "
            "input; using plain convolutions, which is correct but slower.",
            stacklevel=3,
        )
        return model, False
    return packed, True
