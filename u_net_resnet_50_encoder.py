"""The guide's entry point: ``python u_net_resnet_50_encoder.py`` runs a smoke test.

Importing it gives the guide's classes, exactly as the original single file did::

    from u_net_resnet_50_encoder import UNetWithResnet50Encoder

Unlike the original, importing downloads nothing and does not touch CUDA.
"""

from __future__ import annotations

import sys

from unet_resnet.models import (
    Bridge,
    ConvBlock,
    UNetWithResnet50Encoder,
    UpBlockForUNetWithResNet50,
)

__all__ = ["Bridge", "ConvBlock", "UNetWithResnet50Encoder", "UpBlockForUNetWithResNet50"]


def main(argv: list[str] | None = None) -> int:
    from unet_resnet.cli import main as cli_main

    return cli_main(["smoke-test", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
