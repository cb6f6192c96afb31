"""Encoders (torchvision ResNets, timm backbones) and the contract the decoder is built from.

The contract (as in segmentation_models.pytorch and timm's ``feature_info``): an encoder yields
its feature maps from shallow to deep, and says up front how many channels each has and at
which stride it sits. The U-Net decoder is sized from :attr:`EncoderParts.out_channels`, never
from literal channel counts.

A torchvision ResNet's parts are returned loose (stem, pool, stages) rather than wrapped in one
module so the U-Net can hold them under the attribute names of the original implementation
(``input_block``, ``input_pool``, ``down_blocks``) and stay checkpoint-compatible with it. Other
families return one ``body`` module that maps an image to its list of feature maps.

Families are found by name prefix in :data:`ENCODER_FAMILIES` (``tu-`` for timm); a new family
is one entry there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from unet_resnet.errors import ConfigError, WeightsFileError
from unet_resnet.models.weights import load_encoder_state_dict, load_into_resnet

__all__ = [
    "ENCODERS",
    "ENCODER_FAMILIES",
    "EncoderParts",
    "EncoderSpec",
    "adapt_first_conv",
    "build_encoder",
    "check_encoder_name",
    "encoder_mean_std",
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
    """The torchvision encoder names, then the tested timm ones (any ``tu-`` name works)."""
    from unet_resnet.models.timm_encoder import list_timm_encoders

    return [*ENCODERS, *list_timm_encoders()]


def get_encoder_spec(name: str) -> EncoderSpec:
    """Look a torchvision encoder up by name; an unknown name raises and lists the valid ones."""
    try:
        return ENCODERS[name]
    except KeyError:
        raise ConfigError(
            f"Unknown encoder {name!r}. Choose one of: {', '.join(ENCODERS)}, or a timm "
            "backbone as tu-NAME (e.g. tu-convnext_tiny; needs the timm extra)."
        ) from None


def check_encoder_name(name: str) -> None:
    """Raise :class:`ConfigError` for a name no family accepts (without building anything)."""
    for prefix in ENCODER_FAMILIES:
        if name.startswith(prefix):
            if len(name) == len(prefix):
                raise ConfigError(f"Encoder {name!r} names no model: write {prefix}NAME.")
            return
    get_encoder_spec(name)


@dataclass
class EncoderParts:
    """An encoder as the U-Net taps it.

    Attributes:
        out_channels: channels of every feature map the encoder yields, shallow to deep,
            starting with the input itself: (in_channels, stem, layer1, ..., layer4).
        reductions: the stride of each of those maps relative to the input. Strides may be
            missing (a ConvNeXt starts at 4); the deepest must be 32.
        stem: (torchvision ResNets) conv1 + bn1 + relu, stride 2.
        pool: (torchvision ResNets) the stem's max-pool, stride 2 (no parameters).
        stages: (torchvision ResNets) layer1..layer4, strides 4, 8, 16, 32.
        body: (other families) a module mapping an image to its feature maps (without the
            input itself), as timm's ``features_only`` models do.
    """

    out_channels: tuple[int, ...]
    reductions: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    stem: nn.Sequential | None = None
    pool: nn.Module | None = None
    stages: nn.ModuleList | None = None
    body: nn.Module | None = None


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
    if in_channels < 1:
        raise ValueError(f"in_channels must be at least 1, got {in_channels}.")
    for prefix, family in ENCODER_FAMILIES.items():
        if name.startswith(prefix):
            return family(name, in_channels=in_channels, weights=weights)
    return _build_torchvision(name, in_channels=in_channels, weights=weights)


def _build_torchvision(name: str, *, in_channels: int, weights) -> EncoderParts:
    spec = get_encoder_spec(name)
    resnet = torchvision.models.get_model(name, weights=None)
    state_dict = load_encoder_state_dict(name, weights)
    if state_dict is not None:
        conv1 = state_dict.get("conv1.weight")
        file_channels = conv1.shape[1] if conv1 is not None and conv1.ndim == 4 else 3
        if file_channels != 3:
            # Multispectral weights (e.g. a 13-band Sentinel-2 ResNet-50): used unchanged when
            # the model takes as many channels; adapting them to another count would be a guess.
            if file_channels != in_channels:
                raise WeightsFileError(
                    f"Weights from {weights} take {file_channels} input channels but the model "
                    f"is built with in_channels={in_channels}. Build the model with "
                    f"in_channels={file_channels} (training does so for images with "
                    f"{file_channels} bands) to use them as they are."
                )
            resnet.conv1 = adapt_first_conv(resnet.conv1, in_channels, pretrained=False)
        load_into_resnet(resnet, state_dict, encoder=name, source=weights)
    resnet.conv1 = adapt_first_conv(resnet.conv1, in_channels, pretrained=state_dict is not None)
    return EncoderParts(
        stem=nn.Sequential(resnet.conv1, resnet.bn1, resnet.relu),
        pool=resnet.maxpool,
        stages=nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4]),
        out_channels=(in_channels, *spec.channels),
    )


def encoder_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The input statistics an encoder's pretrained weights expect, or ``None`` for
    torchvision's ImageNet mean and std (every torchvision ResNet)."""
    if name.startswith("tu-"):
        from unet_resnet.models.timm_encoder import pretrained_mean_std

        return pretrained_mean_std(name)
    return None


def _timm_family(name: str, *, in_channels: int, weights) -> EncoderParts:
    from unet_resnet.models.timm_encoder import build_timm_encoder

    body, channels, reductions = build_timm_encoder(name, in_channels=in_channels, weights=weights)
    return EncoderParts(
        body=body, out_channels=(in_channels, *channels), reductions=(1, *reductions)
    )


#: Encoder families by name prefix; names without one of these are torchvision ResNets.
ENCODER_FAMILIES: dict[str, Callable[..., EncoderParts]] = {"tu-": _timm_family}
