"""The ``unet-resnet`` command: one entry point, one subcommand per job.

Each subcommand is a function that takes the parsed arguments and returns an exit code.
Problems a user can fix (:class:`~unet_resnet.errors.UnetResnetError`) are printed as one
message with no traceback and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

from unet_resnet import __version__
from unet_resnet.errors import UnetResnetError

Command = Callable[[argparse.Namespace], int]
_COMMANDS: dict[str, tuple[Command, Callable[[argparse.ArgumentParser], None], str]] = {}


def command(name: str, help: str):
    """Register ``func`` as subcommand ``name``; ``func.arguments`` adds its options."""

    def register(func: Command) -> Command:
        def no_arguments(parser: argparse.ArgumentParser) -> None:
            pass

        _COMMANDS[name] = (func, getattr(func, "arguments", no_arguments), help)
        return func

    return register


def arguments(setup: Callable[[argparse.ArgumentParser], None]):
    def attach(func: Command) -> Command:
        func.arguments = setup  # type: ignore[attr-defined]
        return func

    return attach


def _weights_arg(value: str) -> str | None:
    return None if value.lower() == "none" else value


def _smoke_test_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="resnet50", help="torchvision ResNet name")
    parser.add_argument(
        "--encoder-weights",
        type=_weights_arg,
        default="imagenet",
        help="imagenet | none | torchvision weights name | PATH (default: imagenet, falling "
        "back to random init with a notice when not cached)",
    )
    parser.add_argument("--num-classes", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=2, default=(512, 512), metavar=("H", "W"))


@command("smoke-test", "build the guide's model and run a random batch through it")
@arguments(_smoke_test_arguments)
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


@command("models", "list the model names create_model accepts")
def models(args: argparse.Namespace) -> int:
    from unet_resnet.models import list_models

    print("\n".join(list_models()))
    return 0


def _check_data_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("data", help="dataset root: DATA/{train,val,test}/{images,masks}")
    parser.add_argument(
        "--num-classes", type=int, default=None, help="needed when DATA has no classes.json"
    )
    parser.add_argument("--dataset", default="folder", choices=["folder", "nifti", "raster"])
    parser.add_argument("--window", type=int, default=512, help="raster: window side")
    parser.add_argument("--slice-axis", type=int, default=2, help="nifti: slice axis")
    parser.add_argument("--json", dest="json_out", default=None, help="also write the report")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command("check-data", "check a dataset for every problem that would break training")
@arguments(_check_data_arguments)
def check_data(args: argparse.Namespace) -> int:
    import json

    from unet_resnet.data.checks import check_dataset, check_scenes

    if args.dataset == "folder":
        report = check_dataset(args.data, num_classes=args.num_classes, progress=not args.quiet)
    else:
        report = check_scenes(
            args.data,
            args.dataset,
            num_classes=args.num_classes,
            window=args.window,
            slice_axis=args.slice_axis,
            progress=not args.quiet,
        )
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


@command("make-demo-data", "write the built-in synthetic dataset in the folder layout")
@arguments(_make_demo_data_arguments)
def make_demo_data(args: argparse.Namespace) -> int:
    from unet_resnet.data import make_demo_dataset

    root = make_demo_dataset(
        args.out, args.n_train, args.n_val, args.size, args.seed, n_test=args.n_test
    )
    print(f"wrote {args.n_train}/{args.n_val}/{args.n_test} train/val/test images to {root}")
    return 0


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    from unet_resnet.training.config import add_config_arguments

    add_config_arguments(parser)


@command("train", "train a model on a dataset (Lightning; checkpoints, TensorBoard, metrics)")
@arguments(_train_arguments)
def train_command(args: argparse.Namespace) -> int:
    from unet_resnet.training import train
    from unet_resnet.training.config import config_from_args

    config = config_from_args(args)
    result = train(config)
    if result.interrupted:
        print(
            f"Interrupted after {result.epochs_completed} epoch(s). Continue with the same "
            f"command plus --resume (uses {result.run_dir / 'checkpoints' / 'last.ckpt'}).",
            file=sys.stderr,
        )
        return 130
    best = (
        "n/a" if result.best_miou is None else f"{result.best_miou:.4f} (epoch {result.best_epoch})"
    )
    print(
        f"best val mIoU {best}; {result.epochs_completed} epochs in {result.seconds:.0f} s "
        f"({result.precision}); checkpoints in {result.run_dir / 'checkpoints'}"
    )
    return 0


def _segmenter_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint from `train` (best.pt)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    parser.add_argument("--tile-size", type=int, default=1024, help="tile larger images")
    parser.add_argument("--overlap", type=float, default=0.25, help="fraction (<1) or pixels")
    parser.add_argument("--blend", default="gaussian", choices=["gaussian", "linear", "constant"])
    parser.add_argument("--batch-size", type=int, default=4, help="tiles per forward pass")
    parser.add_argument("--tta", action="store_true", help="average over flips")
    parser.add_argument("--tta-rotations", action="store_true", help="also 90-degree turns")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model (Inductor with freezing; slow first call, "
        "no faster than the default packed path on CPU)",
    )


def _build_segmenter(args: argparse.Namespace, progress: bool = False):
    from unet_resnet.inference import Segmenter

    return Segmenter.from_checkpoint(
        args.checkpoint,
        device=args.device,
        precision=args.precision,
        tile_size=args.tile_size,
        overlap=args.overlap,
        blend=args.blend,
        batch_size=args.batch_size,
        tta=args.tta or args.tta_rotations,
        tta_rotations=args.tta_rotations,
        compile=args.compile,
        progress=progress,
    )


def expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files, folders (their images) and globs to a sorted list; also the inputs that matched
    nothing."""
    import glob

    from unet_resnet.io import IMAGE_SUFFIXES

    found: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            matches = sorted(
                p
                for p in path.iterdir()
                if p.suffix.lower() in IMAGE_SUFFIXES or p.name.endswith((".nii", ".nii.gz"))
            )
        elif path.exists():
            matches = [path]
        else:
            matches = sorted(Path(p) for p in glob.glob(item, recursive=True))
            matches = [p for p in matches if p.is_file()]
        if not matches:
            missing.append(item)
        found.extend(m for m in matches if m not in found)
    return found, missing


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _segmenter_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders, globs")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    parser.add_argument(
        "--probabilities", action="store_true", help="also write class probabilities"
    )
    parser.add_argument(
        "--vectorize", action="store_true", help="GeoTIFF input: also write NAME.geojson polygons"
    )
    parser.add_argument("--slice-axis", type=int, default=2, help="NIfTI input: slice axis")


