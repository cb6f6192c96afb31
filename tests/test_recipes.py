"""The three field recipes, reduced: each runs check-data/train/evaluate/predict end to end."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _recipe(name: str):
    spec = importlib.util.spec_from_file_location(f"recipe_{name}", EXAMPLES / name / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_medical_recipe(tmp_path):
    import nibabel as nib

    scores = _recipe("medical").run(tmp_path, quick=True)
    assert {"miou", "mean_dice", "mean_hd95"} <= set(scores)
    assert "hd95" in scores["per_class"]["organ"]
    # Per-case evaluation: one row per case and structure, misses counted, summary per structure.
    rows = (tmp_path / "evaluation" / "cases.csv").read_text().splitlines()
    assert rows[0] == "case,structure,dice,iou,hd95_mm,nsd,outcome"
    cases = {row.split(",")[0] for row in rows[1:]}
    structures = {row.split(",")[1] for row in rows[1:]}
    assert len(rows) - 1 == len(cases) * len(structures) and "organ" in structures
    assert len(scores["cases"]) == len(rows) - 1
    organ = scores["per_case"]["organ"]
    assert organ["cases"] == len(cases)
    assert organ["hits"] + organ["misses"] + organ["false_alarms"] + organ["empty"] == len(cases)
    assert scores["per_class"]["organ"]["hd95"] == pytest.approx(organ["hd95"]["mean"])
    source = next((tmp_path / "data/test/images").glob("*.nii.gz"))
    predicted = tmp_path / "predictions" / source.name
    src, out = nib.load(source), nib.load(predicted)
    assert out.shape == src.shape
    np.testing.assert_allclose(out.affine, src.affine)
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1, 2}
    config = (tmp_path / "run/config.yaml").read_text()
    assert "dataset: nifti" in config and "loss: ce_dice" in config


def test_driving_recipe(tmp_path):
    scores = _recipe("driving").run(tmp_path, quick=True)
    assert len(scores["per_class"]) == 19 and "road" in scores["per_class"]
    assert not math.isnan(scores["per_class"]["road"]["iou"])
    overlays = list((tmp_path / "predictions").glob("*_overlay.png"))
    assert len(overlays) == 1
    config = (tmp_path / "run/config.yaml").read_text()
    assert "- 64\n- 128" in config  # wide crops from "--image-size 64,128"


def test_remote_sensing_recipe(tmp_path):
    import rasterio

    scores = _recipe("remote_sensing").run(tmp_path, quick=True)
    assert set(scores["per_class"]) == {"background", "building", "water", "vegetation"}
    with (
        rasterio.open(tmp_path / "data/test/images/scene_00.tif") as src,
        rasterio.open(tmp_path / "predictions/scene_00.tif") as out,
    ):
        assert out.crs == src.crs and out.transform == src.transform
    geojson = json.loads((tmp_path / "predictions/scene_00.geojson").read_text())
    assert geojson["type"] == "FeatureCollection"
    for feature in geojson["features"][:5]:
        lon, lat = feature["geometry"]["coordinates"][0][0]
        assert 5 < lon < 15 and 40 < lat < 55  # UTM 32N reprojected to WGS84
        assert feature["properties"]["name"] in {"building", "water", "vegetation"}


def test_remote_sensing_recipe_from_vector_labels(tmp_path):
    import pyogrio

    scores = _recipe("remote_sensing").run(tmp_path, quick=True, vector_labels=True)
    assert set(scores["per_class"]) == {"background", "building", "water", "vegetation"}
    assert not list((tmp_path / "data/train/masks").glob("*.tif"))  # labels only as vectors
    info = pyogrio.read_info(tmp_path / "labels.gpkg")
    assert info["features"] > 10 and "32632" in info["crs"]
    assert (tmp_path / "predictions/scene_00.gpkg").is_file()


@pytest.mark.parametrize("name", ["medical", "driving", "remote_sensing"])
def test_recipe_folders_are_complete(name):
    folder = EXAMPLES / name
    assert (folder / "README.md").is_file() and (folder / "config.yaml").is_file()
    import yaml

    from unet_resnet.training.config_io import load_yaml_config

    assert load_yaml_config(folder / "config.yaml") == yaml.safe_load(
        (folder / "config.yaml").read_text()
    )
