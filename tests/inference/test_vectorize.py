"""Vector output: polygons in the scene's CRS as GeoPackage / FlatGeobuf with class names and
shapely areas, simplification, and the WGS84 GeoJSON beside them."""

from __future__ import annotations

import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
pyogrio = pytest.importorskip("pyogrio")

from rasterio.transform import from_origin  # noqa: E402

from unet_resnet.cli import main  # noqa: E402
from unet_resnet.data import ClassInfo  # noqa: E402
from unet_resnet.inference.vectorize import vectorize_mask  # noqa: E402

UTM = "EPSG:32633"


def _mask(path, labels):
    h, w = labels.shape
    profile = dict(driver="GTiff", width=w, height=h, count=1, dtype="uint8", crs=UTM,
                   transform=from_origin(500000, 5000000, 10, 10))  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(labels.astype(np.uint8), 1)


@pytest.mark.parametrize("suffix", [".gpkg", ".fgb"])
def test_gis_file_in_the_scene_crs_with_names_and_areas(tmp_path, suffix):
    labels = np.zeros((40, 50), np.uint8)
    labels[5:13, 4:14] = 1  # 8 x 10 pixels of 10 m: 8000 m2
    labels[20:35, 20:45] = 2
    _mask(tmp_path / "scene.tif", labels)
    classes = ClassInfo(["background", "building", "field"])
    gis = tmp_path / f"scene{suffix}"
    count = vectorize_mask(
        tmp_path / "scene.tif", tmp_path / "scene.geojson", classes, gis_path=gis
    )
    assert count == 2
    info = pyogrio.read_info(gis)
    assert "32633" in info["crs"]
    _, _, _, fields = pyogrio.raw.read(gis)
    rows = sorted(zip(fields[1], fields[2], fields[3], strict=True))
    assert [(n, a, p) for n, a, p in rows] == [("building", 8000.0, 80), ("field", 37500.0, 375)]
    wgs84 = json.loads((tmp_path / "scene.geojson").read_text())
    lon, lat = wgs84["features"][0]["geometry"]["coordinates"][0][0]
    assert 14 < lon < 16 and 44 < lat < 46  # UTM 33N near 500 km E, 5000 km N


def test_simplify_reduces_vertices_and_keeps_area_close(tmp_path):
    yy, xx = np.mgrid[:80, :80]
    labels = (((yy - 40) ** 2 + (xx - 40) ** 2) < 900).astype(np.uint8)  # a pixelated disk
    _mask(tmp_path / "disk.tif", labels)
    classes = ClassInfo(["background", "pond"])
    vertices = {}
    for tolerance in (None, 15.0):
        gis = tmp_path / f"disk_{tolerance}.gpkg"
        vectorize_mask(tmp_path / "disk.tif", tmp_path / f"d{tolerance}.geojson", classes,
                       gis_path=gis, simplify=tolerance)  # fmt: skip
        _, _, geometry, fields = pyogrio.raw.read(gis)
        import shapely

        shape = shapely.from_wkb(geometry[0])
        vertices[tolerance] = shapely.get_num_coordinates(shape)
        assert fields[2][0] == pytest.approx(labels.sum() * 100, rel=0.05)
    assert vertices[15.0] < vertices[None] / 3


def test_predict_vectorize_cli_writes_both(checkpoint, tmp_path, capsys):
    scene = tmp_path / "scene.tif"
    data = np.random.default_rng(0).integers(0, 255, (3, 64, 64), dtype=np.uint8)
    profile = dict(driver="GTiff", width=64, height=64, count=3, dtype="uint8", crs=UTM,
                   transform=from_origin(500000, 5000000, 10, 10))  # fmt: skip
    with rasterio.open(scene, "w", **profile) as dst:
        dst.write(data)
    out = tmp_path / "pred"
    argv = ["predict", str(scene), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*argv, "--vectorize", "--simplify", "5"]) == 0, capsys.readouterr().err
    assert (out / "scene.geojson").is_file()
    info = pyogrio.read_info(out / "scene.gpkg")
    assert "32633" in info["crs"] and {"class", "name", "area"} <= set(info["fields"])
    assert main([*argv, "--vectorize", "--simplify", "-1", "--overwrite"]) == 2
    assert "--simplify" in capsys.readouterr().err
