"""The learning-curve benchmark's pieces: datasets read from wheels, the plain loop, a case."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from benchmarks.quality import datasets
from benchmarks.quality.run import format_rows, run_case


def _fake_skimage_wheel(cache):
    """A wheel-shaped zip with three 512x512 'photographs' where scikit-image keeps them."""
    cache.mkdir(parents=True)
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(cache / "scikit_image-0.26.0-cp311-none-any.whl", "w") as z:
        for k, name in enumerate(["brick", "grass", "gravel"]):
            buffer = io.BytesIO()
            photo = (rng.random((512, 512)) * 60 + 80 * k).astype(np.uint8)
            Image.fromarray(photo).save(buffer, "PNG")
            z.writestr(f"skimage/data/{name}.png", buffer.getvalue())


def test_textures_dataset_from_a_wheel_keeps_train_and_val_pixels_apart(tmp_path):
    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=4, n_val=2)
    classes = json.loads((root / "classes.json").read_text())
    assert classes["names"] == ["brick", "grass", "gravel"]
    assert len(list((root / "train" / "images").iterdir())) == 4
    mask = np.asarray(Image.open(root / "val" / "masks" / "val000.png"))
    image = np.asarray(Image.open(root / "val" / "images" / "val000.png"))
    assert mask.shape == image.shape == (128, 128) and set(np.unique(mask)) <= {0, 1, 2}
    # Each class's pixels come from its own photograph (brightness bands of the fakes).
    for k in np.unique(mask):
        values = image[mask == k]
        assert values.min() >= 80 * k and values.max() < 80 * k + 60


def test_one_case_runs_both_recipes_and_scores_them(tmp_path):
    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=8, n_val=2)
    row = run_case("textures", root, 1, tmp_path / "work", encoder="resnet18")
    for key in ("plain_miou", "ours_best_miou", "ours_last_miou"):
        assert 0 <= row[key] <= 1
    assert row["ours_augment"] == "light" and row["plain_seconds"] > 0
    assert "textures" in format_rows([row])


def test_trust_cross_fits_the_temperature_and_checks_the_quality_estimate(tmp_path):
    """One model per fold (here two: by the image's index parity); each row as the standard
    split's, and the quality estimate's Spearman over every image, each scored out of fold."""
    from benchmarks.quality.trust import format_rows as trust_rows
    from benchmarks.quality.trust import run_dataset
    from unet_resnet.uncertainty import spearman

    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=4, n_val=4)
    parity = (2, lambda stem: int(stem[-1]) % 2)
    row = run_dataset("textures", root, 1, tmp_path / "work", "resnet18", folds=parity)
    # labels never change with the temperature; each half is scored at the other's
    assert row["miou_t1"] == row["miou_calibrated"]
    assert len(row["cross_fitted_temperatures"]) == 2 and row["temperature"] > 0
    assert row["ece_before"] >= 0 and row["ece_after"] >= 0
    assert len(row["quality_estimated"]) == len(row["quality_observed"]) == 4
    assert len(row["quality_estimated_tta"]) == 4 and -1 <= row["quality_spearman_tta"] <= 1
    assert row["quality_crops"] == 4 * 4  # 64-pixel crops of 128-pixel images
    # out of fold: all 8 images, each in one fold's validation split
    assert [f["fold"] for f in row["folds"]] == [0, 1]
    assert row["quality_images_out_of_fold"] == 8
    for fold in (0, 1):
        val = sorted(
            p.stem
            for p in (tmp_path / "work" / f"textures-fold{fold}" / "val" / "images").iterdir()
        )
        assert len(val) == 4 and all(int(stem[-1]) % 2 == fold for stem in val)
    pooled = [v for f in row["folds"] for v in f["quality_estimated"]]
    truth = [v for f in row["folds"] for v in f["quality_observed"]]
    assert row["quality_spearman_out_of_fold"] == pytest.approx(
        spearman(pooled, truth), nan_ok=True
    )
    assert row["quality_observed"] == row["folds"][-1]["quality_observed"]  # the last fold's
    assert "textures" in trust_rows([row])


def test_nuclei_folds_are_the_image_quarters_and_the_last_is_the_standard_split(tmp_path):
    assert [datasets.nuclei_fold(s) for s in ("t0_0", "t0_384", "t256_128", "t384_256")] == [
        0,
        1,
        2,
        3,
    ]
    root = tmp_path / "nuclei"
    for split, stems in (("train", ["t0_0", "t128_256"]), ("val", ["t256_256"])):
        for kind in ("images", "masks"):
            (root / split / kind).mkdir(parents=True)
            for stem in stems:
                (root / split / kind / f"{stem}.png").write_bytes(b"x")
    (root / "classes.json").write_text("{}")
    folds = datasets.FOLDS["nuclei"]
    out = datasets.fold_split(root, folds, 3, tmp_path / "f3")
    assert sorted(p.name for p in (out / "val" / "images").iterdir()) == ["t256_256.png"]
    assert (out / "classes.json").is_file()
    out = datasets.fold_split(root, folds, 1, tmp_path / "f1")
    assert [p.name for p in (out / "val" / "masks").iterdir()] == ["t128_256.png"]
    assert len(list((out / "train" / "images").iterdir())) == 2
    with pytest.raises(ValueError, match="fold 4"):
        datasets.fold_split(root, folds, 4, tmp_path / "f4")


@pytest.mark.slow  # three training runs: make test-slow
def test_active_learning_adds_the_least_trusted_or_random_images(tmp_path, monkeypatch):
    from benchmarks.quality import active

    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=6, n_val=2)
    chosen, by_errors = [], []

    def spy(original, log):
        def spied(checkpoint, pool, count):
            picked = original(checkpoint, pool, count)
            log.append((checkpoint, pool, picked))
            return picked

        return spied

    monkeypatch.setattr(active, "_least_trusted", spy(active._least_trusted, chosen))
    monkeypatch.setattr(active, "_most_errors", spy(active._most_errors, by_errors))
    row = active.run_dataset(
        "textures", root, tmp_path / "work", rounds=2, samples=8, encoder="resnet18", seed=0,
        schedule=(2, 2),
    )  # fmt: skip
    for arm in active.ARMS:
        assert [n for n, _ in row["curves"][arm]] == [2, 4]
        assert row["curves"][arm][0] == row["curves"]["random"][0]  # one shared first model
    assert row["saving"] is None or row["saving"] <= 1
    assert set(row["savings"]) == set(active.ARMS) - {"random"}
    # the review arm took the two unlabelled images its model trusted least
    from unet_resnet import Segmenter
    from unet_resnet.inference.formats.base import image_quality
    from unet_resnet.io import read_image

    ((checkpoint, pool, picked),) = chosen
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    scores = {image: image_quality(segmenter, read_image(image))[2]["quality"] for image, _ in pool}
    assert [image for image, _ in picked] == sorted(scores, key=scores.get)[:2]
    # the errors arm took the two with the most expected wrong pixels (its own model's)
    ((checkpoint, pool, picked),) = by_errors
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    summaries = [image_quality(segmenter, read_image(image))[2] for image, _ in pool]
    errors = {image: s["expected_errors"] for (image, _), s in zip(pool, summaries, strict=True)}
    assert [image for image, _ in picked] == sorted(errors, key=errors.get, reverse=True)[:2]
    active.plot([row], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_several_seeds_make_one_row_of_mean_curves(tmp_path):
    """The curves are the seeds' means; the reach is read off the means (here review reaches
    random's final 0.8 at 4 labels on the mean though seed 1 alone never does)."""
    from benchmarks.quality.active import over_seeds, plot

    def row(seed, review, random):
        curves = {"review": [[2, review[0]], [4, review[1]], [6, review[2]]],
                  "random": [[2, random[0]], [4, random[1]], [6, random[2]]]}  # fmt: skip
        return {"dataset": "d", "pool": 9, "start": 2, "step": 2, "samples_per_round": 8,
                "encoder": "resnet18", "seed": seed, "curves": curves, "seconds": 1.5}  # fmt: skip

    runs = [row(0, (0.5, 0.9, 0.9), (0.5, 0.6, 0.7)), row(1, (0.6, 0.7, 0.8), (0.6, 0.8, 0.9))]
    combined = over_seeds(runs)
    assert combined["seeds"] == [0, 1] and combined["per_seed"] == runs
    assert np.allclose(combined["curves"]["review"], [[2, 0.55], [4, 0.8], [6, 0.85]])
    assert combined["random_final_miou"] == pytest.approx(0.8)
    assert combined["labels_to_reach_random"] == {"review": 4}
    assert combined["savings"]["review"] == pytest.approx(1 / 3)
    # random's mean curve (0.55, 0.7, 0.8) first reaches 0.8 at its last count too
    assert combined["random_first_reach"] == 6
    assert combined["savings_vs_random_first_reach"]["review"] == pytest.approx(1 / 3)
    assert combined["seconds"] == 3.0
    assert over_seeds(runs[:1]) is runs[0]  # one seed: its own row
    runs[1]["curves"]["random"][2][0] = 8
    with pytest.raises(ValueError, match="random"):
        over_seeds(runs)
    runs[1]["curves"]["random"][2][0] = 6
    plot([combined], tmp_path / "curves.png")
    assert (tmp_path / "curves.png").stat().st_size > 1000


def test_a_round_budget_can_grow_with_the_labels():
    from benchmarks.quality.active import round_samples

    assert round_samples(256, 0, 32) == 256  # fixed: the default
    assert round_samples(256, 32, 4) == 256 and round_samples(256, 32, 24) == 768


def test_arms_measured_before_are_read_not_rerun(tmp_path):
    """An earlier results file gives the curves of the run with the same settings (a seed of
    a several-seed row too); arms given that way are taken as they are, nothing trained."""
    from benchmarks.quality.active import earlier_curves, run_dataset

    settings = dict(dataset="d", seed=1, pool=3, start=1, step=1, samples_per_round=8,
                    encoder="resnet18")  # fmt: skip
    mine = {"random": [[1, 0.5], [2, 0.7]], "review": [[1, 0.5], [2, 0.8]]}
    other = {**settings, "seed": 0, "curves": {"random": [[1, 0.1], [2, 0.2]]}}
    results = tmp_path / "earlier.json"
    results.write_text(
        json.dumps({"rows": [{"dataset": "d", "per_seed": [other, {**settings, "curves": mine}]}]})
    )
    assert earlier_curves(results, settings) == mine
    assert earlier_curves(results, {**settings, "samples_per_round": 16}) == {}
    assert earlier_curves(results, {**settings, "samples_per_label": 32}) == {}
    root = tmp_path / "data"
    for kind in ("images", "masks"):
        (root / "train" / kind).mkdir(parents=True)
        for k in range(3):
            (root / "train" / kind / f"i{k}.png").write_bytes(b"x")
    row = run_dataset("d", root, tmp_path / "work", rounds=2, samples=8, encoder="resnet18",
                      seed=1, schedule=(1, 1), arms=["review", "random"], known=mine)  # fmt: skip
    assert row["curves"] == mine and row["labels_to_reach_random"] == {"review": 2}
    flat = {"random": [[1, 0.7], [2, 0.7]], "review": [[1, 0.7], [2, 0.8]]}
    row = run_dataset("d", root, tmp_path / "work", rounds=2, samples=8, encoder="resnet18",
                      seed=1, schedule=(1, 1), arms=["review", "random"], known=flat)  # fmt: skip
    assert row["savings"] == {"review": 0.5}  # reached at the start: no merit of review's
    assert row["random_first_reach"] == 1 and row["savings_vs_random_first_reach"] == {"review": 0}
    assert not (tmp_path / "work").exists()  # nothing trained


def test_the_diverse_rule_weighs_doubt_by_distance_to_what_is_covered():
    """Weighted k-center: doubt alone would take the two near-duplicates (0 and 1); distance
    to what is labelled or already picked sends the second pick elsewhere."""
    from benchmarks.quality.active import weighted_k_center

    candidates = np.array([[1.0, 0.0], [0.95, 0.05], [0.0, 1.0], [0.05, 0.0]])
    covered = np.array([[0.0, 0.0]])
    doubt = np.array([0.9, 0.9, 0.6, 1.0])
    # 0: 0.9 x 1.0 beats 2: 0.6 x 1.0 and 3: 1.0 x 0.05; then 1 is 0.05 from 0: 2 comes next
    assert weighted_k_center(candidates, covered, doubt, 2) == [0, 2]
    assert weighted_k_center(candidates, covered, doubt, 9) == [0, 2, 1, 3]  # at most all


def test_the_typical_rule_takes_doubt_where_the_pool_is_dense_and_uncovered():
    """Doubt alone would take the outlier (8); the rule takes the most doubted image of the
    dense cluster no labelled image covers (1), not of the covered one (5-7, doubt 0.9)."""
    from benchmarks.quality.active import typical_clusters

    dense = [[1, 0], [1.02, 0], [0.98, 0.01], [1, 0.02], [1.01, -0.01]]
    covered_cluster = [[0, 1], [0.02, 1], [0, 0.98]]
    candidates = np.array(dense + covered_cluster + [[-1, -1]], float)
    doubt = np.array([0.2, 0.5, 0.3, 0.4, 0.1, 0.9, 0.9, 0.9, 1.0])
    covered = np.array([[0.01, 1.0]])
    assert typical_clusters(candidates, covered, doubt, 1) == [1]
    everything = typical_clusters(candidates, covered, doubt, 20)  # at most all, each once
    assert sorted(everything) == list(range(9))


@pytest.mark.slow  # an NNCF int8 export in a child process
def test_int8_benchmark_exports_as_a_user_does_and_reads_the_report(tmp_path):
    pytest.importorskip("nncf")
    from benchmarks.quality.int8 import format_rows as int8_rows
    from benchmarks.quality.int8 import run_dataset

    cache = tmp_path / "cache"
    _fake_skimage_wheel(cache)
    root = datasets.prepare("textures", tmp_path / "t", cache, n_train=4, n_val=2)
    row = run_dataset("textures", root, 1, tmp_path / "work", "resnet18")
    assert row["exported"], row.get("message")
    report = json.loads((tmp_path / "work" / "textures" / "int8" / "report.json").read_text())
    assert row["int8_miou"] == report["int8_miou"] and row["validation_images"] == 2
    assert row["target_met"] == (report["drop_points"] <= 0.5 and report["pixel_agreement"] >= 0.99)
    assert "textures" in int8_rows([row])
    refused = {**row, "exported": False, "message": "int8 lost 3.00 mIoU points"}
    assert "refused: int8 lost" in int8_rows([refused])
