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
import time
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.resnet import BasicBlock, Bottleneck

from unet_resnet.models.unet import ConvBlock

__all__ = [
    "PackedConv2d",
    "PackedConvTranspose2d",
    "PackedLinear",
    "available",
    "choose_per_layer",
    "pack_checked",
    "pack_for_cpu",
    "plain_layers",
    "settle",
]


#: What packing covers; part of the fast path's cache key, so a change re-measures cached
#: choices. 2: linear layers, and GELUs fused into timm MLPs. 3: activations fused wherever a
#: forward pass shows a convolution feeding one (SiLU, Hardswish too); each layer packed or
#: plain, whichever it measured faster.
VERSION = 3


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


def _activate(y: torch.Tensor, activation: str, algorithm: str) -> torch.Tensor:
    """The activation oneDNN would have fused, on its own (a layer measured faster plain)."""
    if activation == "none":
        return y
    if activation == "relu":
        return F.relu_(y)
    if activation == "swish":
        return F.silu(y, inplace=True)
    if activation == "hardswish":
        return F.hardswish(y, inplace=True)
    if activation == "gelu":
        return F.gelu(y, approximate="tanh" if algorithm == "tanh" else "none")
    raise ValueError(f"unknown fused activation {activation!r}")


class _Packed(nn.Module):
    """A layer holding both its oneDNN-packed weight and the plain one until :meth:`keep`
    settles which it runs (:func:`choose_per_layer` times both)."""

    packed: bool

    def _setup(self, weight: torch.Tensor, packed_weight: torch.Tensor, bias) -> None:
        self.plain_weight: torch.Tensor | None = weight.detach()
        self.weight: torch.Tensor | None = packed_weight
        self.bias = None if bias is None else bias.detach()
        self.packed = True

    def keep(self, packed: bool) -> None:
        """Run the packed (or plain) kernel from now on and drop the other weight."""
        self.packed = packed
        if packed:
            self.plain_weight = None
        else:
            self.weight = None


class PackedConv2d(_Packed):
    """A ``Conv2d`` with its weight pre-packed for oneDNN, optionally followed by a fused
    activation and, when ``forward`` gets a ``residual``, a fused ``act(conv(x) + residual)``."""

    def __init__(self, conv: nn.Conv2d, activation: str = "none", algorithm: str = "") -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("Only zero padding given as numbers can be packed.")
        self.args = (_pair(conv.padding), _pair(conv.stride), _pair(conv.dilation), conv.groups)
        packed = torch.ops.mkldnn._reorder_convolution_weight(
            conv.weight.detach(), *self.args, None
        )
        self._setup(conv.weight, packed, conv.bias)
        # activation: oneDNN's name ("none", "relu", "swish", "hardswish", "gelu");
        # algorithm: for "gelu", "none" (exact erf) or "tanh"
        self.activation, self.algorithm = activation, algorithm
        self.extra = f"{conv.in_channels}, {conv.out_channels}, k={conv.kernel_size}"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        if not self.packed:
            padding, stride, dilation, groups = self.args
            y = F.conv2d(x, self.plain_weight, self.bias, stride, padding, dilation, groups)
            if residual is not None:
                y = y.add_(residual)
            return _activate(y, self.activation, self.algorithm)
        if residual is None:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, *self.args, self.activation, [], self.algorithm
            )
        unary = None if self.activation == "none" else self.activation
        return torch.ops.mkldnn._convolution_pointwise.binary(
            x, residual, self.weight, self.bias, *self.args, "add", 1.0, unary, [], ""
        )

    def extra_repr(self) -> str:
        return f"{self.extra}, activation={self.activation}, packed={self.packed}"


class PackedConvTranspose2d(_Packed):
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
        packed = torch.ops.mkldnn._reorder_convolution_transpose_weight(
            conv.weight.detach(), *self.args, None
        )
        self._setup(conv.weight, packed, conv.bias)
        self.extra = f"{conv.in_channels}, {conv.out_channels}, k={conv.kernel_size}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            padding, output_padding, stride, dilation, groups = self.args
            return F.conv_transpose2d(
                x, self.plain_weight, self.bias, stride, padding, output_padding, groups, dilation
            )
        return torch.ops.mkldnn._convolution_transpose_pointwise(
            x, self.weight, self.bias, *self.args, "none", [], ""
        )

    def extra_repr(self) -> str:
        return f"{self.extra}, packed={self.packed}"


class PackedLinear(_Packed):
    """A ``Linear`` with its weight pre-packed for oneDNN, optionally followed by a fused
    GELU (the MLPs of ConvNeXt-style encoders: in bf16, a separate GELU over their widest
    activations costs more than the matrix product before it)."""

    def __init__(self, linear: nn.Linear, gelu: str | None = None) -> None:
        super().__init__()
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), None)
        self._setup(linear.weight, packed, linear.bias)
        # oneDNN's names: GELU with the exact erf ("none") or the tanh approximation
        self.activation, self.algorithm = ("none", "") if gelu is None else ("gelu", gelu)
        self.extra = f"{linear.in_features}, {linear.out_features}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.packed:
            y = F.linear(x, self.plain_weight, self.bias)
            return _activate(y, self.activation, self.algorithm)
        return torch.ops.mkldnn._linear_pointwise(
            x, self.weight, self.bias, self.activation, [], self.algorithm
        )

    def extra_repr(self) -> str:
        gelu = "" if self.activation == "none" else f", gelu={self.algorithm}"
        return f"{self.extra}{gelu}, packed={self.packed}"


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


