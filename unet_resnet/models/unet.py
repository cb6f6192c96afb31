"""The guide's U-Net with a ResNet-50 encoder, kept checkpoint-compatible with the original.

Module names and registration order match the original single-file implementation, so its
``state_dict`` keys and shapes are the same one for one (see
``shared/reference/original_state_dict.tsv``) and its checkpoints load with ``strict=True``.
What changed is what was broken: nothing is downloaded or moved to CUDA at import, the bilinear
path builds its 1x1 convolution with the right channel counts, any input size works (padded to
a multiple of 32 and cropped back), any channel count works, and other ResNets fit because the
decoder is sized from the encoder's channels.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import torch
import torch.nn.functional as F
from torch import nn

from unet_resnet.errors import (
    ConfigError,
    InputShapeError,
)
from unet_resnet.models.card import LIBRARY_NAME
from unet_resnet.models.encoders import build_encoder
from unet_resnet.models.sharing import HubSharing

__all__ = [
    "Bridge",
    "ConvBlock",
    "UNetWithResnet50Encoder",
    "UpBlockForUNetWithResNet50",
    "UpsamplingMethod",
]

UpsamplingMethod = Literal["conv_transpose", "bilinear"]


class ConvBlock(nn.Module):
    """Conv -> BatchNorm -> ReLU (the ReLU can be left out)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        padding: int = 1,
        kernel_size: int = 3,
        stride: int = 1,
        with_nonlinearity: bool = True,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, padding=padding, kernel_size=kernel_size, stride=stride
        )
        self.bn = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU()
        self.with_nonlinearity = with_nonlinearity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.relu(x) if self.with_nonlinearity else x


class Bridge(nn.Module):
    """Two ConvBlocks between the encoder's deepest stage and the decoder."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.bridge = nn.Sequential(
            ConvBlock(in_channels, out_channels), ConvBlock(out_channels, out_channels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bridge(x)


class UpBlockForUNetWithResNet50(nn.Module):
    """Upsample x2, concatenate ``[upsampled, skip]``, then two ConvBlocks.

    Args:
        in_channels: channels after concatenation (input of the first ConvBlock).
        out_channels: channels of the block's output.
        up_conv_in_channels: channels of the tensor being upsampled (default ``in_channels``).
        up_conv_out_channels: channels after upsampling (default ``out_channels``).
        upsampling_method: ``"conv_transpose"`` (learned 2x2, stride 2) or ``"bilinear"``
            (bilinear x2 followed by a 1x1 convolution).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        up_conv_in_channels: int | None = None,
        up_conv_out_channels: int | None = None,
        upsampling_method: UpsamplingMethod = "conv_transpose",
    ) -> None:
        super().__init__()
        up_in = in_channels if up_conv_in_channels is None else up_conv_in_channels
        up_out = out_channels if up_conv_out_channels is None else up_conv_out_channels
        match upsampling_method:
            case "conv_transpose":
                self.upsample = nn.ConvTranspose2d(up_in, up_out, kernel_size=2, stride=2)
            case "bilinear":
                # The original used (in_channels, out_channels) here, which crashes whenever the
                # upsampled tensor does not have in_channels channels; the 1x1 conv maps
                # up_in -> up_out exactly like the transposed convolution does.
                self.upsample = nn.Sequential(
                    nn.Upsample(mode="bilinear", scale_factor=2, align_corners=False),
                    nn.Conv2d(up_in, up_out, kernel_size=1, stride=1),
                )
            case _:
                raise ValueError(
                    f"Unknown upsampling_method {upsampling_method!r}. "
                    f"Choose one of: {', '.join(get_args(UpsamplingMethod))}."
                )
        self.conv_block_1 = ConvBlock(in_channels, out_channels)
        self.conv_block_2 = ConvBlock(out_channels, out_channels)

    def forward(self, up_x: torch.Tensor, down_x: torch.Tensor | None = None) -> torch.Tensor:
        """``down_x`` is the skip; ``None`` where the encoder has no feature at this stride
        (the block was then built with ``in_channels`` equal to the upsampled width)."""
        x = self.upsample(up_x)
        if down_x is not None:
            x = torch.cat([x, down_x], 1)
        return self.conv_block_2(self.conv_block_1(x))


#: Strides the five up blocks bring the features to, deepest first.
_UP_STRIDES = (16, 8, 4, 2, 1)
_MIN_DEFAULT_WIDTH = 16


def skip_indices(reductions: Sequence[int]) -> tuple[int | None, ...]:
    """For each up block, the index of the encoder feature it concatenates (the last one at
    its stride), or ``None`` where the encoder has no feature at that stride.

    ``reductions`` are the strides of the encoder's features starting with the input (1);
    the deepest must be 32, and every stride one the decoder reaches.
    """
    reductions = tuple(reductions)
    if not reductions or reductions[-1] != UNetWithResnet50Encoder.OUTPUT_STRIDE:
        raise ConfigError(
            f"The encoder's deepest feature is at stride {reductions[-1] if reductions else '?'}"
            f"; the U-Net needs it at stride {UNetWithResnet50Encoder.OUTPUT_STRIDE}. Pick "
            "another encoder (dilated or transformer backbones with a fixed stride do not fit)."
        )
    unknown = sorted(set(reductions[:-1]) - set(_UP_STRIDES))
    if unknown:
        raise ConfigError(
            f"The encoder has features at strides {unknown}; the U-Net decoder joins skips only "
            f"at strides {_UP_STRIDES}. Pick another encoder."
        )
    last = {r: i for i, r in enumerate(reductions[:-1])}
    return tuple(last.get(stride) for stride in _UP_STRIDES)


