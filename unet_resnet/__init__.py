"""unet-resnet: image segmentation with the guide's U-Net on a pretrained ResNet-50 encoder.

Importing the package touches neither the network nor CUDA; weights are fetched only when a
model is built with ``encoder_weights="imagenet"``.
"""

from unet_resnet._version import __version__
from unet_resnet.errors import UnetResnetError, WeightsUnavailableError
from unet_resnet.inference import Segmenter
from unet_resnet.models import (
    UNetWithResnet50Encoder,
    create_model,
    list_models,
)

__all__ = [
    "Segmenter",
    "UNetWithResnet50Encoder",
    "UnetResnetError",
    "WeightsUnavailableError",
    "__version__",
    "create_model",
    "list_models",
]
