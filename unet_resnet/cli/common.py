"""Flags shared by several commands."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from unet_resnet.hardware import PRECISIONS
from unet_resnet.inference.backends import backend_names
from unet_resnet.inference.tiling import BLENDS

__all__ = [
    "build_segmenter",
    "checkpoints_of",
    "layout_arguments",
    "layout_values",
    "segmenter_arguments",
    "segmenter_options",
    "weights_arg",
]


def weights_arg(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _thresholds(value: str) -> list[float]:
    try:
        return [float(v) for v in value.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected numbers between 0 and 1 separated by commas, got {value!r}"
        ) from None


def layout_arguments(parser: argparse.ArgumentParser, names: Sequence[str] | None = None) -> None:
    """Flags for the dataset layouts' options (:data:`LAYOUT_OPTIONS`), generated from their
    declaration: every command that reads a split takes the same ones. Unset flags stay None
    so that the checkpoint's saved options (or the layout's defaults) apply."""
    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    for name in names or LAYOUT_OPTIONS:
        option = LAYOUT_OPTIONS[name]
        saved = "; default: as the checkpoint was trained" if option.saved else ""
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.type,
            choices=option.choices,
            default=None,
            help=f"{option.help}{saved}",
        )


def layout_values(args: argparse.Namespace) -> dict[str, Any]:
    """The layout options set on the command line, by name (unset ones left out)."""
    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    return {n: getattr(args, n) for n in LAYOUT_OPTIONS if getattr(args, n, None) is not None}


def _batch_size(value: str) -> int | str:
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise argparse.ArgumentTypeError(
            f"expected a number of tiles (>= 1) or auto, got {value!r}"
        )
    return number


def segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--checkpoint",
        required=True,
        action="append",
        help="checkpoint from `train` (best.pt), a shared-model folder or Hub repo id; repeat "
        "the flag for an ensemble that averages the probabilities (e.g. cross-validation folds)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=("auto", *backend_names()),
        help="inference backend; auto = the one that loads --checkpoint as it is "
        "(onnxruntime for .onnx, openvino for IR folders), and for a checkpoint on a CPU the "
        "fastest of torch and the installed backends that convert it (timed once per model "
        "architecture and CPU, cached; $UNET_RESNET_AUTO_BACKENDS limits which)",
    )
    parser.add_argument("--precision", default="auto", choices=PRECISIONS)
    parser.add_argument("--tile-size", type=int, default=1024, help="tile larger images")
    parser.add_argument("--overlap", type=float, default=0.25, help="fraction (<1) or pixels")
    parser.add_argument("--blend", default="gaussian", choices=BLENDS)
    parser.add_argument(
        "--batch-size",
        type=_batch_size,
        default="auto",
        help="tiles per forward pass; auto = 4 on CPUs, as many as half the free memory "
        "holds on GPUs",
    )
    parser.add_argument(
        "--thresholds",
        type=_thresholds,
        default=None,
        help="multilabel models: per-class decision thresholds (one value, or one per class) "
        "instead of the checkpoint's",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="divide the logits by this before the softmax (default: the checkpoint's, from "
        "`unet-resnet calibrate`; an ensemble's from calibrating the ensemble)",
    )
    parser.add_argument("--tta", action="store_true", help="average over flips")
    parser.add_argument("--tta-rotations", action="store_true", help="also 90-degree turns")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (Inductor with freezing; slow first call, "
        "no faster than the default packed path on CPU)",
    )


def checkpoints_of(args: argparse.Namespace) -> list[str]:
    return args.checkpoint if isinstance(args.checkpoint, list) else [args.checkpoint]


def segmenter_options(args: argparse.Namespace, progress: bool = False) -> dict:
    """The Segmenter keyword arguments the flags of :func:`segmenter_arguments` set."""
    return {
        "device": args.device,
        "backend": getattr(args, "backend", "auto"),
        "precision": args.precision,
        "tile_size": args.tile_size,
        "overlap": args.overlap,
        "blend": args.blend,
        "batch_size": args.batch_size,
        "tta": args.tta or args.tta_rotations,
        "tta_rotations": args.tta_rotations,
        "compile": args.compile,
        "progress": progress,
        **({"temperature": args.temperature} if getattr(args, "temperature", None) else {}),
        **({"thresholds": args.thresholds} if getattr(args, "thresholds", None) else {}),
        **({"uncertainty": args.uncertainty} if getattr(args, "uncertainty", None) else {}),
    }


def build_segmenter(args: argparse.Namespace, progress: bool = False):
    from unet_resnet.inference import Segmenter

    checkpoints = checkpoints_of(args)
    return Segmenter.from_checkpoint(
        checkpoints if len(checkpoints) > 1 else checkpoints[0],
        **segmenter_options(args, progress),
    )
