"""``check-data`` and ``make-demo-data``."""

from __future__ import annotations

import argparse
import json

from unet_resnet.cli.common import layout_arguments, layout_values
from unet_resnet.cli.registry import command
from unet_resnet.data.layouts import checkable_layouts


def _check_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset root: DATA/{train,val,test}/{images,masks}")
    parser.add_argument(
        "--num-classes", type=int, default=None, help="needed when DATA has no classes.json"
    )
    parser.add_argument("--dataset", default="folder", choices=checkable_layouts())
    parser.add_argument(
        "--task",
        default="multiclass",
        choices=("multiclass", "multilabel"),
        help="multilabel: per-class masks (masks/CLASSNAME/NAME.png or a band per class)",
    )
    parser.add_argument("--window", type=int, default=512, help="raster: window side")
    layout_arguments(parser)
    parser.add_argument("--json", dest="json_out", default=None, help="also write the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "check-data",
    "check a dataset for every problem that would break training",
    _check_data_arguments,
)
def check_data(args: argparse.Namespace) -> int:
    from unet_resnet.data.layouts import SplitOptions, check_layout

    options = SplitOptions(
        num_classes=args.num_classes, image_size=args.window, task=args.task
    ).overridden(layout_values(args))
    report = check_layout(args.data, args.dataset, options, progress=not args.quiet)
    print(report.summary())
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(report.to_dict(), f, indent=2)
    return 0 if report.ok else 1


def _make_demo_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", help="folder to write the dataset to")
    parser.add_argument("--n-train", type=int, default=160)
    parser.add_argument("--n-val", type=int, default=40)
    parser.add_argument("--n-test", type=int, default=8)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)


@command(
    "make-demo-data",
    "write the built-in synthetic dataset in the folder layout",
    _make_demo_data_arguments,
)
def make_demo_data(args: argparse.Namespace) -> int:
    from unet_resnet.data import make_demo_dataset

    root = make_demo_dataset(
        args.out, args.n_train, args.n_val, args.size, args.seed, n_test=args.n_test
    )
    print(f"wrote {args.n_train}/{args.n_val}/{args.n_test} train/val/test images to {root}")
    return 0
