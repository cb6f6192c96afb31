"""Models: the guide's U-Net, its encoders, and their pretrained weights."""

from unet_resnet.models.encoders import ENCODERS, adapt_first_conv, build_encoder, list_encoders
from unet_resnet.models.registry import create_model, list_models, model_from_config
from unet_resnet.models.unet import (
    Bridge,
    ConvBlock,
    UNetWithResnet50Encoder,
    UpBlockForUNetWithResNet50,
)

__all__ = [
    "ENCODERS",
    "Bridge",
    "ConvBlock",
    "UNetWithResnet50Encoder",
    "UpBlockForUNetWithResNet50",
    "adapt_first_conv",
    "build_encoder",
    "create_model",
    "list_encoders",
    "list_models",
    "model_from_config",
]