def _activation_of(module: nn.Module) -> tuple[str, str] | None:
    """(oneDNN's name, algorithm) of an activation module it can fuse into a convolution."""
    kind = type(module)
    if kind is nn.ReLU:
        return "relu", ""
    if kind is nn.SiLU:
        return "swish", ""
    if kind is nn.Hardswish:
        return "hardswish", ""
    gelu = _gelu_algorithm(module)
    return None if gelu is None else ("gelu", gelu)


def _fuse_traced_activations(model: nn.Module, example: torch.Tensor) -> None:
    """Fuse each activation module that a forward pass shows to be the one reader of a
    convolution's output (timm's blocks: ``conv_pw`` then ``bn1.act`` once BatchNorms are
    folded), whatever the modules are called."""
    from unet_resnet.accel.trace import conv_readers

    for conv_name, reader_name in conv_readers(model, example):
        conv, reader = model.get_submodule(conv_name), model.get_submodule(reader_name)
        spec = _activation_of(reader)
        if spec is None or type(conv) is not nn.Conv2d:
            continue
        packed = PackedConv2d(conv, *spec)
        for name, module in ((conv_name, packed), (reader_name, nn.Identity())):
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module)


def pack_for_cpu(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """Replace, in place, every convolution of an eval-mode model whose BatchNorms are folded
    (see :func:`~unet_resnet.accel.fastpath.fold_batchnorm`) by its packed version, with
    ReLUs and residual adds fused; given an ``example`` input, also every activation that a
    forward pass shows to follow a convolution. Weights must already have their final dtype and
    device. Layers hold both weights until :func:`settle` (or :func:`choose_per_layer`)."""
    if example is not None:
        _fuse_traced_activations(model, example)
    return _convert(model)


def settle(model: nn.Module, plain: Sequence[str] = ()) -> nn.Module:
    """Let the layers named in ``plain`` run unpacked and the others packed; each drops the
    weight it no longer needs."""
    for name, module in model.named_modules():
        if isinstance(module, _Packed):
            module.keep(name not in plain)
    return model


def plain_layers(model: nn.Module) -> list[str]:
    """Names of the layers that run unpacked (measured faster that way on this CPU)."""
    return [n for n, m in model.named_modules() if isinstance(m, _Packed) and not m.packed]


def _layer_seconds(layer: nn.Module, args: tuple, kwargs: dict, reps: int = 3) -> float:
    """Best of ``reps`` calls of ``layer`` in its current mode, after one to warm up (oneDNN
    creates its primitive on the first call)."""
    layer(*args, **kwargs)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        layer(*args, **kwargs)
        best = min(best, time.perf_counter() - start)
    return best


#: A layer runs plain only when that measured at least 10% faster: the choice is made on the
#: calibration input and used at every size, so near-ties stay with the packed kernel (which
#: also fuses the layer's activation).
PLAIN_MARGIN = 0.9


def choose_per_layer(model: nn.Module, example: torch.Tensor) -> list[str]:
    """Time every packed layer of ``model`` (from :func:`pack_for_cpu`) on the input it gets
    in a forward pass on ``example``, packed and plain, keep the faster (:func:`settle`) and
    return the names left plain. Packed kernels lose on some shapes: a 1x1 convolution on the
    1x1 map of a squeeze-excite gate takes 2.7 ms packed against 0.1 ms plain on AMX, and
    convolutions with few channels at full resolution about 2x."""
    from unet_resnet.accel.trace import forward_with_hooks

    inputs: dict[str, tuple[tuple, dict]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, _Packed):

            def grab(_module, args, kwargs, name=name):
                inputs.setdefault(name, (args, kwargs))

            handles.append(module.register_forward_pre_hook(grab, with_kwargs=True))
    forward_with_hooks(model, example, handles)
    plain = []
    modules = dict(model.named_modules())
    with torch.inference_mode():
        for name, (args, kwargs) in inputs.items():
            layer = modules[name]
            seconds = {}
            for packed in (True, False):
                layer.packed = packed
                seconds[packed] = _layer_seconds(layer, args, kwargs)
            layer.packed = True
            if seconds[False] < PLAIN_MARGIN * seconds[True]:
                plain.append(name)
    settle(model, plain)
    return plain


def pack_checked(
    model: nn.Module,
    example: torch.Tensor,
    *,
    atol: float = 1e-2,
    timing_input: torch.Tensor | None = None,
    plain: Sequence[str] | None = None,
) -> tuple[nn.Module, bool]:
    """Pack ``model`` if this PyTorch build allows and the packed model's softmax outputs on
    ``example`` match the unpacked model's within ``atol``; otherwise keep it as it is.

    Which layers run plain: those named in ``plain`` (a choice cached earlier), else those
    measured faster plain on ``timing_input`` (:func:`choose_per_layer`), else none.
    Returns ``(model, packed)``. ``model`` is modified in place only when packing succeeds.
    """
    if not available() or example.device.type != "cpu":
        return model, False
    import copy

    with torch.inference_mode():
        expected = model(example).float().softmax(1)
    try:
        packed = pack_for_cpu(copy.deepcopy(model), example)
        if plain is None and timing_input is not None:
            choose_per_layer(packed, timing_input)
        else:
            settle(packed, plain or ())
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
