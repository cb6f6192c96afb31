"""Multilabel mode end to end: overlapping masks train, thresholds are tuned or given, saved
in the checkpoint and used by predict; predict writes one band per class and an overlay;
evaluate scores per class; ONNX export and ensembles keep the sigmoid."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from tests.conftest import tiny_config
from tests.data.fixtures import make_multilabel
from unet_resnet import Segmenter
from unet_resnet.checkpoint import load_checkpoint
from unet_resnet.cli import main
from unet_resnet.data.layouts import SplitOptions, open_split
from unet_resnet.errors import ConfigError
from unet_resnet.metrics import THRESHOLD_GRID
from unet_resnet.training import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    data = make_multilabel(root / "data", np.random.default_rng(0), n_train=8, n_val=4)
    config = tiny_config(
        data, root / "run", task="multilabel", epochs=4, lr=3e-3, thresholds="tune"
    )
    return data, train(config)


def test_overlapping_classes_are_learned(trained):
    data, result = trained
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint, precision="fp32")
    val = open_split(data, "val", "folder", SplitOptions(task="multilabel"))
    inter = union = 0
    for k in range(len(val)):
        image, truth = val.load(k)
        planes = segmenter.predict(image)
        assert planes.shape == truth.shape and set(np.unique(planes)) <= {0, 1}
        both = (planes == 1).all(0) & (truth == 1).all(0)
        inter, union = (
            inter + both.sum(),
            union + ((planes == 1).all(0) | (truth == 1).all(0)).sum(),
        )
    assert inter / union > 0.6  # the overlap itself is predicted as both classes
    best = load_checkpoint(result.best_checkpoint)[1].extra["val"]
    assert best["per_class"]["outer"]["iou"] > 0.7 and best["per_class"]["inner"]["iou"] > 0.7
    assert best["thresholds"] == segmenter.thresholds  # the scores are at the saved thresholds


def test_tuned_thresholds_are_saved_and_used(trained):
    _, result = trained
    _, meta = load_checkpoint(result.best_checkpoint)
    assert meta.task == "multilabel"
    assert len(meta.thresholds) == 2 and all(t in THRESHOLD_GRID for t in meta.thresholds)
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    assert segmenter.thresholds == meta.thresholds
    image = np.random.default_rng(1).integers(0, 255, (37, 45, 3), dtype=np.uint8)
    probs = segmenter.predict_proba(image)
    assert probs.shape == (2, 37, 45) and probs.min() >= 0 and probs.max() <= 1
    limits = np.asarray(meta.thresholds)[:, None, None]
    np.testing.assert_array_equal(segmenter.predict(image), (probs >= limits).astype(np.uint8))
    override = Segmenter.from_checkpoint(result.best_checkpoint, thresholds=[0.999, 0.001])
    planes = override.predict(image)
    np.testing.assert_array_equal(planes[0], probs[0] >= 0.999)
    np.testing.assert_array_equal(planes[1], probs[1] >= 0.001)


def test_thresholds_on_a_multiclass_model_are_refused(checkpoint):
    with pytest.raises(ConfigError, match="multilabel models"):
        Segmenter.from_checkpoint(checkpoint, thresholds=[0.5])


def test_given_thresholds_are_checked_and_kept(tmp_path):
    data = make_multilabel(tmp_path / "data", np.random.default_rng(2), n_train=4, n_val=2)
    result = train(tiny_config(data, tmp_path / "run", task="multilabel", thresholds="0.3,0.7"))
    assert load_checkpoint(result.best_checkpoint)[1].thresholds == [0.3, 0.7]
    with pytest.raises(ConfigError, match="multilabel"):
        tiny_config(data, tmp_path / "r2", thresholds="0.3")  # multiclass
    with pytest.raises(ConfigError, match="between 0 and 1"):
        tiny_config(data, tmp_path / "r3", task="multilabel", thresholds="1.5")
    with pytest.raises(ConfigError, match="not available for --task multilabel"):
        tiny_config(data, tmp_path / "r4", task="multilabel", loss="lovasz")
    with pytest.raises(ConfigError, match="fit 2 classes"):
        train(tiny_config(data, tmp_path / "r5", task="multilabel", thresholds=[0.2, 0.3, 0.4]))


def test_predict_writes_a_band_per_class_and_an_overlay(trained, tmp_path, capsys):
    data, result = trained
    out = tmp_path / "pred"
    args = ["predict", str(data / "val" / "images"), "--checkpoint", str(result.best_checkpoint)]
    assert main([*args, "--out", str(out), "--overlay"]) == 0
    written = tifffile.imread(out / "img0.tif")
    assert written.shape == (2, 40, 48) and written.dtype == np.uint8
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    image = open_split(data, "val", "folder", SplitOptions(task="multilabel")).load(0)[0]
    np.testing.assert_array_equal(written, segmenter.predict(image))
    assert (out / "img0_overlay.png").is_file()
    loose = tmp_path / "loose"
    assert main([*args, "--out", str(loose), "--thresholds", "0.001"]) == 0
    assert tifffile.imread(loose / "img0.tif").sum() >= written.sum()
    assert main([*args, "--out", str(tmp_path / "v"), "--vectorize"]) == 2
    assert "multilabel" in capsys.readouterr().err


def test_overlay_shows_overlaps_in_mixed_colours():
    from unet_resnet.visualize import overlay_with_legend

    planes = np.zeros((2, 4, 4), np.uint8)
    planes[0, :, :2] = 1
    planes[1, :, 1:3] = 1  # column 1 has both
    picture = overlay_with_legend(
        np.zeros((4, 4, 3), np.uint8), planes, ["a", "b"], [(255, 0, 0), (0, 0, 255)], alpha=1.0
    )
    pixels = np.asarray(picture)[:4, :4]
    assert tuple(pixels[0, 0]) == (255, 0, 0) and tuple(pixels[0, 2]) == (0, 0, 255)
    assert tuple(pixels[0, 1]) == (127, 0, 127)  # overlap: the mean of both colours
    assert tuple(pixels[0, 3]) == (0, 0, 0)


def test_evaluate_scores_each_class(trained, tmp_path):
    data, result = trained
    out = tmp_path / "eval"
    argv = [
        "evaluate",
        "--data",
        str(data),
        "--checkpoint",
        str(result.best_checkpoint),
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    scores = json.loads((out / "scores.json").read_text())
    assert set(scores["per_class"]) == {"outer", "inner"}
    assert scores["per_class"]["inner"]["iou"] > 0.6
    assert not (out / "confusion_matrix.png").exists()


def test_onnx_export_keeps_task_and_thresholds(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    from unet_resnet.export import export_model

    _, result = trained
    export_model(result.best_checkpoint, tmp_path / "m.onnx", format="onnx")
    onnx_seg = Segmenter.from_onnx(tmp_path / "m.onnx")
    torch_seg = Segmenter.from_checkpoint(result.best_checkpoint, precision="fp32")
    assert onnx_seg.task.name == "multilabel" and onnx_seg.thresholds == torch_seg.thresholds
    image = np.random.default_rng(3).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    np.testing.assert_allclose(
        onnx_seg.predict_proba(image), torch_seg.predict_proba(image), atol=1e-4
    )


def test_ensemble_averages_sigmoid_probabilities(trained, tmp_path):
    _, result = trained
    both = Segmenter.from_checkpoint(
        [result.best_checkpoint, result.last_checkpoint], precision="fp32"
    )
    one = Segmenter.from_checkpoint(result.best_checkpoint, precision="fp32")
    two = Segmenter.from_checkpoint(result.last_checkpoint, precision="fp32")
    image = np.random.default_rng(4).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    expected = (one.predict_proba(image) + two.predict_proba(image)) / 2
    np.testing.assert_allclose(both.predict_proba(image), expected, atol=1e-4)
    assert torch.is_tensor(both.image_probabilities(image))


def test_service_and_volumes_refuse_a_multilabel_model_clearly(trained, tmp_path):
    pytest.importorskip("fastapi")
    from unet_resnet.serve.app import create_app

    _, result = trained
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    with pytest.raises(ConfigError, match="multilabel model"):
        create_app(segmenter)
    check = tmp_path / "scan.nii.gz"
    check.write_bytes(b"")
    from unet_resnet.inference.files import predict_nifti

    with pytest.raises(ConfigError, match="multilabel models predict images"):
        predict_nifti(segmenter, check, tmp_path / "out.nii.gz")


def test_check_data_cli_reads_per_class_masks(tmp_path, capsys):
    data = make_multilabel(tmp_path / "data", np.random.default_rng(5))
    assert main(["check-data", str(data), "--task", "multilabel", "--quiet"]) == 0
    assert "No problems found" in capsys.readouterr().out
    assert main(["check-data", str(data), "--quiet"]) == 1  # read as class-index masks


def test_shared_model_keeps_task_and_thresholds(trained, tmp_path):
    from unet_resnet.hub import export_hf

    _, result = trained
    export_hf(result.best_checkpoint, tmp_path / "shared")
    shared = Segmenter.from_pretrained(tmp_path / "shared")
    local = Segmenter.from_checkpoint(result.best_checkpoint)
    assert shared.task.name == "multilabel" and shared.thresholds == local.thresholds
    image = np.random.default_rng(6).integers(0, 255, (40, 48, 3), dtype=np.uint8)
    np.testing.assert_array_equal(shared.predict(image), local.predict(image))
    card = (tmp_path / "shared" / "README.md").read_text()
    assert "Multilabel: classes may overlap" in card and str(local.thresholds) in card


def test_per_class_temperatures_calibrate_without_changing_decisions(trained, tmp_path):
    import json

    import onnxruntime as ort

    from unet_resnet.calibration import rescale
    from unet_resnet.checkpoint import read_meta
    from unet_resnet.export import export_model

    data, result = trained
    best, out = result.best_checkpoint, tmp_path / "calibrated.pt"
    argv = ["calibrate", "--checkpoint", str(best), "--data", str(data), "--precision", "fp32"]
    assert main(argv) == 2  # one per class: only into a checkpoint
    assert main([*argv, "--out", str(out)]) == 0
    temperature = read_meta(out).temperature
    assert isinstance(temperature, list) and len(temperature) == 2
    assert all(t > 0 for t in temperature) and temperature != [1.0, 1.0]
    report = json.loads(out.with_suffix(".calibration.json").read_text())
    assert report["after"]["ece"] <= report["before"]["ece"] + 1e-9
    raw = Segmenter.from_checkpoint(best, precision="fp32")
    cal = Segmenter.from_checkpoint(out, precision="fp32")
    image = np.random.default_rng(3).integers(0, 255, (40, 44, 3), dtype=np.uint8)
    # decisions at the tuned thresholds are the same; probabilities are rescaled per class
    np.testing.assert_array_equal(cal.predict(image), raw.predict(image))
    expected = rescale(torch.from_numpy(raw.predict_proba(image)), temperature, overlapping=True)
    np.testing.assert_allclose(cal.predict_proba(image), expected.numpy(), atol=1e-5)
    # evaluate reports the multilabel calibration at the checkpoint's temperatures
    scores = tmp_path / "scores.json"
    evaluate = ["evaluate", "--checkpoint", str(out), "--data", str(data), "--precision", "fp32"]
    assert main([*evaluate, "--json", str(scores), "--out", str(tmp_path / "ev")]) == 0
    calibration = json.loads(scores.read_text())["calibration"]
    assert calibration["temperature"] == pytest.approx(temperature)
    assert len(calibration["classwise_ece"]) == 2
    # an ONNX export carries them inside its probabilities graph, applied once
    onnx_path = tmp_path / "calibrated.onnx"
    export_model(out, onnx_path, format="onnx")
    from_onnx = Segmenter.from_checkpoint(onnx_path)
    np.testing.assert_allclose(from_onnx.predict_proba(image), expected.numpy(), atol=2e-4)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].shape[1] == 2