def default_decoder_channels(
    encoder_channels: Sequence[int], reductions: Sequence[int] = (1, 2, 4, 8, 16, 32)
) -> tuple[int, ...]:
    """The guide's decoder widths, generalised: for ResNet-50 (1024, 512, 256, 128, 64).

    The up blocks at strides 16, 8 and 4 match the skip they meet (layer3, layer2, layer1);
    the last two halve the stride-4 width. For ResNet-18/34 this gives (256, 128, 64, 32, 16).
    A stride without a feature takes half the previous width; no width is below 16.
    """
    indices = skip_indices(reductions)
    widths: list[int] = []
    previous = encoder_channels[-1]
    for stride, index in zip(_UP_STRIDES, indices, strict=True):
        if stride >= 4 and index is not None:
            width = encoder_channels[index]
        elif stride == 2 and widths:
            width = widths[2] // 2
        elif stride == 1 and widths:
            width = widths[2] // 4
        else:
            width = previous // 2
        width = max(width, _MIN_DEFAULT_WIDTH)
        widths.append(width)
        previous = width
    return tuple(widths)


class UNetWithResnet50Encoder(
    nn.Module,
    HubSharing,
    library_name=LIBRARY_NAME,
    pipeline_tag="image-segmentation",
    tags=["image-segmentation", "unet"],
):
    """U-Net with a ResNet encoder (torchvision's ResNet-50 by default, as in the guide), or any
    timm backbone named ``tu-NAME``.

    Args:
        n_classes: number of output classes (``num_classes`` is accepted as an alias, as the
            guide's training example spells it).
        in_channels: input channels; the pretrained first convolution is adapted when not 3.
        encoder: torchvision ResNet name (see :data:`unet_resnet.models.encoders.ENCODERS`) or
            ``"tu-<timm model>"`` (needs the ``timm`` extra).
        encoder_weights: ``"imagenet"``, a torchvision weights name, a local file, or ``None``.
        upsampling_method: ``"conv_transpose"`` (the guide's) or ``"bilinear"``.
        decoder_channels: widths of the five up blocks; default derived from the encoder
            (the guide's 1024, 512, 256, 128, 64 for ResNet-50). Pass smaller ones for a
            lighter decoder.

    ``forward`` accepts any height and width: the input is padded to a multiple of 32 and the
    output cropped back, so the logits always have the input's spatial size.

    Sharing follows the Hugging Face Hub convention (:class:`~unet_resnet.models.sharing.
    HubSharing`): ``save_pretrained(dir)`` writes ``config.json`` (architecture, plus classes
    and normalisation from :attr:`hub_metadata`), ``model.safetensors`` and a ``README.md``
    model card; ``from_pretrained(dir_or_repo_id)`` and ``push_to_hub(repo_id)`` do the rest.
    """

    DEPTH = 6
    #: The input is padded to a multiple of this (the encoder's total stride).
    OUTPUT_STRIDE = 32

    def __init__(
        self,
        n_classes: int = 2,
        *,
        in_channels: int = 3,
        encoder: str = "resnet50",
        encoder_weights: str | Path | None = "imagenet",
        upsampling_method: UpsamplingMethod = "conv_transpose",
        decoder_channels: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        if num_classes is not None:
            if n_classes not in (2, num_classes):
                raise TypeError(
                    f"n_classes={n_classes} and num_classes={num_classes} disagree; pass one."
                )
            n_classes = num_classes
        if n_classes < 1:
            raise ValueError(f"n_classes must be at least 1, got {n_classes}.")
        if upsampling_method not in get_args(UpsamplingMethod):
            raise ValueError(
                f"Unknown upsampling_method {upsampling_method!r}. "
                f"Choose one of: {', '.join(get_args(UpsamplingMethod))}."
            )

        parts = build_encoder(encoder, in_channels=in_channels, weights=encoder_weights)
        channels = parts.out_channels  # in, then the encoder's features shallow to deep
        indices = skip_indices(parts.reductions)
        decoder = tuple(decoder_channels or default_decoder_channels(channels, parts.reductions))
        if len(decoder) != self.DEPTH - 1:
            raise ValueError(
                f"decoder_channels needs {self.DEPTH - 1} widths (one per up block), "
                f"got {len(decoder)}: {decoder}."
            )

        # Attribute names and order are the original's: they are the state_dict keys.
        if parts.body is None:
            self.input_block = parts.stem
            self.input_pool = parts.pool
            self.down_blocks = parts.stages
        else:
            self.encoder = parts.body
        self.bridge = Bridge(channels[-1], channels[-1])
        skips = [0 if i is None else channels[i] for i in indices]  # stride 16 .. 1
        up_blocks, previous = [], channels[-1]
        for width, skip in zip(decoder, skips, strict=True):
            up_blocks.append(
                UpBlockForUNetWithResNet50(
                    in_channels=width + skip,
                    out_channels=width,
                    up_conv_in_channels=previous,
                    up_conv_out_channels=width,
                    upsampling_method=upsampling_method,
                )
            )
            previous = width
        self.up_blocks = nn.ModuleList(up_blocks)
        self.out = nn.Conv2d(previous, n_classes, kernel_size=1, stride=1)

        self.n_classes = n_classes
        self.in_channels = in_channels
        self.encoder_name = encoder
        self.encoder_channels: tuple[int, ...] = channels
        self.encoder_reductions: tuple[int, ...] = parts.reductions
        self.skip_indices: tuple[int | None, ...] = indices
        self.decoder_channels: tuple[int, ...] = decoder
        self.upsampling_method = upsampling_method
        self._encoder_frozen = False
        #: Classes, normalisation and image size that travel with the weights when shared
        #: (set by :func:`unet_resnet.checkpoint.load_checkpoint` and by ``from_pretrained``).
        self.hub_metadata: dict[str, Any] = {}

    @property
    def num_classes(self) -> int:
        return self.n_classes

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this architecture (weights not included)."""
        return {
            "n_classes": self.n_classes,
            "in_channels": self.in_channels,
            "encoder": self.encoder_name,
            "upsampling_method": self.upsampling_method,
            "decoder_channels": list(self.decoder_channels),
        }

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise InputShapeError(
                f"Expected a batch of shape (N, {self.in_channels}, H, W), got "
                f"{tuple(x.shape)}. Add a batch dimension with x.unsqueeze(0) for one image; "
                f"build the model with in_channels={x.shape[1] if x.ndim == 4 else '...'} for "
                "images with another channel count."
            )
        if x.shape[-2] < 1 or x.shape[-1] < 1:
            raise InputShapeError(f"Expected a non-empty image, got shape {tuple(x.shape)}.")

    def _pad(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % self.OUTPUT_STRIDE, -w % self.OUTPUT_STRIDE
        if torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            # Exported graphs keep H and W dynamic: no branch on the sizes (a pad of 0 is a
            # no-op). Reflection needs sides of at least 32; Segmenter pads smaller images.
            return F.pad(x, (0, pad_w, 0, pad_h), mode="reflect")
        if not (pad_h or pad_w):
            return x
        # Reflection keeps image statistics at the border; it needs the pad to be smaller than
        # the side, which tiny inputs may not satisfy, so those are padded by replication.
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        return F.pad(x, (0, pad_w, 0, pad_h), mode=mode)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The encoder contract: feature maps from shallow to deep.

        Returns the input followed by the encoder's features (for a ResNet: stem and
        layer1..layer4), with channels :attr:`encoder_channels` and strides
        :attr:`encoder_reductions`. ``x`` must already have sides that are multiples of 32.
        """
        if "encoder" in self._modules:
            return [x, *self.encoder(x)]
        features = [x]
        x = self.input_block(x)
        features.append(x)
        x = self.input_pool(x)
        for block in self.down_blocks:
            x = block(x)
            features.append(x)
        return features

    def forward(
        self, x: torch.Tensor, with_output_feature_map: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Logits of shape (N, n_classes, H, W), or ``(logits, last decoder feature map)``."""
        if not torch.jit.is_tracing():
            self._check_input(x)
        h, w = x.shape[-2:]
        features = self.encode(self._pad(x))
        x = self.bridge(features[-1])
        for block, index in zip(self.up_blocks, self.skip_indices, strict=True):
            x = block(x, None if index is None else features[index])
        feature_map = x[..., :h, :w]
        logits = self.out(feature_map)
        if with_output_feature_map:
            return logits, feature_map
        return logits

    # Fine-tuning on small data: keep the ImageNet features, train the decoder.
    def encoder_modules(self) -> list[nn.Module]:
        if "encoder" in self._modules:
            return [self.encoder]
        return [self.input_block, self.input_pool, self.down_blocks]

    def freeze_encoder(self) -> UNetWithResnet50Encoder:
        """Stop training the encoder: no gradients, BatchNorm statistics frozen too."""
        self._encoder_frozen = True
        for module in self.encoder_modules():
            module.requires_grad_(False)
        self._set_encoder_bn_mode()
        return self

    def unfreeze_encoder(self) -> UNetWithResnet50Encoder:
        """Undo :meth:`freeze_encoder`."""
        self._encoder_frozen = False
        for module in self.encoder_modules():
            module.requires_grad_(True)
        self._set_encoder_bn_mode()
        return self

    @property
    def encoder_frozen(self) -> bool:
        return self._encoder_frozen

    def _set_encoder_bn_mode(self) -> None:
        for module in self.encoder_modules():
            for m in module.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.train(self.training and not self._encoder_frozen)

    def train(self, mode: bool = True) -> UNetWithResnet50Encoder:
        super().train(mode)
        self._set_encoder_bn_mode()
        return self
