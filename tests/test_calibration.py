"""Calibration: ECE/ACE/MCE streamed in bounded memory, a temperature fitted by NLL that
recovers a known one, and temperature scaling that keeps the labels."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unet_resnet.calibration import CalibrationStats, fit_temperature, plot_reliability, rescale


def _overconfident(seed=0, n=40_000, classes=4, true_t=2.5):
    """Labels drawn from softmax(z / true_t), probabilities softmax(z): overconfident."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(classes, n, generator=g) * 3
    labels = torch.multinomial(torch.softmax(z / true_t, 0).T, 1, generator=g)[:, 0]
    return torch.softmax(z, 0), labels


def test_temperature_recovers_the_true_one_and_halves_ece():
    probs, labels = _overconfident()
    t = fit_temperature(probs, labels)
    assert t == pytest.approx(2.5, rel=0.1)
    before = CalibrationStats(4)
    before.update(probs.reshape(4, 200, 200), labels.reshape(200, 200).numpy())
    after = CalibrationStats(4)
    after.update(rescale(probs, t).reshape(4, 200, 200), labels.reshape(200, 200).numpy())
    assert after.ece() <= before.ece() / 2
    assert after.ace() < before.ace() and after.mce() < before.mce()
    assert max(after.classwise_ece()) < max(before.classwise_ece())
    # temperature scaling never changes the arg-max
    assert torch.equal(rescale(probs, t).argmax(0), probs.argmax(0))


def test_streamed_equals_at_once_and_memory_is_bounded():
    probs, labels = _overconfident(1, n=30_000)
    whole = CalibrationStats(4, sample_per_image=100, max_samples=250)
    whole.update(probs, labels.numpy())
    parts = CalibrationStats(4, sample_per_image=100, max_samples=250)
    for p, y in zip(probs.split(10_000, 1), labels.split(10_000), strict=True):
        parts.update(p, y.numpy())
    assert parts.ece() == pytest.approx(whole.ece(), abs=1e-12)
    assert parts.mce() == pytest.approx(whole.mce(), abs=1e-12)
    assert parts.pixels == whole.pixels == 30_000
    assert parts._kept == 250  # the sample stops at its bound
    chunked = CalibrationStats(4, sample_per_image=100, max_samples=250)
    chunked.CHUNK = 999  # an image binned in pieces: the same statistics
    chunked.update(probs, labels.numpy())
    assert chunked.ece() == pytest.approx(whole.ece(), abs=1e-12)
    assert chunked.classwise_ece() == pytest.approx(whole.classwise_ece(), abs=1e-12)


def test_ignored_pixels_are_not_counted():
    probs, labels = _overconfident(2, n=1_000)
    labels = labels.clone()
    labels[:400] = 255
    stats = CalibrationStats(4, ignore_index=255)
    stats.update(probs, labels.numpy())
    assert stats.pixels == 600


def test_a_calibrated_model_scores_near_zero_and_no_pixels_is_nan(tmp_path):
    g = torch.Generator().manual_seed(3)
    probs = torch.softmax(torch.randn(3, 50_000, generator=g) * 2, 0)
    labels = torch.multinomial(probs.T, 1, generator=g)[:, 0]
    stats = CalibrationStats(3)
    stats.update(probs, labels.numpy())
    assert stats.ece() < 0.01 and fit_temperature(probs, labels) == pytest.approx(1, rel=0.05)
    empty = CalibrationStats(3)
    assert (
        np.isnan(empty.ece())
        and np.isnan(empty.ace())
        and fit_temperature(torch.zeros(3, 0), torch.zeros(0, dtype=torch.long)) == 1.0
    )
    plot_reliability(stats, None, tmp_path / "r.png")
    assert (tmp_path / "r.png").stat().st_size > 1000


