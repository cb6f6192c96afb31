"""k-fold cross-validation: folds by case, stable and saved; cross-validate trains each fold
and scores every training case exactly once out of fold."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from unet_resnet.cli import main
from unet_resnet.data.classes import DataError
from unet_resnet.data.folds import case_groups, fold_indices, load_or_make_splits, make_folds
from unet_resnet.data.layouts import open_split
from unet_resnet.errors import ConfigError
from unet_resnet.training import TrainConfig

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def test_folds_partition_the_cases_and_are_stable():
    cases = [f"case_{i:02d}" for i in range(23)]
    folds = make_folds(cases, 5, seed=0)
    assert sorted(c for fold in folds for c in fold) == sorted(cases)
    assert all(not set(a) & set(b) for i, a in enumerate(folds) for b in folds[i + 1 :])
    assert {len(f) for f in folds} <= {4, 5}
    assert make_folds(list(reversed(cases)), 5, seed=0) == folds  # input order does not matter
    assert make_folds(cases, 5, seed=1) != folds
    with pytest.raises(DataError, match="cannot make 5 folds"):
        make_folds(cases[:3], 5)


def test_splits_file_is_written_once_and_checked(tmp_path):
    path = tmp_path / "splits.json"
    cases = [f"c{i}" for i in range(6)]
    first = load_or_make_splits(path, cases, 3)
    assert json.loads(path.read_text())["folds"] == first
    assert load_or_make_splits(path, list(reversed(cases)), 3) == first
    with pytest.raises(DataError, match="other cases"):
        load_or_make_splits(path, [*cases, "c9"], 3)


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("medical", EXAMPLES / "medical" / "run.py")
    medical = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(medical)
    root = tmp_path_factory.mktemp("nifti")
    return medical.make_dataset(root, n_train=4, n_val=1, n_test=1, shape=(32, 32, 6))


def test_slices_of_a_case_never_straddle_folds(volumes, tmp_path):
    dataset = open_split(volumes, "train", "nifti")
    groups = case_groups(dataset)
    assert len(groups) == 4 and sum(len(v) for v in groups.values()) == len(dataset)
    folds = load_or_make_splits(tmp_path / "s.json", list(groups), 2)
    train, val = fold_indices(groups, folds, 0)
    volume_of = {i: dataset.index[i][0] for i in range(len(dataset))}
    assert not {volume_of[i] for i in train} & {volume_of[i] for i in val}
    assert sorted(train + val) == list(range(len(dataset)))


def test_fold_flag_is_checked():
    with pytest.raises(ConfigError, match="--fold 3"):
        TrainConfig(data="d", folds=3, fold=3)


def test_cross_validate_scores_every_case_once_out_of_fold(volumes, tmp_path, capsys):
    out = tmp_path / "cv"
    argv = ["cross-validate", "--data", str(volumes), "--dataset", "nifti", "--out", str(out),
            "--folds", "2", "--encoder", "resnet18", "--encoder-weights", "none", "--epochs", "1",
            "--image-size", "32", "--batch-size", "4", "--workers", "0",
            "--progress", "false"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    splits = json.loads((out / "splits.json").read_text())["folds"]
    for fold in (0, 1):
        summary = json.loads((out / f"fold_{fold}" / "summary.json").read_text())
        assert summary["fold"]["held_out"] == splits[fold]
    scores = json.loads((out / "cv_scores.json").read_text())
    scored = sorted({row["case"] for row in scores["cases"]})
    assert scored == sorted(c for fold in splits for c in fold)  # every case, once
    assert {row["fold"] for row in scores["cases"]} == {0, 1}
    assert scores["per_case"]["organ"]["cases"] == 4
    rows = (out / "cases.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 * 2  # 4 cases x 2 structures
    assert "--checkpoint" in printed and "fold_1" in printed
