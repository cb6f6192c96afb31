"""``predict``, ``evaluate`` and ``export``: using a trained checkpoint."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from unet_resnet.cli.common import (
    build_segmenter,
    checkpoints_of,
    layout_arguments,
    layout_values,
    segmenter_arguments,
    segmenter_options,
)
from unet_resnet.cli.registry import command
from unet_resnet.data.layouts import layout_names
from unet_resnet.errors import ConfigError
from unet_resnet.inference.review import REVIEW_ORDERS
from unet_resnet.uncertainty import UNCERTAINTIES


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    segmenter_arguments(parser)
    parser.add_argument(
        "inputs", nargs="*", metavar="INPUT", help="image files, folders, globs, DICOM folders"
    )
    parser.add_argument("--manifest", help="a file listing inputs, one path per line")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--overlay", action="store_true", help="also write NAME_overlay.png")
    parser.add_argument(
        "--probabilities", action="store_true", help="also write class probabilities"
    )
    parser.add_argument(
        "--vectorize",
        action="store_true",
        help="GeoTIFF input: also write polygons, NAME.geojson (WGS84) and NAME.gpkg (scene CRS)",
    )
    parser.add_argument(
        "--vector-format", default="gpkg", choices=("gpkg", "fgb"), help="GIS file of --vectorize"
    )
    parser.add_argument(
        "--simplify",
        type=float,
        default=None,
        metavar="TOL",
        help="--vectorize: simplify polygons by this tolerance in CRS units (e.g. metres)",
    )
    parser.add_argument(
        "--uncertainty",
        choices=tuple(UNCERTAINTIES),
        default=None,
        help="also write a per-pixel uncertainty map, NAME_uncertainty.png (8-bit; a float "
        "GeoTIFF for GeoTIFFs, NIfTI for volumes): entropy of the probabilities, tta = "
        "disagreement of the TTA views (turns --tta on), ensemble = of the --checkpoint models",
    )
    parser.add_argument(
        "--review-top",
        type=int,
        default=None,
        metavar="N",
        help="write OUT/review.csv: the first N inputs of the --review-for order",
    )
    parser.add_argument(
        "--review-for",
        choices=tuple(REVIEW_ORDERS),
        default="check",
        help="the order of review.csv: check = the masks the model trusts least first (its "
        "expected IoU; predict_report.json's review_order), label = the images with the most "
        "expected wrong pixels first, the ones to label for the next training round "
        "(label_order)",
    )
    layout_arguments(parser, ["slice_axis"])  # NIfTI input
    parser.add_argument(
        "--overwrite", action="store_true", help="replace outputs of an earlier run in --out"
    )
    parser.add_argument(
        "--engine",
        default="local",
        choices=("local", "ray"),
        help="local: this process; ray: Ray actors (a local Ray instance, or --address)",
    )
    parser.add_argument("--address", help="ray: cluster address (auto, ray://HOST:PORT)")
    parser.add_argument("--workers", type=int, help="ray: actors (default: CPUs / per worker)")
    parser.add_argument("--cpus-per-worker", type=float, default=1.0, help="ray: CPUs per actor")
    parser.add_argument("--gpus-per-worker", type=float, default=0.0, help="ray: GPUs per actor")


@command(
    "predict",
    "predict masks for images, folders or GeoTIFF scenes of any size",
    _predict_arguments,
    keeps_freed_memory=True,
)
def predict_command(args: argparse.Namespace) -> int:
    from unet_resnet.checkpoint import read_meta
    from unet_resnet.inference.files import plan_predictions, predict_files
    from unet_resnet.inference.review import read_report, write_report, write_review

    if args.simplify is not None and not args.simplify >= 0:
        raise ConfigError(f"Invalid --simplify {args.simplify}: a tolerance >= 0 in CRS units.")
    inputs = list(args.inputs)
    if args.manifest:
        from unet_resnet.inference.scale import read_manifest

        inputs += read_manifest(args.manifest)
    if not inputs:
        raise ConfigError("No inputs: give files, folders or globs, or --manifest FILE.")
    if args.engine == "local" and (args.address or args.workers):
        raise ConfigError("--address and --workers go with --engine ray.")
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"Invalid --workers {args.workers}: at least 1.")
    if args.review_top is not None and args.review_top < 1:
        raise ConfigError(f"Invalid --review-top {args.review_top}: at least 1 image.")
    if args.uncertainty == "ensemble" and len(checkpoints_of(args)) < 2:
        raise ConfigError(
            "--uncertainty ensemble measures how much an ensemble's members disagree: give "
            "--checkpoint twice or more (for example a cross-validation's folds), or use "
            "--uncertainty entropy or tta."
        )
    done, model = None, None
    if args.engine == "ray":
        from unet_resnet.inference.scale import RunRecord, model_hash

        model = model_hash(checkpoints_of(args))
        record = RunRecord.read(Path(args.out))

        def done(path, outputs):
            return record.is_done(path, outputs, model)

    # Outputs are named and checked before the model is loaded: a refusal costs nothing.
    multilabel = read_meta(checkpoints_of(args)[0]).task == "multilabel"
    plan = plan_predictions(
        inputs,
        args.out,
        overlay=args.overlay,
        probabilities=args.probabilities,
        vectorize=args.vectorize,
        vector_format=args.vector_format,
        overwrite=args.overwrite,
        done=done,
        multilabel=multilabel,
        uncertainty=args.uncertainty is not None,
    )
    if args.engine == "ray":
        from unet_resnet.inference.scale import predict_with_ray

        report = predict_with_ray(
            plan,
            checkpoints_of(args),
            segmenter_options(args),
            model=model,
            address=args.address,
            workers=args.workers,
            cpus_per_worker=args.cpus_per_worker,
            gpus_per_worker=args.gpus_per_worker,
            slice_axis=args.slice_axis,
            simplify=args.simplify,
        )
        if plan.skipped:
            print(f"skipped {len(plan.skipped)} input(s) already done by this model")
    else:
        segmenter = build_segmenter(args, progress=len(plan.files) == 1)
        report = predict_files(
            segmenter, plan, slice_axis=args.slice_axis, simplify=args.simplify, progress=True
        )
        summary = {
            "engine": "local",
            "inputs": len(plan.files),
            "done": len(report.written),
            "failed": [{"input": name, "reason": reason} for name, reason in report.failed],
            "uncertainty": segmenter.uncertainty,
        }
        write_report(Path(args.out), report.quality, summary)
    print(f"wrote {len(report.written)} prediction(s) to {args.out}")
    if args.review_top:
        out = Path(args.out)
        queue = write_review(out, read_report(out), args.review_top, args.review_for)
        first = REVIEW_ORDERS[args.review_for][2]
        print(f"review queue: {queue} (the {args.review_top} first: {first})")
    if report.failed:
        print(f"{len(report.failed)} input(s) failed:", file=sys.stderr)
        for name, reason in report.failed:
            print(f"  {name}: {reason}", file=sys.stderr)
        return 1
    return 0


def _labelled_split_arguments(parser: argparse.ArgumentParser, split_help: str) -> None:
    """The segmenter's flags and those naming a labelled split (evaluate, calibrate)."""
    segmenter_arguments(parser)
    parser.add_argument("--data", required=True, help="dataset root with labels")
    parser.add_argument("--split", default="val", help=split_help)
    parser.add_argument("--dataset", default="folder", choices=layout_names())
    layout_arguments(parser)


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _labelled_split_arguments(parser, "val | test | train")
    parser.add_argument(
        "--hd95",
        action="store_true",
        help="nifti: also report the per-case mean HD95 (mm) per class in the pooled table",
    )
    parser.add_argument(
        "--tolerance-mm",
        type=float,
        default=2.0,
        help="nifti: tolerance of the normalised surface Dice, in mm (default 2)",
    )
    parser.add_argument("--json", dest="json_out", default=None, help="write the scores here")
    parser.add_argument(
        "--out", default="evaluation", help="folder for scores.json and confusion_matrix.png"
    )


