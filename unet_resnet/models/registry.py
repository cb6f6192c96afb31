"""Build models by name: ``create_model("unet_resnet50", num_classes=...)``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from unet_resnet.errors import ConfigError
from unet_resnet.models.encoders import check_encoder_name, list_encoders
from unet_resnet.models.unet import UNetWithResnet50Encoder

__all__ = ["create_model", "list_models", "model_from_config"]

_PREFIX = "unet_"


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`: ``unet_`` + an encoder name (torchvision
    ResNets, then the tested timm backbones; any ``unet_tu-<timm model>`` works too)."""
    return [_PREFIX + name for name in list_encoders()]


def create_model(
    name: str = "unet_resnet50",
    *,
    num_classes: int = 2,
    in_channels: int = 3,
    encoder_weights: str | Path | None = "imagenet",
    **kwargs: Any,
) -> UNetWithResnet50Encoder:
    """Build a U-Net by registry name.

    Args:
        name: ``unet_`` + an encoder name (:func:`list_models`, or ``unet_tu-<timm model>``);
            ``"unet_resnet50"`` is the guide's model.
        num_classes: output classes.
        in_channels: input channels.
        encoder_weights: see :class:`UNetWithResnet50Encoder`.
        **kwargs: ``upsampling_method``, ``decoder_channels``.
    """
    try:
        if not name.startswith(_PREFIX):
            raise ConfigError("model names start with 'unet_'")
        check_encoder_name(name.removeprefix(_PREFIX))
    except ConfigError as exc:
        raise ConfigError(
            f"Unknown model {name!r} ({exc}). Choose one of: {', '.join(list_models())}, "
            "or unet_tu-<timm model>."
        ) from None
    return UNetWithResnet50Encoder(
        num_classes,
        in_channels=in_channels,
        encoder=name.removeprefix(_PREFIX),
        encoder_weights=encoder_weights,
        **kwargs,
    )


def model_from_config(config: dict[str, Any]) -> UNetWithResnet50Encoder:
    """Rebuild an architecture from :attr:`UNetWithResnet50Encoder.config`, weights random.

    Used to load checkpoints: the weights come from the checkpoint, so nothing is downloaded.
    """
    return UNetWithResnet50Encoder(**config, encoder_weights=None)
