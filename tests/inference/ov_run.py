"""Runs ``export_openvino`` in a process of its own for tests/inference/test_openvino.py:
``python -m tests.inference.ov_run MODE CHECKPOINT DATA OUT [CALIBRATION_SIZE]``.

A fresh process, as the CLI runs it. MODE ``int8`` exports for real;
``guard-stop`` and ``guard-recover`` replace the scoring with fixed numbers (int8 3 points
below float before and after accuracy control; 10 points below, then 0.1) and accuracy
control with the identity, to test the guard's decisions. Prints one JSON line.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict

from unet_resnet import quantize
from unet_resnet.errors import UnetResnetError
from unet_resnet.inference.openvino import signal_stack


def main(mode: str, checkpoint: str, data: str, out: str, size: str = "8") -> None:
    results = {"guard-stop": [0.77, 0.77], "guard-recover": [0.70, 0.799]}.get(mode)
    calls: list[int] = []
    if results is not None:

        def scores(*args):
            calls.append(1)
            miou = results[len(calls) - 1]
            return {"reference_miou": 0.8, "miou": miou, "pixel_agreement": 0.9, "per_class": {}}

        quantize.compare = scores
        quantize._with_accuracy_control = lambda nncf, model, *rest: model
    before = signal_stack()
    try:
        folder, report = quantize.export_openvino(
            checkpoint, out, precision="int8", calibration=data,
            calibration_size=int(size), max_drop=100 if mode == "int8" else 0.5,
        )  # fmt: skip
        kept = signal_stack() == before  # NNCF's Cores came and went (inference/openvino.py)
        print(json.dumps({"folder": str(folder), "report": asdict(report), "scored": len(calls),
                          "signal_stack_kept": kept}))  # fmt: skip
    except UnetResnetError as exc:
        print(json.dumps({"error": type(exc).__name__, "message": str(exc), "scored": len(calls)}))


if __name__ == "__main__":
    main(*sys.argv[1:])