def _labelled_split(args: argparse.Namespace, segmenter):
    """The split ``--data``/``--split`` names, read as the checkpoint was trained (its classes,
    volume rule and saved layout options) unless a flag says otherwise; its own classes (if
    it has a classes file) must be the checkpoint's."""
    from unet_resnet.data import DataError
    from unet_resnet.data.layouts import SplitOptions, open_split

    # Read as the checkpoint was trained (its classes, volume rule and saved layout options),
    # unless a flag says otherwise; first with the dataset's own classes, to compare them.
    options = SplitOptions(task=segmenter.task.name).for_checkpoint(
        segmenter.classes, segmenter.volume, segmenter.task.name, segmenter.split,
        layout_values(args),
    )  # fmt: skip
    try:
        own = open_split(args.data, args.split, args.dataset, replace(options, classes=None))
    except DataError:
        own = None  # no classes file of its own: read with the checkpoint's classes
    if own is not None:
        segmenter.classes.check_compatible(own.classes, mine="checkpoint", theirs="dataset")
    dataset = open_split(args.data, args.split, args.dataset, options)
    if dataset is None:
        raise DataError(f"No split '{args.split}' in {args.data} ({args.dataset} layout).")
    return dataset


@command(
    "evaluate",
    "score a checkpoint on a labelled split (mIoU, Dice, per-class table)",
    _evaluate_arguments,
    keeps_freed_memory=True,
)
def evaluate_command(args: argparse.Namespace) -> int:
    from unet_resnet.inference.evaluate import (
        evaluate,
        format_scores,
        plot_confusion_matrix,
        write_cases_csv,
        write_scores_json,
    )

    segmenter = build_segmenter(args)
    dataset = _labelled_split(args, segmenter)
    if not args.tolerance_mm >= 0:
        raise ConfigError(f"Invalid --tolerance-mm {args.tolerance_mm}: a distance >= 0 in mm.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    reliability = None if segmenter.task.overlapping else out / "reliability.png"
    scores = evaluate(
        segmenter, dataset, hd95=args.hd95, tolerance=args.tolerance_mm, reliability=reliability
    )
    print(format_scores(scores))
    write_scores_json(scores, out / "scores.json")
    if scores.get("cases"):
        write_cases_csv(scores, out / "cases.csv")
    written = ["scores.json"] + (["cases.csv"] if scores.get("cases") else [])
    if "confusion_matrix" in scores:  # multiclass; multilabel classes are scored one by one
        plot_confusion_matrix(scores, out / "confusion_matrix.png")
        written.append("confusion_matrix.png")
    if reliability is not None:
        written.append("reliability.png")
    if args.json_out:
        write_scores_json(scores, args.json_out)
    print(f"{', '.join(written)} in {out}")
    return 0


def _calibrate_arguments(parser: argparse.ArgumentParser) -> None:
    _labelled_split_arguments(parser, "the split to fit on (not train)")
    parser.add_argument(
        "--out",
        default=None,
        help="the calibrated checkpoint to write (a .pt; default: only report the temperature)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


@command(
    "calibrate",
    "fit a temperature on a labelled split so that probabilities match how often they are "
    "right (ECE before and after, reliability diagram)",
    _calibrate_arguments,
    keeps_freed_memory=True,
)
def calibrate_command(args: argparse.Namespace) -> int:
    from unet_resnet.checkpoint import load_checkpoint, save_checkpoint
    from unet_resnet.errors import OutputExistsError
    from unet_resnet.inference.evaluate import calibrate, write_calibration

    if args.temperature is not None:
        raise ConfigError("calibrate fits the temperature; leave out --temperature.")
    sources = checkpoints_of(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        if len(sources) > 1 or Path(sources[0]).suffix != ".pt":
            raise ConfigError(
                "--out writes a calibrated .pt checkpoint; for an ensemble or an export, leave "
                "out --out and pass the reported --temperature to predict, evaluate or serve."
            )
        if out.suffix != ".pt":
            raise ConfigError(f"--out {out}: name a .pt file.")
        if out.resolve() == Path(sources[0]).resolve() and not args.overwrite:
            raise OutputExistsError(
                f"--out {out} is the checkpoint being calibrated; choose another name, or "
                "pass --overwrite to replace it."
            )
        if out.exists() and not args.overwrite:
            raise OutputExistsError(f"{out} already exists; pass --overwrite to replace it.")
    args.temperature = 1.0  # fit from the raw probabilities
    segmenter = build_segmenter(args)
    dataset = _labelled_split(args, segmenter)
    report = calibrate(segmenter, dataset, split=args.split)
    temperature = report["temperature"]
    before, after = report["_stats"]
    if isinstance(temperature, list):  # multilabel: one per class
        if out is None:
            raise ConfigError(
                "A multilabel model gets one temperature per class: pass --out to write them "
                "into a calibrated checkpoint (--temperature takes one for all classes)."
            )
        shown = "[" + ", ".join(f"{t:.4g}" for t in temperature) + "]"
    else:
        shown = f"{temperature:.4g}"
    print(
        f"temperature {shown} (fitted by NLL on {before.pixels} sampled pixels of "
        f"{report['pixels']})\n"
        f"  ECE {before.ece():.4f} -> {after.ece():.4f}   ACE {before.ace():.4f} -> "
        f"{after.ace():.4f}   MCE {before.mce():.4f} -> {after.mce():.4f}"
    )
    if out is None:
        print(f"pass --temperature {shown} to predict, evaluate or serve")
        return 0
    model, meta = load_checkpoint(sources[0])
    meta.temperature = temperature
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, model, meta)
    side, plot = out.with_suffix(".calibration.json"), out.with_suffix(".reliability.png")
    write_calibration(report, side, plot)
    print(f"wrote {out} (temperature {shown}), {side.name} and {plot.name}")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    from unet_resnet.export import EXPORT_FORMATS

    parser.add_argument("--checkpoint", required=True, help="checkpoint from `train` (best.pt)")
    parser.add_argument(
        "--format",
        default="onnx",
        choices=(*EXPORT_FORMATS, "openvino", "hf"),
        help="onnx, torchscript, openvino (IR folder: model.xml/.bin, metadata; float or "
        "int8), or hf (Hugging Face Hub folder: config.json, model.safetensors, README.md "
        "model card)",
    )
    parser.add_argument(
        "--out", required=True, help="output file (.onnx or .pt), or folder (openvino, hf)"
    )
    group = parser.add_argument_group("openvino int8 (post-training quantization, NNCF)")
    group.add_argument(
        "--precision",
        default="fp32",
        choices=("fp32", "int8"),
        help="openvino: fp32 (runs in bf16 where the CPU has it), or int8 calibrated on "
        "--calibration and scored against the float model on its --split",
    )
    group.add_argument("--calibration", metavar="DATA", help="int8: dataset to calibrate on")
    group.add_argument(
        "--dataset", default="folder", choices=layout_names(), help="int8: layout of DATA"
    )
    group.add_argument(
        "--calibration-split", default="train", help="int8: split of DATA to calibrate on"
    )
    group.add_argument(
        "--calibration-size", type=int, default=64, help="int8: calibration images (at most)"
    )
    group.add_argument("--split", default="val", help="int8: split of DATA it is scored on")
    group.add_argument(
        "--max-drop",
        type=float,
        default=0.5,
        help="int8: mIoU points it may lose against float; past it more layers stay in "
        "float, or the export stops with the numbers",
    )
    parser.add_argument(
        "--push-to-hub", metavar="REPO", help="hf: also upload the folder to this Hub repo"
    )
    parser.add_argument(
        "--scores", help="hf: scores.json of `evaluate` for the model card (default: the run's)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset")
    parser.add_argument(
        "--output",
        choices=("probabilities", "logits"),
        default="probabilities",
        help="ONNX: what the graph returns (probabilities: what QGIS's Deepness reads)",
    )
    parser.add_argument(
        "--resolution",
        type=float,
        default=None,
        metavar="CM_PER_PX",
        help="ONNX: ground resolution for Deepness (default: recorded from GeoTIFF training data)",
    )
    parser.add_argument("--tolerance", type=float, default=1e-3, help="parity check limit")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")


@command(
    "export",
    "export a checkpoint to ONNX, TorchScript or OpenVINO (float or int8; parity- and "
    "accuracy-checked) or a Hugging Face Hub folder",
    _export_arguments,
)
def export_command(args: argparse.Namespace) -> int:
    from unet_resnet.export import export_model

    if args.format == "hf":
        from unet_resnet.hub import export_hf, push_folder

        done = export_hf(
            args.checkpoint,
            args.out,
            scores=args.scores,
            repo_id=args.push_to_hub,
            overwrite=args.overwrite,
        )
        print(f"wrote {done.path} (config.json, model.safetensors, README.md)")
        print(f"model card: run folder {done.run_dir or '-'}, scores from {done.scores_from}")
        if args.push_to_hub:
            print(f"pushed: {push_folder(done.path, args.push_to_hub)}")
        return 0
    if args.push_to_hub or args.scores:
        raise ConfigError("--push-to-hub and --scores go with --format hf.")
    if args.format != "openvino" and (args.precision != "fp32" or args.calibration):
        raise ConfigError("--precision int8 and --calibration go with --format openvino.")
    if args.format == "openvino":
        from unet_resnet.quantize import export_openvino

        folder, quantized = export_openvino(
            args.checkpoint,
            args.out,
            precision=args.precision,
            calibration=args.calibration,
            dataset=args.dataset,
            calibration_split=args.calibration_split,
            split=args.split,
            calibration_size=args.calibration_size,
            max_drop=args.max_drop,
            overwrite=args.overwrite,
            tolerance=args.tolerance,
        )
        print(f"wrote {folder} (OpenVINO IR, {args.precision}; parity-checked in fp32)")
        if quantized is not None:
            print(quantized.summary())
            print(f"report: {folder / 'report.json'}")
        return 0
    report = export_model(
        args.checkpoint,
        args.out,
        format=args.format,
        opset=args.opset,
        tolerance=args.tolerance,
        overwrite=args.overwrite,
        output=args.output,
        resolution_cm=args.resolution,
    )
    print(f"wrote {report.path} ({report.format}) and {report.metadata_path}")
    print(
        f"parity check on {report.check_shape}: max abs difference {report.max_abs_diff:.2e} "
        f"(tolerance {report.tolerance:g})"
    )
    return 0
