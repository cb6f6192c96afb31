"""Uncertainty maps, the per-image quality estimate and the review queue (#32)."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.fixtures import make_geotiff
from unet_resnet import Segmenter
from unet_resnet.cli import main
from unet_resnet.data.demo import make_demo_sample
from unet_resnet.errors import ConfigError
from unet_resnet.inference.ensemble import Ensemble
from unet_resnet.inference.review import REPORT_FILE, REVIEW_FILE, label_order, review_order
from unet_resnet.models import UNetWithResnet50Encoder
from unet_resnet.uncertainty import (
    QualityMeter,
    disagreement,
    entropy_map,
    image_iou,
    spearman,
)


# The measures ---------------------------------------------------------------------------------
def test_entropy_is_zero_when_sure_and_one_when_uniform():
    sure = torch.zeros(4, 2, 3)
    sure[2] = 1
    assert float(entropy_map(sure).max()) == pytest.approx(0, abs=1e-6)
    uniform = torch.full((4, 2, 3), 0.25)
    assert torch.allclose(entropy_map(uniform), torch.ones(2, 3))
    half = torch.tensor([0.5, 0.5, 0.0, 0.0])[:, None, None]
    assert float(entropy_map(half)) == pytest.approx(0.5)  # log 2 / log 4
    # multilabel: each class a coin; the least sure class decides
    planes = torch.tensor([[[0.0]], [[0.5]], [[1.0]]])
    assert float(entropy_map(planes, overlapping=True)) == pytest.approx(1.0)


def test_disagreement_is_zero_for_equal_views_and_grows_with_their_spread():
    p = torch.softmax(torch.randn(3, 5, 6), 0)
    assert float(disagreement([p, p, p]).max()) == pytest.approx(0, abs=1e-6)
    a, b = torch.zeros(2, 1, 1), torch.zeros(2, 1, 1)
    a[0], b[1] = 1, 1  # two confident views that disagree completely: one bit out of one
    assert float(disagreement([a, b])) == pytest.approx(1.0)
    near = torch.tensor([0.6, 0.4])[:, None, None]
    far = torch.tensor([0.4, 0.6])[:, None, None]
    assert 0 < float(disagreement([near, far])) < float(disagreement([a, b]))


def test_spearman_matches_the_textbook_values():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1)
    # ties share their mean rank: ranks (0, 1.5, 1.5, 3) and (0, 1, 2, 3)
    expected = np.corrcoef([0, 1.5, 1.5, 3], [0, 1, 2, 3])[0, 1]
    assert spearman([1, 2, 2, 3], [5, 6, 7, 8]) == pytest.approx(expected)
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_image_iou_counts_the_classes_mask_or_prediction_hold():
    truth = np.array([[0, 0, 1, 1]])
    labels = np.array([[0, 1, 1, 2]])
    # class 0: 1/2, class 1: 1/3, class 2: 0/1, class 3 nowhere
    assert image_iou(labels, truth, 4) == pytest.approx((0.5 + 1 / 3 + 0) / 3)
    ignored = np.array([[0, 255, 1, 1]])
    assert image_iou(labels, ignored, 4, ignore_index=255) == pytest.approx((1 + 0.5 + 0) / 3)


# The quality estimate --------------------------------------------------------------------------
def _probs(labels: np.ndarray, confidence: float, classes: int = 3) -> torch.Tensor:
    p = torch.full((classes, *labels.shape), (1 - confidence) / (classes - 1))
    p.scatter_(0, torch.from_numpy(labels).long()[None], confidence)
    return p


def test_quality_is_the_expected_iou_one_when_sure():
    labels = np.zeros((8, 8), np.int64)
    labels[2:6, 2:6] = 1
    sure = QualityMeter(3)
    sure.update(_probs(labels, 1.0), labels, torch.zeros(8, 8))
    assert sure.summary()["quality"] == pytest.approx(1.0)
    unsure = QualityMeter(3)
    unsure.update(_probs(labels, 0.6), labels, torch.full((8, 8), 0.5))
    summary = unsure.summary(["bg", "a", "b"])
    assert 0 < summary["quality"] < 1
    # expected IoU of class a: TP 16 x 0.6 over TP + FP 16 x 0.4 + FN 48 x 0.2
    tp, fp, fn = 16 * 0.6, 16 * 0.4, 48 * 0.2
    assert unsure.expected_iou()[1] == pytest.approx(tp / (tp + fp + fn))
    assert math.isnan(unsure.expected_iou()[2])  # b is predicted nowhere: not counted
    assert summary["worst_class"] == "a" and summary["foreground_uncertainty"] == 0.5
    assert "class a" in summary["driver"]


def test_a_class_predicted_nowhere_counts_with_iou_0_weighed_by_its_peak_probability():
    # the true per-image mIoU counts a missed class with IoU 0: so does the estimate, weighed
    # by the chance that it is there (its largest probability), or a missed tumour would make
    # the image look like the most trustworthy one
    labels = np.zeros((8, 8), np.int64)
    labels[2:6, 2:6] = 1
    probs = _probs(labels, 1.0)
    sure = QualityMeter(3)
    sure.update(probs, labels, torch.zeros(8, 8))
    assert sure.summary()["missed_class"] is None and sure.summary()["quality"] == 1.0
    doubt = probs.clone()
    doubt[:, 0, 0] = torch.tensor([0.6, 0.0, 0.4])  # class b nearly there in one pixel
    meter = QualityMeter(3)
    meter.update(doubt, labels, torch.zeros(8, 8))
    ious = meter.expected_iou()
    assert math.isnan(ious[2]) and meter.missed() == pytest.approx([0, 0, 0.4])
    summary = meter.summary(["bg", "a", "b"])
    assert summary["quality"] == pytest.approx((ious[0] + ious[1]) / (2 + 0.4), abs=1e-6)
    assert summary["missed_class"] == "b" and summary["missed_class_probability"] == 0.4
    assert "class b possibly missed (p up to 0.40)" in summary["driver"]
    # a faint peak (under MISSED_FROM: what every class's boundaries produce) counts not
    faint = probs.clone()
    faint[:, 0, 0] = torch.tensor([0.9, 0.0, 0.1])
    low = QualityMeter(3)
    low.update(faint, labels, torch.zeros(8, 8))
    assert low.missed() == pytest.approx([0, 0, 0]) and low.summary()["missed_class"] is None
    assert "missed" not in low.summary()["driver"]
    assert low.summary()["quality"] == pytest.approx(np.nanmean(low.expected_iou()), abs=1e-6)


def test_quality_streamed_in_chunks_equals_one_update_and_skips_nodata(monkeypatch):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, (20, 30))  # class 2 predicted nowhere: its peak is streamed too
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(3, 20, 30))).float(), 0)
    probs[2, 15, 3] = 0.98  # the peak in the second update's rows
    unsure = entropy_map(probs)
    whole = QualityMeter(3)
    whole.update(probs, labels, unsure)
    parts = QualityMeter(3)
    monkeypatch.setattr(QualityMeter, "CHUNK", 7)  # pixel chunks inside one update
    for rows in (slice(0, 9), slice(9, 20)):  # and two updates (two image chunks)
        parts.update(probs[:, rows], labels[rows], unsure[rows])
    np.testing.assert_allclose(parts.expected_iou(), whole.expected_iou(), rtol=1e-9)
    np.testing.assert_allclose(parts.missed(), whole.missed(), rtol=1e-9)
    assert whole.missed()[2] == pytest.approx(0.98)
    a, b = whole.summary(), parts.summary()
    assert a["quality"] == pytest.approx(b["quality"]) and a["uncertainty"] == b["uncertainty"]
    # nodata pixels (label 255) are no class: they change nothing
    padded = np.pad(labels, ((0, 0), (0, 5)), constant_values=255)
    probs_padded = torch.nn.functional.pad(probs, (0, 5), value=0.99)
    extra = QualityMeter(3)
    extra.update(probs_padded, padded, entropy_map(probs_padded))
    np.testing.assert_allclose(extra.expected_iou(), whole.expected_iou(), rtol=1e-9)
    np.testing.assert_allclose(extra.missed(), whole.missed(), rtol=1e-9)


def test_expected_errors_count_the_pixels_the_mask_likely_gets_wrong():
    # the sum over the pixels of 1 - the decided class's probability: streamed, nodata left out
    rng = np.random.default_rng(1)
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(3, 12, 10))).float(), 0)
    labels = probs.argmax(0).numpy()
    labels[0, :4] = 255
    meter = QualityMeter(3)
    meter.update(probs, labels, entropy_map(probs))
    valid = torch.from_numpy(labels != 255)
    expected = float((1 - probs.max(0).values)[valid].sum())
    assert meter.summary()["expected_errors"] == pytest.approx(expected, abs=1e-3)
    sure = QualityMeter(3)
    sure.update(_probs(labels.clip(0, 2), 1.0), labels.clip(0, 2), torch.zeros(12, 10))
    assert sure.summary()["expected_errors"] == 0
    # twice the image, twice the errors; the quality (a mean) stays: a big uncertain image
    # has more to teach than a small one, though both are trusted alike
    double = QualityMeter(3)
    for _ in range(2):
        double.update(probs, labels, entropy_map(probs))
    assert double.summary()["expected_errors"] == pytest.approx(2 * expected, abs=1e-3)
    assert double.summary()["quality"] == pytest.approx(meter.summary()["quality"])
    # multilabel: each class plane's wrong decisions, false positives and false negatives
    planes = torch.tensor([[[0.9, 0.2]], [[0.3, 0.7]]])  # 2 classes x 1 x 2 pixels
    hits = (planes > 0.5).long().numpy()
    many = QualityMeter(2, overlapping=True, background=None)
    many.update(planes, hits, torch.zeros(1, 2))
    assert many.summary()["expected_errors"] == pytest.approx(0.1 + 0.2 + 0.3 + 0.3)


def test_review_order_is_lowest_quality_first():
    quality = {"a.png": {"quality": 0.9}, "b.png": {"quality": 0.2}, "c.png": {"quality": 0.5}}
    assert review_order(quality) == ["b.png", "c.png", "a.png"]


def test_label_order_is_most_expected_errors_first():
    quality = {
        "a.png": {"quality": 0.9, "expected_errors": 40.0},
        "b.png": {"quality": 0.2, "expected_errors": 3.0},  # least trusted, little to teach
        "c.png": {"quality": 0.5, "expected_errors": 40.0},
        "old.png": {"quality": 0.7},  # an earlier release's estimate: label it first
    }
    assert label_order(quality) == ["old.png", "a.png", "c.png", "b.png"]


# The segmenter's maps ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    return [
        UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).eval()
        for _ in range(2)
    ]


def _image(h=64, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_tta_uncertainty_is_the_views_disagreement(models):
    seg = Segmenter(models[0], precision="fp32", uncertainty="tta")
    assert seg.tta  # the views are what it measures
    image = _image()
    probs, unsure = seg.image_prediction(image)
    plain = Segmenter(models[0], precision="fp32")
    views = [
        plain.image_probabilities(image),
        plain.image_probabilities(image[:, ::-1].copy()).flip(-1),
        plain.image_probabilities(image[::-1].copy()).flip(-2),
    ]
    torch.testing.assert_close(probs, sum(views) / 3, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(unsure, disagreement(views), atol=1e-5, rtol=1e-4)
    # the probabilities are what plain TTA gives
    torch.testing.assert_close(probs, seg.image_probabilities(image))


def test_ensemble_uncertainty_is_the_members_disagreement(models):
    seg = Segmenter(Ensemble(models), precision="fp32", uncertainty="ensemble", tile_size=64)
    image = _image(64, 64)
    probs, unsure = seg.image_prediction(image)
    each = [Segmenter(m, precision="fp32").image_probabilities(image) for m in models]
    torch.testing.assert_close(unsure, disagreement(each), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs, sum(each) / 2, atol=1e-5, rtol=1e-4)
    # tiled: the map is blended like the probabilities, one value per pixel in [0, 1]
    probs, unsure = seg.image_prediction(_image(100, 90))
    assert unsure.shape == (100, 90) and 0 <= float(unsure.min()) <= float(unsure.max()) <= 1
    assert float(unsure.max()) > 0


def test_ensemble_uncertainty_needs_an_ensemble(models):
    with pytest.raises(ConfigError, match="several --checkpoint"):
        Segmenter(models[0], uncertainty="ensemble")
    with pytest.raises(ConfigError, match="Unknown uncertainty"):
        Segmenter(models[0], uncertainty="variance")


# Files and the command ------------------------------------------------------------------------
def _inputs(folder, count=3):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    for k in range(count):
        image, _ = make_demo_sample(rng, 64)
        if k == 1:  # noise: the model should trust this one least
            image = rng.integers(0, 256, image.shape, dtype=np.uint8)
        Image.fromarray(image).save(folder / f"img{k}.png")
    return folder


def test_predict_writes_maps_a_report_and_a_review_queue(checkpoint, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in")
    out = tmp_path / "out"
    argv = ["predict", str(inputs), "--checkpoint", str(checkpoint), "--out", str(out)]
    argv += ["--precision", "fp32", "--uncertainty", "entropy", "--review-top", "2"]
    assert main(argv) == 0
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    image = np.asarray(Image.open(inputs / "img0.png"))
    written = np.asarray(Image.open(out / "img0_uncertainty.png"))
    expected = entropy_map(seg.image_probabilities(image)).mul(255).round().numpy()
    assert written.dtype == np.uint8 and written.shape == image.shape[:2]
    assert np.abs(written.astype(int) - expected).max() <= 1
    report = json.loads((out / REPORT_FILE).read_text())
    assert set(report["quality"]) == {str(inputs / f"img{k}.png") for k in range(3)}
    scores = [report["quality"][name]["quality"] for name in report["review_order"]]
    assert scores == sorted(scores)
    assert report["review_order"][0] == str(inputs / "img1.png")  # the noise image
    with open(out / REVIEW_FILE) as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == report["review_order"][:2]
    assert rows[0]["rank"] == "1" and float(rows[0]["quality"]) == scores[0] and rows[0]["driver"]
    first = report["quality"][rows[0]["input"]]
    assert float(rows[0]["missed_class_probability"]) == first["missed_class_probability"]
    # A second run into the folder adds its inputs: the earlier estimates stay.
    more = _inputs(tmp_path / "more", 1)
    (more / "img0.png").rename(more / "extra.png")
    argv2 = ["predict", str(more / "extra.png"), "--checkpoint", str(checkpoint)]
    assert main([*argv2, "--out", str(out), "--precision", "fp32"]) == 0
    merged = json.loads((out / REPORT_FILE).read_text())
    assert set(merged["quality"]) == set(report["quality"]) | {str(more / "extra.png")}
    assert len(merged["review_order"]) == 4
    # the labelling order: the most expected wrong pixels first, over the whole folder
    errors = {name: entry["expected_errors"] for name, entry in merged["quality"].items()}
    assert merged["label_order"] == sorted(errors, key=lambda name: (-errors[name], name))
    assert main([*argv2, "--out", str(out), "--review-top", "3", "--review-for", "label"]) == 2
    assert "exist" in capsys.readouterr().err  # outputs there already: refused, nothing lost
    assert main([*argv2, "--out", str(out), "--overwrite", "--review-top", "3",
                 "--review-for", "label", "--precision", "fp32"]) == 0  # fmt: skip
    assert "most expected wrong pixels" in capsys.readouterr().out
    with open(out / REVIEW_FILE) as f:
        rows = list(csv.DictReader(f))
    assert [r["input"] for r in rows] == merged["label_order"][:3]
    assert [float(r["expected_errors"]) for r in rows] == [errors[r["input"]] for r in rows]


def test_bad_uncertainty_and_review_flags_are_one_clear_error(checkpoint, tmp_path, capsys):
    inputs = _inputs(tmp_path / "in", 1)
    argv = ["predict", str(inputs), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o")]
    assert main([*argv, "--uncertainty", "ensemble"]) == 2
    assert "--checkpoint twice" in capsys.readouterr().err
    assert main([*argv, "--review-top", "0"]) == 2
    assert "--review-top" in capsys.readouterr().err
    with pytest.raises(SystemExit) as refused:  # argparse's choices: one line, no traceback
        main([*argv, "--review-top", "2", "--review-for", "labels"])
    assert refused.value.code == 2 and "--review-for" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before any work


def test_geotiff_uncertainty_is_a_float_geotiff_with_the_scenes_georeference(
    checkpoint, tmp_path, monkeypatch
):
    import rasterio

    data = np.random.default_rng(0).integers(1, 255, (3, 150, 170), dtype=np.uint8)
    data[:, :10, :10] = 0  # nodata corner
    scene = make_geotiff(tmp_path / "scene.tif", data, nodata=0)
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64, uncertainty="tta")
    seen = []
    original = Segmenter._prepare

    def spy(self, image):
        seen.append(image.shape[:2])
        return original(self, image)

    monkeypatch.setattr(Segmenter, "_prepare", spy)
    seg.predict_file(scene, tmp_path / "pred.tif", uncertainty=tmp_path / "u.tif", chunk_size=64)
    # streamed like the labels: every call sees one chunk and its margin, never the scene
    assert seen and max(h * w for h, w in seen) <= (64 + 2 * 64) ** 2
    with rasterio.open(scene) as src, rasterio.open(tmp_path / "u.tif") as u:
        assert u.crs == src.crs and u.transform == src.transform
        assert (u.count, u.dtypes[0], u.width, u.height) == (1, "float32", 170, 150)
        values = u.read(1)
    assert np.isnan(values[:10, :10]).all()
    rest = values[10:, 10:]
    assert np.isfinite(rest).all() and rest.min() >= 0 and rest.max() <= 1 and rest.max() > 0


def test_volume_uncertainty_is_a_nifti_with_the_inputs_affine(tmp_path):
    nib = pytest.importorskip("nibabel")
    from unet_resnet.inference.files import plan_predictions, predict_files

    affine = np.diag([0.8, 0.8, 2.0, 1.0])
    affine[:3, 3] = [10, -5, 3]
    volume = np.random.default_rng(0).integers(0, 255, (40, 48, 3)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "case.nii.gz")
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None, in_channels=1)
    seg = Segmenter(model.eval(), precision="fp32", volume={"slice_axis": 2})
    plan = plan_predictions([str(tmp_path / "case.nii.gz")], tmp_path / "out", uncertainty=True)
    report = predict_files(seg, plan)
    assert not report.failed
    unsure = nib.load(tmp_path / "out" / "case_uncertainty.nii.gz")
    np.testing.assert_allclose(unsure.affine, affine)
    values = unsure.get_fdata()
    assert values.shape == volume.shape and values.min() >= 0 and values.max() <= 1
    # the values are the slices' entropy maps (8-bit steps)
    from unet_resnet.volumes import context_stack, read_volume

    data = read_volume(tmp_path / "case.nii.gz").data
    first = seg.image_probabilities(context_stack(data, 0, 2, 0))
    expected = entropy_map(first).numpy()
    assert np.abs(values[:, :, 0] - expected).max() <= 1 / 255 + 1e-6
    assert 0 <= report.quality[str(tmp_path / "case.nii.gz")]["quality"] <= 1


def test_evaluate_checks_the_quality_estimate_against_the_truth(checkpoint, demo_data, tmp_path):
    argv = ["evaluate", "--checkpoint", str(checkpoint), "--data", str(demo_data)]
    argv += ["--split", "val", "--json", str(tmp_path / "s.json"), "--precision", "fp32"]
    assert main([*argv, "--out", str(tmp_path / "evaluation")]) == 0
    quality = json.loads((tmp_path / "s.json").read_text())["quality"]
    assert quality["images"] == len(quality["estimated"]) == len(quality["observed"]) > 3
    assert quality["spearman"] == pytest.approx(
        spearman(quality["estimated"], quality["observed"]), abs=1e-6
    )
