"""torchvision ResNet encoders and the encoder contract the decoder is built from.

The contract (as in segmentation_models.pytorch and timm's ``feature_info``): an encoder yields
its feature maps from shallow to deep, and says up front how many channels each has and at
which stride it sits. The U-Net decoder is sized from :attr:`EncoderParts.out_channels`, never
from literal channel counts.

The parts are returned loose (stem, pool, stages) rather than wrapped in one module so the
U-Net can hold them under the attribute names of the original implementation
(``input_block``, ``input_pool``, ``down_blocks``) and stay checkpoint-compatible with it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from unet_resnet.errors import ConfigError
from unet_resnet.models.weights import load_encoder_state_dict, load_into_resnet

__all__ = [
    "ENCODERS",
    "EncoderParts",
    "EncoderSpec",
    "adapt_first_conv",
    "build_encoder",
    "list_encoders",
]

_BASIC = (64, 64, 128, 256, 512)
_BOTTLENECK = (64, 256, 512, 1024, 2048)


@dataclass(frozen=True)
class EncoderSpec:
    """What the decoder needs to know about a torchvision ResNet before building it."""

    name: str
    channels: tuple[int, ...]  # stem, layer1, layer2, layer3, layer4


ENCODERS: dict[str, EncoderSpec] = {
    spec.name: spec
    for spec in (
        EncoderSpec("resnet18", _BASIC),
        EncoderSpec("resnet34", _BASIC),
        EncoderSpec("resnet50", _BOTTLENECK),
        EncoderSpec("resnet101", _BOTTLENECK),
        EncoderSpec("resnet152", _BOTTLENECK),
        EncoderSpec("resnext50_32x4d", _BOTTLENECK),
        EncoderSpec("resnext101_32x8d", _BOTTLENECK),
        EncoderSpec("wide_resnet50_2", _BOTTLENECK),
        EncoderSpec("wide_resnet101_2", _BOTTLENECK),
    )
}


def list_encoders() -> list[str]:
    """The encoder names the U-Net accepts."""
    return list(ENCODERS)


def get_encoder_spec(name: str) -> EncoderSpec:
    """Look an encoder up by name; an unknown name raises and lists the valid ones."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown encoder {name!r}. Choose one of: {', '.join(ENCODERS)}."
        ) from None


@dataclass
class EncoderParts:
    """A ResNet split into the pieces a U-Net taps.

    Attributes:
        stem: conv1 + bn1 + relu, stride 2.
        pool: the stem's max-pool, stride 2 (no parameters).
        stages: layer1..layer4, strides 4, 8, 16, 32.
        out_channels: channels of every feature map the encoder yields, shallow to deep,
            starting with the input itself: (in_channels, stem, layer1, ..., layer4).
        reductions: the stride of each of those maps relative to the input.
    """

    stem: nn.Sequential
    pool: nn.Module
    stages: nn.ModuleList
    out_channels: tuple[int, ...]
    reductions: tuple[int, ...] = (1, 2, 4, 8, 16, 32)


def adapt_first_conv(conv: nn.Conv2d, in_channels: int, *, pretrained: bool) -> nn.Conv2d:
    """Return a copy of ``conv`` that takes ``in_channels`` channels.

    Pretrained RGB kernels are reused rather than thrown away: for one channel they are summed
    (a grey image is R = G = B), otherwise they are copied cyclically and rescaled by 3/C so the
    first activations keep the magnitude they had for RGB input. Without pretrained weights the
    new convolution keeps PyTorch's default initialisation.
    """
    if in_channels == conv.in_channels:
        return conv
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    if pretrained:
        weight = conv.weight.detach()
        with torch.no_grad():
            if in_channels == 1:
                new.weight.copy_(weight.sum(dim=1, keepdim=True))
            else:
                index = torch.arange(in_channels) % weight.shape[1]
                new.weight.copy_(weight[:, index] * (weight.shape[1] / in_channels))
            if conv.bias is not None:
                new.bias.copy_(conv.bias.detach())
    return new


def build_encoder(
    name: str = "resnet50",
    *,
    in_channels: int = 3,
    weights: str | Path | None = "imagenet",
) -> EncoderParts:
    """Build a torchvision ResNet, load its weights, and split it into U-Net parts.

    Args:
        name: one of :data:`ENCODERS`.
        in_channels: channels of the input images; the first convolution is adapted when
            this is not 3 (see :func:`adapt_first_conv`).
        weights: ``"imagenet"``, a torchvision weights name such as ``"IMAGENET1K_V2"``, a
            path to a local ``.pth``/``.safetensors`` ResNet state dict, or ``None`` for random
            initialisation. See :func:`unet_resnet.models.weights.load_encoder_state_dict`.
    """
    spec = get_encoder_spec(name)
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}.")
    resnet = torchvision.models.get_model(name, weights=None)
    state_dict = load_encoder_state_dict(name, weights)
    if state_dict is not None:
        load_into_resnet(resnet, state_dict, encoder=name, source=weights)
    resnet.conv1 = adapt_first_conv(resnet.conv1, in_channels, pretrained=state_dict is not None)
    return EncoderParts(
        stem=nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu),
        pool=resnet.maxpool,
        stages=nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]),
        out_channels=(in_channels, *spec.channels),
    )
