"""OpenVINO: the IR export round trip, int8 with its report and its guard, the backend
registry choosing and refusing, and the backends agreeing with each other."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from unet_resnet.cli import main
from unet_resnet.errors import ConfigError
from unet_resnet.inference import Segmenter
from unet_resnet.inference.backends import choose_backend
from unet_resnet.io import read_image


def _images(demo_data, n=2):
    return [read_image(p) for p in sorted((demo_data / "val" / "images").glob("*.png"))[:n]]


@pytest.fixture(scope="module")
def float_ir(checkpoint, tmp_path_factory):
    from unet_resnet.quantize import export_openvino

    out = tmp_path_factory.mktemp("ov") / "float"
    folder, report = export_openvino(checkpoint, out)
    assert report is None
    return folder


@pytest.fixture(scope="module")
def int8_ir(checkpoint, demo_data, tmp_path_factory):
    from unet_resnet.quantize import export_openvino

    out = tmp_path_factory.mktemp("ov") / "int8"
    return export_openvino(
        checkpoint, out, precision="int8", calibration=demo_data, calibration_size=8,
        max_drop=100,
    )  # fmt: skip


def test_a_float_ir_folder_loads_like_a_checkpoint_and_agrees_with_torch(
    float_ir, checkpoint, demo_data
):
    assert {p.name for p in float_ir.iterdir()} == {"model.xml", "model.bin", "unet_resnet.json"}
    ov = Segmenter.from_checkpoint(float_ir, precision="fp32")
    torch_ = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert ov.fastpath.precision == "fp32" and "openvino" in ov.fastpath.reason
    assert ov.classes.names == torch_.classes.names
    for image in _images(demo_data):
        np.testing.assert_allclose(ov.predict_proba(image), torch_.predict_proba(image), atol=1e-4)
    # a checkpoint converted in memory is the same model
    converted = Segmenter.from_checkpoint(checkpoint, backend="openvino", precision="fp32")
    image = _images(demo_data, 1)[0]
    np.testing.assert_allclose(converted.predict_proba(image), ov.predict_proba(image), atol=1e-5)


def test_int8_is_scored_against_float_and_the_report_travels_with_it(int8_ir, demo_data):
    folder, report = int8_ir
    saved = json.loads((folder / "report.json").read_text())
    assert saved["int8_miou"] == pytest.approx(report.int8_miou)
    assert report.calibration["images"] == 8 and report.validation["images"] == 4
    assert len(report.float_layers) >= 2  # the first convolution and the head
    assert report.pixel_agreement > 0.9
    assert report.drop_points == pytest.approx(100 * (report.float_miou - report.int8_miou))
    assert set(report.per_class) == set(
        json.loads((folder / "unet_resnet.json").read_text())["classes"]["names"]
    )
    segmenter = Segmenter.from_checkpoint(folder)
    assert segmenter.precision == "int8"
    labels = segmenter.predict(_images(demo_data, 1)[0])
    assert labels.shape == (64, 64)
    with pytest.raises(ConfigError, match="int8 model"):
        Segmenter.from_checkpoint(folder, precision="bf16")


def test_the_guard_stops_past_the_budget_and_writes_nothing(
    checkpoint, demo_data, tmp_path, monkeypatch
):
    from unet_resnet import quantize
    from unet_resnet.export import ExportError

    calls = []

    def scores(reference, candidate, samples, classes):
        calls.append(1)  # int8 loses 3 points, before and after accuracy control
        return {"float_miou": 0.8, "int8_miou": 0.77, "pixel_agreement": 0.9, "per_class": {}}

    monkeypatch.setattr(quantize, "_score", scores)
    monkeypatch.setattr(quantize, "_with_accuracy_control", lambda nncf, model, *a: model)
    out = tmp_path / "int8"
    with pytest.raises(
        ExportError, match=r"lost 3.00 mIoU points.*--max-drop 0.5.*Nothing was written"
    ):
        quantize.export_openvino(
            checkpoint, out, precision="int8", calibration=demo_data, calibration_size=2
        )
    assert len(calls) == 2  # scored, accuracy control tried, scored again
    assert list(tmp_path.iterdir()) == []  # no folder, no partial


def test_accuracy_control_that_recovers_the_budget_is_reported(
    checkpoint, demo_data, tmp_path, monkeypatch
):
    from unet_resnet import quantize

    results = iter([0.70, 0.799])
    monkeypatch.setattr(
        quantize, "_score",
        lambda *a: {"float_miou": 0.8, "int8_miou": next(results), "pixel_agreement": 0.99,
                    "per_class": {}},
    )  # fmt: skip
    monkeypatch.setattr(quantize, "_with_accuracy_control", lambda nncf, model, *a: model)
    folder, report = quantize.export_openvino(
        checkpoint, tmp_path / "int8", precision="int8", calibration=demo_data, calibration_size=2
    )
    assert report.accuracy_control and report.drop_points == pytest.approx(0.1)
    assert json.loads((folder / "report.json").read_text())["accuracy_control"] is True


def test_the_cli_exports_and_predicts_with_an_ir_folder(
    float_ir, demo_data, tmp_path, capsys, checkpoint
):
    out = tmp_path / "pred"
    argv = ["predict", str(demo_data / "val" / "images"), "--checkpoint", str(float_ir)]
    assert main([*argv, "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 4
    # int8 without calibration data, and an existing folder, are one clear error each
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out",
                 str(tmp_path / "x"), "--precision", "int8"]) == 2  # fmt: skip
    assert "--calibration DATA" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out",
                 str(float_ir)]) == 2  # fmt: skip
    assert "already exists" in capsys.readouterr().err


def test_backends_are_chosen_by_what_they_load_and_refuse_what_they_cannot(
    float_ir, checkpoint, tmp_path
):
    assert choose_backend(float_ir).name == "openvino"
    assert choose_backend(checkpoint).name == "torch"
    assert choose_backend(checkpoint, "openvino").name == "openvino"  # converts
    with pytest.raises(ConfigError, match="--backend onnxruntime cannot load"):
        choose_backend(checkpoint, "onnxruntime")
    with pytest.raises(ConfigError, match="--backend torch cannot load"):
        choose_backend(float_ir, "torch")
    with pytest.raises(ConfigError, match="Unknown backend 'tensorrt'"):
        choose_backend(checkpoint, "tensorrt")
    with pytest.raises(ConfigError, match="openvino backend runs in fp32, bf16, int8"):
        Segmenter.from_checkpoint(float_ir, precision="fp16")
