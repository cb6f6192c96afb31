"""Vector labels over rasters: a GeoJSON in EPSG:4326 over a GeoTIFF in UTM, rasterised per
window, features read per scene only, and check-data's findings."""

from __future__ import annotations

import json

import numpy as np
import pytest

rasterio = pytest.importorskip("rasterio")
shapely = pytest.importorskip("shapely")
pytest.importorskip("pyogrio")

from rasterio import features  # noqa: E402
from rasterio.transform import from_origin  # noqa: E402
from rasterio.warp import transform_geom  # noqa: E402

from unet_resnet.cli import main  # noqa: E402
from unet_resnet.data.layouts import SplitOptions, check_layout, open_split  # noqa: E402

UTM = "EPSG:32633"
ORIGIN = (500000.0, 5000000.0)  # top-left corner, metres
PIXEL = 10.0
H, W = 96, 128
NAMES = ["background", "building", "field"]


def _box(col0, row0, col1, row1):
    """A rectangle on pixel boundaries, in UTM metres."""
    x0, y0 = ORIGIN[0] + col0 * PIXEL, ORIGIN[1] - row0 * PIXEL
    x1, y1 = ORIGIN[0] + col1 * PIXEL, ORIGIN[1] - row1 * PIXEL
    return shapely.box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1))


def _scene(root, split="train", name="scene"):
    folder = root / split / "images"
    folder.mkdir(parents=True, exist_ok=True)
    data = np.random.default_rng(0).integers(0, 255, (3, H, W), dtype=np.uint8)
    profile = dict(driver="GTiff", width=W, height=H, count=3, dtype="uint8", crs=UTM,
                   transform=from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL))  # fmt: skip
    with rasterio.open(folder / f"{name}.tif", "w", **profile) as dst:
        dst.write(data)
    return folder / f"{name}.tif"


def _features(extra=()):
    shapes = [
        (_box(10, 10, 60, 50), "field"),
        (_box(20, 20, 30, 28), "building"),  # inside the field: smaller, stays on top
        (_box(70, 5, 120, 40), "building"),
        (_box(100, 60, 140, 90), "field"),  # reaches past the scene's right edge
        *extra,
    ]
    return shapes


def _write_geojson(path, shapes, field="kind"):
    items = []
    for i, (geometry, value) in enumerate(shapes):
        geo = transform_geom(UTM, "EPSG:4326", shapely.geometry.mapping(geometry))
        items.append({"type": "Feature", "id": i, "geometry": geo, "properties": {field: value}})
    path.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return path


@pytest.fixture
def vector_data(tmp_path):
    root = tmp_path / "data"
    _scene(root, "train")
    _scene(root, "val")
    (root / "classes.json").write_text(json.dumps({"names": NAMES}))
    labels = _write_geojson(tmp_path / "labels.geojson", _features())
    return root, labels


def _expected_full_scene():
    shapes = sorted(_features(), key=lambda item: -item[0].area)
    return features.rasterize(
        [(shapely.geometry.mapping(g), NAMES.index(v)) for g, v in shapes],
        out_shape=(H, W),
        transform=from_origin(ORIGIN[0], ORIGIN[1], PIXEL, PIXEL),
        fill=0,
        dtype="int32",
    )


def test_windows_rasterise_the_reprojected_labels(vector_data):
    root, labels = vector_data
    options = SplitOptions(image_size=32, layout={"labels": str(labels), "label_field": "kind"})
    dataset = open_split(root, "val", "raster", options)
    expected = _expected_full_scene()
    assert len(dataset) == 12  # a 3 x 4 grid of 32 px windows
    covered = np.full((H, W), -1)
    for index in range(len(dataset)):
        _, top, left = dataset.window_at(index)
        image, mask = dataset.load(index)
        assert image.shape == (32, 32, 3)
        covered[top : top + 32, left : left + 32] = mask
    np.testing.assert_array_equal(covered, expected)
    assert {1, 2} <= set(np.unique(expected))


def test_integer_codes_and_a_geopackage(tmp_path):
    import pyogrio.raw

    root = tmp_path / "data"
    _scene(root)
    (root / "classes.json").write_text(json.dumps({"names": NAMES}))
    shapes = _features()
    path = tmp_path / "labels.gpkg"
    geoms = [g for g, _ in shapes]
    pyogrio.raw.write(
        path, np.array(shapely.to_wkb(geoms), dtype=object),
        [np.array([NAMES.index(v) for _, v in shapes], dtype=np.int32)], ["code"],
        geometry_type="Polygon", crs=UTM, driver="GPKG",
    )  # fmt: skip
    options = SplitOptions(image_size=96, layout={"labels": str(path), "label_field": "code"})
    dataset = open_split(root, "train", "raster", options)
    dataset.mode = "grid"
    mask = np.full((H, W), -1)
    for index in range(len(dataset.grid)):
        _, top, left = dataset.window_at(index)
        window = dataset.load(index)[1]
        mask[top : top + 96, left : left + 96] = window[: H - top, : W - left]
    np.testing.assert_array_equal(mask, _expected_full_scene())


def test_only_the_scenes_features_are_read(tmp_path):
    root = tmp_path / "data"
    _scene(root)
    (root / "classes.json").write_text(json.dumps({"names": NAMES}))
    far = [(_box(5000 + 3 * i, 5000, 5002 + 3 * i, 5002), "building") for i in range(3000)]
    labels = _write_geojson(tmp_path / "many.geojson", _features(far))
    options = SplitOptions(image_size=32, layout={"labels": str(labels), "label_field": "kind"})
    dataset = open_split(root, "train", "raster", options)
    dataset.load(0)
    (scene_labels,) = dataset._scene_labels.values()
    assert dataset.vector_labels.features == 3004
    assert len(scene_labels) == 4  # 3000 features far away never enter memory


def test_check_data_names_vector_problems(tmp_path, capsys):
    root = tmp_path / "data"
    _scene(root)
    (root / "classes.json").write_text(json.dumps({"names": NAMES}))
    bowtie = shapely.Polygon(
        [(ORIGIN[0] + 50, ORIGIN[1] - 50), (ORIGIN[0] + 150, ORIGIN[1] - 150),
         (ORIGIN[0] + 150, ORIGIN[1] - 50), (ORIGIN[0] + 50, ORIGIN[1] - 150)]
    )  # fmt: skip
    extra = [(_box(3000, 3000, 3010, 3010), "field"), (_box(1, 1, 3, 3), "lake"), (bowtie, "field")]
    labels = _write_geojson(tmp_path / "labels.geojson", _features(extra))
    options = SplitOptions(image_size=64, layout={"labels": str(labels), "label_field": "kind"})
    report = check_layout(root, "raster", options, progress=False)
    text = "\n".join(str(p) for p in report.problems)
    assert "values ['lake'] name no class" in text
    assert "1 invalid geometries" in text and "feature ids [6]" in text
    assert "1 of 7 features lie outside every scene" in text and "[4]" in text
    argv = ["check-data", str(root), "--dataset", "raster", "--labels", str(labels), "--quiet"]
    assert main([*argv, "--label-field", "kind"]) == 1
    assert main([*argv, "--label-field", "nope"]) == 1
    assert "has no attribute 'nope'" in capsys.readouterr().out
