"""The HTTP service (``pip install unet-resnet[serve]``): FastAPI app and web page."""

from unet_resnet.serve.app import create_app

__all__ = ["create_app"]