@command("predict", "predict masks for images, folders or GeoTIFF scenes of any size")
@arguments(_predict_arguments)
def predict_command(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from unet_resnet.io import is_geotiff

    files, missing = expand_inputs(args.inputs)
    segmenter = _build_segmenter(args, progress=len(files) == 1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    failed: list[tuple[str, str]] = [(m, "no such file, folder or matching glob") for m in missing]
    written = 0
    used: set[str] = set()
    for path in tqdm(files, desc="predict", unit="file", disable=len(files) < 2):
        geo = is_geotiff(path)
        nifti = path.name.endswith((".nii", ".nii.gz"))
        suffix = ".tif" if geo else ".png"
        name = path.name.removesuffix(".gz").removesuffix(".nii") if nifti else path.stem
        # Same file name from two folders: keep both, prefixed with their folder's name.
        stem = name if name not in used else f"{path.parent.name}_{name}"
        used.add(stem)
        try:
            if nifti:
                from unet_resnet.data.medical import predict_nifti

                predict_nifti(segmenter, path, out / f"{stem}.nii.gz", axis=args.slice_axis)
                written += 1
                continue
            segmenter.predict_file(
                path,
                out / f"{stem}{suffix}",
                overlay=out / f"{stem}_overlay.png" if args.overlay else None,
                probabilities=(out / f"{stem}_proba{'.tif' if geo else '.npy'}")
                if args.probabilities
                else None,
            )
            if geo and args.vectorize:
                from unet_resnet.inference.vectorize import vectorize_mask

                vectorize_mask(out / f"{stem}.tif", out / f"{stem}.geojson", segmenter.classes)
            written += 1
        except UnetResnetError as exc:
            failed.append((str(path), str(exc)))
    print(f"wrote {written} prediction(s) to {out}")
    if failed:
        print(f"{len(failed)} input(s) failed:", file=sys.stderr)
        for name, reason in failed:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _segmenter_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset root")
    parser.add_argument("--split", default="val", help="val | test | train")
    parser.add_argument(
        "--dataset", default="folder", choices=["folder", "voc", "pet", "cityscapes", "nifti"]
    )
    parser.add_argument("--slice-axis", type=int, default=2, help="nifti: slice axis")
    parser.add_argument(
        "--hd95", action="store_true", help="nifti: 95th-percentile Hausdorff distance (mm)"
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the scores here")
    parser.add_argument(
        "--out", default="evaluation", help="folder for scores.json and confusion_matrix.png"
    )


def open_split(root: str, split: str, dataset: str, classes=None, slice_axis: int = 2):
    """The labelled dataset of ``split`` in one of the supported layouts."""
    from unet_resnet.data import Cityscapes, OxfordIIITPet, SegmentationFolder, VOCSegmentation

    match dataset:
        case "folder":
            return SegmentationFolder(root, split, classes=classes)
        case "voc":
            return VOCSegmentation(root, split)
        case "pet":
            return OxfordIIITPet(root, "train" if split == "train" else "test")
        case "cityscapes":
            return Cityscapes(root, split)
        case "nifti":
            from unet_resnet.data.medical import NiftiSliceDataset, find_nifti_pairs

            return NiftiSliceDataset(find_nifti_pairs(root, split), classes, axis=slice_axis)
    raise ValueError(f"Unknown dataset layout {dataset!r}")


@command("evaluate", "score a checkpoint on a labelled split (mIoU, Dice, per-class table)")
@arguments(_evaluate_arguments)
def evaluate_command(args: argparse.Namespace) -> int:
    from unet_resnet.inference.evaluate import (
        evaluate,
        format_scores,
        plot_confusion_matrix,
        write_scores_json,
    )

    segmenter = _build_segmenter(args)
    dataset = open_split(
        args.data, args.split, args.dataset, classes=segmenter.classes, slice_axis=args.slice_axis
    )
    scores = evaluate(segmenter, dataset, hd95=args.hd95)
    print(format_scores(scores))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_scores_json(scores, out / "scores.json")
    plot_confusion_matrix(scores, out / "confusion_matrix.png")
    if args.json_out:
        write_scores_json(scores, args.json_out)
    print(f"scores and confusion matrix in {out}")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="checkpoint from `train` (best.pt)")
    parser.add_argument("--format", default="onnx", choices=["onnx", "torchscript"])
    parser.add_argument("--out", required=True, help="output file (.onnx or .pt)")
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="parity check limit")


@command("export", "export a checkpoint to ONNX or TorchScript, with a parity check")
@arguments(_export_arguments)
def export_command(args: argparse.Namespace) -> int:
    from unet_resnet.export import export_model

    report = export_model(
        args.checkpoint, args.out, format=args.format, opset=args.opset, tolerance=args.tolerance
    )
    print(f"wrote {report.path} ({report.format}) and {report.metadata_path}")
    print(
        f"parity check on {report.check_shape}: max abs difference {report.max_abs_diff:.2e} "
        f"(tolerance {report.tolerance:g})"
    )
    return 0


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    _segmenter_arguments(parser)  # the server's defaults for every request
    parser.add_argument("--host", default="127.0.0.1", help="default loopback only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="inference threads")
    parser.add_argument("--queue-size", type=int, default=8, help="waiting requests before 503")
    parser.add_argument("--max-upload-mb", type=float, default=20.0)
    parser.add_argument("--max-pixels", type=int, default=40_000_000)


@command("serve", "HTTP service and web page for a checkpoint (FastAPI + uvicorn)")
@arguments(_serve_arguments)
def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unet_resnet.serve import create_app
    except ImportError:
        raise UnetResnetError(
            "Serving needs the serve extra: pip install 'unet-resnet[serve]'."
        ) from None
    segmenter = _build_segmenter(args)
    app = create_app(
        segmenter,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        workers=args.workers,
        queue_size=args.queue_size,
    )
    print(f"serving {args.checkpoint} on http://{args.host}:{args.port}/")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _benchmark_arguments(parser: argparse.ArgumentParser) -> None:
    from unet_resnet.benchmark import SECTIONS

    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--json", dest="json_out", default="benchmarks/results/latest.json")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run)")


@command("benchmark", "speed: inference, training, data loading, tiling (ratios in one run)")
@arguments(_benchmark_arguments)
def benchmark_command(args: argparse.Namespace) -> int:
    from unet_resnet.benchmark import format_results, run, save_results

    results = run(tuple(args.only), quick=args.quick, compile=args.compile)
    print(format_results(results))
    save_results(results, args.json_out)
    print(f"\nresults written to {args.json_out}")
    return 0


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_run", help="run folder (default: demo_run)")
    parser.add_argument("--encoder", default="resnet50", help="the guide's resnet50 by default")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--n-train", type=int, default=192)
    parser.add_argument("--max-minutes", type=float, default=8.0, help="training time cap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command("demo", "the main job: make the demo dataset, train, evaluate, predict, summarise")
@arguments(_demo_arguments)
def demo(args: argparse.Namespace) -> int:
    from unet_resnet.demo import run_demo
    from unet_resnet.inference.evaluate import format_scores

    result = run_demo(
        args.out,
        encoder=args.encoder,
        epochs=args.epochs,
        image_size=args.image_size,
        n_train=args.n_train,
        max_minutes=args.max_minutes,
        workers=args.workers,
        progress=not args.quiet,
    )
    run = result.run_dir
    print()
    print(format_scores(result.scores))
    print()
    print(
        f"Demo finished in {result.seconds / 60:.1f} min "
        f"({'ImageNet' if result.pretrained else 'random'} encoder init): "
        f"validation mIoU {100 * result.scores['miou']:.1f}%."
    )
    print(f"  checkpoint:        {result.checkpoint}")
    print(f"  metrics & curves:  {run / 'run' / 'metrics.csv'}, {run / 'run' / 'curves.png'}")
    print(f"  evaluation:        {run / 'evaluation'} (scores.json, confusion_matrix.png)")
    print(f"  overlays:          {run / 'predictions'} ({len(result.overlays)} images)")
    print(f"  TensorBoard:       tensorboard --logdir {run / 'run' / 'tensorboard'}")
    return 0


def run_steps(steps: Sequence[Sequence[str]]) -> None:
    """Run ``unet-resnet`` commands in order, echoing each; stop at the first that fails.

    The recipes under ``examples/`` are lists of such steps.
    """
    for argv in steps:
        print("$ unet-resnet", " ".join(argv), flush=True)
        code = main(list(argv))
        if code != 0:
            raise UnetResnetError(
                f"step failed with exit code {code}: unet-resnet {' '.join(argv)}"
            )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="unet-resnet",
        description="Image segmentation with a U-Net on a pretrained ResNet-50 encoder.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (func, setup, help_text) in _COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        setup(p)
        p.set_defaults(func=func)
    return parser


def _show_notice(message, category, filename, lineno, file=None, line=None) -> None:
    # Warnings are notices for a person at a terminal: the message, not the source line.
    print(f"notice: {message}", file=sys.stderr if file is None else file)


def _quiet_lightning() -> None:
    # Lightning's start-up banner (GPU/TPU availability, tips, limit_* notes) is noise at a
    # terminal; its warnings and errors still show.
    import logging

    for name in (
        "lightning.pytorch.utilities.rank_zero",
        "lightning.fabric.utilities.rank_zero",
        "lightning.pytorch.accelerators.cuda",
    ):
        logging.getLogger(name).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_lightning()
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_notice
            return args.func(args)
    except UnetResnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
