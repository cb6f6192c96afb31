"""``smoke-test`` and ``models``: the guide's model and the names the registry accepts."""

from __future__ import annotations

import argparse
import time

from unet_resnet.cli.common import weights_arg
from unet_resnet.cli.registry import command


def _smoke_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--encoder", default="resnet50", help="torchvision ResNet name or tu-<timm model>"
    )
    parser.add_argument(
        "--encoder-weights",
        type=weights_arg,
        default="imagenet",
        help="imagenet | none | torchvision weights name | PATH (default: imagenet, falling "
        "back to random init with a notice when not cached)",
    )
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))


@command(
    "smoke-test",
    "build the guide's model and run a random batch through it",
    _smoke_test_arguments,
)
def smoke_test(args: argparse.Namespace) -> int:
    import torch

    from unet_resnet.models import UNetWithResnet50Encoder
    from unet_resnet.models.weights import build_with_fallback

    model = build_with_fallback(
        lambda weights: UNetWithResnet50Encoder(
            args.num_classes, encoder=args.encoder, encoder_weights=weights
        ),
        encoder=args.encoder,
        weights=args.encoder_weights,
    ).eval()
    x = torch.rand(args.batch_size, 3, *args.size)
    start = time.perf_counter()
    with torch.inference_mode():
        out = model(x)
    elapsed = time.perf_counter() - start
    print(f"input:  {tuple(x.shape)}")
    print(f"output: {tuple(out.shape)}")
    print(
        f"encoder {args.encoder}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, forward {elapsed:.2f} s on CPU"
    )
    return 0


@command("models", "list the encoders and model names create_model accepts")
def models(args: argparse.Namespace) -> int:
    from unet_resnet.models import list_models

    names = list_models()
    print("torchvision ResNets (--encoder NAME):")
    print("\n".join(f"  {n}" for n in names if "tu-" not in n))
    print("timm backbones tested here (--encoder tu-NAME; needs unet-resnet[timm]):")
    print("\n".join(f"  {n}" for n in names if "tu-" in n))
    print(
        "Any timm model with features_only support and stride-32 features works as "
        "tu-NAME (timm.list_models() lists them); tu-NAME.TAG picks a pretrained tag."
    )
    return 0