def test_calibrate_writes_a_checkpoint_that_evaluate_and_predict_apply(
    checkpoint, demo_data, tmp_path
):
    import json

    from unet_resnet import Segmenter
    from unet_resnet.checkpoint import read_meta
    from unet_resnet.cli import main

    out = tmp_path / "calibrated.pt"
    common = ["--data", str(demo_data), "--precision", "fp32"]
    assert main(["calibrate", "--checkpoint", str(checkpoint), *common, "--out", str(out)]) == 0
    temperature = read_meta(out).temperature
    assert temperature is not None and temperature > 0
    report = json.loads(out.with_suffix(".calibration.json").read_text())
    assert report["temperature"] == temperature and report["after"]["ece"] >= 0
    assert report["after"]["ece"] <= report["before"]["ece"] + 1e-9 or temperature < 1.05
    assert out.with_suffix(".reliability.png").is_file()
    # never over the input, nor an earlier result, unasked
    again = ["calibrate", "--checkpoint", str(checkpoint), *common]
    assert main([*again, "--out", str(checkpoint)]) == 2
    assert main([*again, "--out", str(out)]) == 2
    # evaluate reports the calibration; labels (and so mIoU) are the uncalibrated model's
    scores = {}
    for name, ckpt in (("raw", checkpoint), ("cal", out)):
        folder = tmp_path / name
        assert main(["evaluate", "--checkpoint", str(ckpt), *common, "--out", str(folder)]) == 0
        scores[name] = json.loads((folder / "scores.json").read_text())
        assert (folder / "reliability.png").is_file()
    cal, raw = scores["cal"]["calibration"], scores["raw"]["calibration"]
    assert cal["temperature"] == pytest.approx(temperature) and raw["temperature"] == 1.0
    assert cal["ece_uncalibrated"] == pytest.approx(raw["ece"], abs=1e-6)
    assert scores["cal"]["miou"] == pytest.approx(scores["raw"]["miou"], abs=1e-9)
    # every path that loads the checkpoint applies it: probabilities change, labels do not
    image = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    a = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    b = Segmenter.from_checkpoint(out, precision="fp32")
    assert b.temperature == pytest.approx(temperature)
    np.testing.assert_array_equal(a.predict(image), b.predict(image))
    pa, pb = a.predict_proba(image), b.predict_proba(image)
    torch.testing.assert_close(torch.from_numpy(pb), rescale(torch.from_numpy(pa), temperature))


def test_bad_temperatures_are_config_errors():
    from unet_resnet import Segmenter
    from unet_resnet.errors import ConfigError
    from unet_resnet.models import UNetWithResnet50Encoder

    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None)
    for value in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="temperature"):
            Segmenter(model, temperature=value)


def test_train_fits_the_temperature_on_val_and_stores_it_in_best(demo_data, tmp_path):
    import json

    from tests.conftest import tiny_config
    from unet_resnet.checkpoint import read_meta
    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.evaluate import calibrate
    from unet_resnet.training import train

    config = tiny_config(demo_data, tmp_path / "run", image_size=64, epochs=2, calibrate=True)
    result = train(config)
    temperature = read_meta(result.best_checkpoint).temperature
    assert temperature is not None and temperature > 0 and temperature != 1.0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())["calibration"]
    assert summary["temperature"] == pytest.approx(temperature)
    assert summary["ece_after"] <= summary["ece_before"] + 1e-9
    report = json.loads((tmp_path / "run" / "calibration.json").read_text())
    assert report["split"] == "val" and report["temperature"] == pytest.approx(temperature)
    assert (tmp_path / "run" / "reliability.png").is_file()
    # the same fit as `calibrate` on the stored model's val split
    from unet_resnet.data import SegmentationFolder

    segmenter = Segmenter.from_checkpoint(result.best_checkpoint, precision="fp32")
    assert segmenter.temperature == pytest.approx(temperature)
    again = calibrate(segmenter, SegmentationFolder(demo_data, "val"))
    assert again["temperature"] == pytest.approx(temperature, rel=1e-3)
    # --calibrate false (every tiny run of the suite) leaves the checkpoint as it was
    plain = train(tiny_config(demo_data, tmp_path / "plain", epochs=1, limit_train_batches=1))
    assert read_meta(plain.best_checkpoint).temperature is None
    assert not (tmp_path / "plain" / "calibration.json").exists()


def test_per_class_temperatures_are_recovered_for_multilabel_probabilities():
    from unet_resnet.calibration import MultilabelCalibrationStats

    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 200, 200, generator=gen) * 3
    truth_t = torch.tensor([2.0, 0.5])[:, None, None]  # overconfident, underconfident
    planes = (torch.rand(2, 200, 200, generator=gen) < torch.sigmoid(logits / truth_t)).long()
    planes[0, :5] = 255  # ignored pixels of class 0 only
    stats = MultilabelCalibrationStats(2)
    stats.update(torch.sigmoid(logits), planes.numpy())
    fitted = stats.fit_temperature()
    assert fitted[0] == pytest.approx(2.0, rel=0.1) and fitted[1] == pytest.approx(0.5, rel=0.1)
    after = stats.at_temperature(fitted)
    assert after.ece() < stats.at_temperature(1.0).ece() / 2
    assert stats.pixels == 200 * 200  # the most pixels a class counted
