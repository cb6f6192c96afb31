"""Backends: our default torch path against OpenVINO (f32, bf16, int8) and ONNX Runtime
(fp32, int8) on the guide's model, batch 1, in one process; and each backend's accuracy on a
trained model (``--checkpoint``, with its dataset ``--data``): mIoU on the validation split
and pixel agreement with the torch fp32 reference.

int8 speed rows use a random-init model calibrated on 8 random inputs (speed does not depend
on the weights); the accuracy rows use the real calibration (``export --format openvino
--precision int8``: NNCF on the training images, first convolution and head in float) and
ONNX Runtime's static QDQ quantization on the same images.

``default`` is our torch path (``--backend torch``), ``auto`` what ``--backend auto`` chose
after timing the backends itself (``auto_choice``); ``vs default`` is the default path's p50
over the row's: above 1 the row is faster.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import model_gflop, stats, timeit


def _ort_int8(onnx_path: Path, out: Path, inputs: list[np.ndarray]) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(inputs)

        def get_next(self):
            item = next(self.items, None)
            return None if item is None else {"image": item}

    quantize_static(
        str(onnx_path), str(out), Reader(), per_channel=True,
        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
    )  # fmt: skip
    return out


def _variants(checkpoint: Path, tmp: Path, calibration: list[np.ndarray]) -> dict[str, Any]:
    """name -> Segmenter for every backend and precision this machine can run."""
    from unet_resnet.export import export_model
    from unet_resnet.hardware import cpu_has_fast_bf16
    from unet_resnet.inference import Segmenter

    # "default": our torch path as `--backend torch` builds it (bf16 + packing where that is
    # fastest); "auto": what `--backend auto` builds, having timed the backends itself
    seg: dict[str, Any] = {
        "default": Segmenter.from_checkpoint(checkpoint, device="cpu", backend="torch"),
        "auto": Segmenter.from_checkpoint(checkpoint, device="cpu"),
    }
    seg["torch_fp32"] = Segmenter.from_checkpoint(
        checkpoint, device="cpu", precision="fp32", backend="torch"
    )
    try:
        import openvino  # noqa: F401

        for precision in ("fp32", "bf16") if cpu_has_fast_bf16() else ("fp32",):
            seg[f"openvino_{precision}"] = Segmenter.from_checkpoint(
                checkpoint, backend="openvino", precision=precision
            )
    except ImportError:
        pass
    try:
        export_model(checkpoint, tmp / "m.onnx")
        seg["onnxruntime_fp32"] = Segmenter.from_checkpoint(tmp / "m.onnx")
        _ort_int8(tmp / "m.onnx", tmp / "m8.onnx", calibration)
        (tmp / "m8.onnx.json").write_text((tmp / "m.onnx.json").read_text())
        seg["onnxruntime_int8"] = Segmenter.from_checkpoint(tmp / "m8.onnx")
    except ImportError:
        pass
    return seg


def bench_backends(
    *,
    sizes=(256, 512),
    reps: int = 3,
    checkpoint: str | None = None,
    data: str | None = None,
) -> dict[str, Any]:
    from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
    from unet_resnet.data import ClassInfo
    from unet_resnet.models import UNetWithResnet50Encoder

    rows: list[dict[str, Any]] = []
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(2, encoder_weights=None).eval()
    with tempfile.TemporaryDirectory(prefix="bench-backends-") as folder:
        tmp = Path(folder)
        save_checkpoint(tmp / "m.pt", model, CheckpointMeta(model.config, ClassInfo.generic(2)))
        rng = np.random.default_rng(0)
        calibration = [rng.standard_normal((1, 3, 256, 256), np.float32) for _ in range(8)]
        variants = _variants(tmp / "m.pt", tmp, calibration)
        try:
            from unet_resnet.quantize import export_openvino  # noqa: F401

            variants["openvino_int8"] = _openvino_int8_random(tmp, model, calibration)
        except ImportError:
            pass
        for size in sizes:
            gflop = model_gflop(model, size)
            x = torch.randn(1, 3, size, size)
            group = []
            for name, segmenter in variants.items():
                with torch.inference_mode():
                    times = timeit(lambda s=segmenter, x=x: s.probabilities(x), reps=reps)
                group.append({"variant": name, "size": size, **stats(times, 1, gflop, None)})
            default = next(r["latency_p50_s"] for r in group if r["variant"] == "default")
            for row in group:
                row["vs_default"] = default / row["latency_p50_s"]
            rows.extend(group)
    choice = variants["auto"].backend
    out: dict[str, Any] = {
        "speed": rows,
        "auto_choice": {"backend": choice.name, "precision": choice.precision,
                        "source": choice.source, "timings": choice.timings},
    }  # fmt: skip
    if checkpoint and data:
        out["accuracy"] = backend_accuracy(checkpoint, data)
    return out


def _openvino_int8_random(tmp: Path, model, calibration: list[np.ndarray]):
    """int8 of a random-init model (speed only): NNCF on random inputs, same float layers."""
    import nncf

    from unet_resnet.accel.fastpath import fold_checked
    from unet_resnet.checkpoint import CheckpointMeta, export_metadata
    from unet_resnet.data import ClassInfo
    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.openvino import OpenVinoModel, convert, kept_signal_stack
    from unet_resnet.quantize import _first_and_last_convolutions

    folded, _ = fold_checked(model, torch.randn(1, 3, 64, 64))
    ir = convert(folded, 3)
    nncf.set_log_level(40)
    with kept_signal_stack():  # NNCF's own OpenVINO Cores (see unet_resnet.inference.openvino)
        quantized = nncf.quantize(
            ir, nncf.Dataset(calibration), subset_size=len(calibration),
            ignored_scope=nncf.IgnoredScope(names=_first_and_last_convolutions(ir)),
        )  # fmt: skip
    meta = export_metadata(CheckpointMeta(model.config, ClassInfo.generic(2)), "openvino")
    return Segmenter(OpenVinoModel(quantized, meta, precision="int8"), device="cpu")


def backend_accuracy(checkpoint: str, data: str, split: str = "val") -> list[dict[str, Any]]:
    """mIoU of each backend on ``split`` of ``data`` and its pixel agreement with torch fp32;
    int8 rows calibrated on the training split."""
    from unet_resnet.data.layouts import SplitOptions, open_split
    from unet_resnet.inference import Segmenter
    from unet_resnet.quantize import _normalised, _spread, compare, export_openvino

    reference = Segmenter.from_checkpoint(
        checkpoint, device="cpu", precision="fp32", backend="torch"
    )
    options = SplitOptions().for_checkpoint(
        reference.classes, reference.volume, reference.task.name, reference.split
    )
    val = open_split(data, split, "folder", options)
    train = open_split(data, "train", "folder", options)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-accuracy-") as folder:
        tmp = Path(folder)
        calibration = [
            _normalised(train.load(i)[0], reference.mean.flatten().tolist(),
                        reference.std.flatten().tolist())
            for i in _spread(len(train), 64)
        ]  # fmt: skip
        variants = _variants(Path(checkpoint), tmp, calibration)
        ir, report = export_openvino(
            checkpoint, tmp / "ir8", precision="int8", calibration=data, max_drop=100
        )
        variants["openvino_int8"] = Segmenter.from_checkpoint(ir)
        samples = [val.load(i) for i in range(len(val))]
        for name, segmenter in variants.items():
            scores = compare(reference, segmenter, samples, reference.classes)
            rows.append({
                "variant": name, "miou": scores["miou"],
                "agreement_with_fp32": scores["pixel_agreement"], "images": len(samples),
            })  # fmt: skip
        rows.append({"variant": "openvino_int8 (export report)", "report": report.summary()})
    return rows
