"""Reading images and masks in the formats users bring."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from tests.data.fixtures import make_geotiff
from unet_resnet.io import ImageReadError, atomic_path, read_image, read_mask_raw, to_float_image


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_rgb_png_and_jpeg(tmp_path, rng):
    array = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    Image.fromarray(array).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), array)
    Image.fromarray(array).save(tmp_path / "a.jpg")
    assert read_image(tmp_path / "a.jpg").shape == (20, 30, 3)


def test_16bit_grayscale_png(tmp_path, rng):
    array = rng.integers(0, 65536, (20, 30), dtype=np.uint16)
    Image.fromarray(array).save(tmp_path / "ct.png")
    image = read_image(tmp_path / "ct.png")
    assert image.shape == (20, 30, 1) and image.dtype == np.uint16
    np.testing.assert_array_equal(image[..., 0], array)
    scaled = to_float_image(image)
    assert scaled.dtype == np.float32 and scaled.max() <= 1.0
    np.testing.assert_allclose(scaled[..., 0], array / 65535, rtol=1e-6)


@pytest.mark.parametrize("planar", [True, False])
def test_multiband_tiff_any_layout(tmp_path, rng, planar):
    bands = rng.integers(0, 4096, (13, 16, 24), dtype=np.uint16)
    path = tmp_path / "s2.tif"
    if planar:
        tifffile.imwrite(path, bands, planarconfig="separate")
    else:
        tifffile.imwrite(path, np.moveaxis(bands, 0, -1), planarconfig="contig")
    image = read_image(path)
    assert image.shape == (16, 24, 13)
    np.testing.assert_array_equal(image, np.moveaxis(bands, 0, -1))


def test_geotiff_read_with_rasterio(tmp_path, rng):
    bands = rng.integers(0, 10000, (4, 16, 20), dtype=np.uint16)
    path = make_geotiff(tmp_path / "scene.tif", bands)
    np.testing.assert_array_equal(read_image(path), np.moveaxis(bands, 0, -1))


def test_palette_mask_keeps_indices(tmp_path):
    mask = np.array([[0, 1], [2, 255]], dtype=np.uint8)
    img = Image.fromarray(mask, mode="P")
    img.putpalette([10, 20, 30] * 256)
    img.save(tmp_path / "m.png")
    np.testing.assert_array_equal(read_mask_raw(tmp_path / "m.png"), mask)


@pytest.mark.parametrize(
    ("name", "content", "expected"),
    [
        ("missing.png", None, "not found"),
        ("empty.png", b"", "Could not read"),
        ("text.png", b"hello, I am not a PNG", "Could not read"),
        ("bad.tif", b"II*\x00garbage", "Could not read"),
    ],
)
def test_bad_files_name_the_file(tmp_path, name, content, expected):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ImageReadError, match=expected) as info:
        read_image(path)
    assert name in str(info.value)


def test_truncated_png(tmp_path, rng):
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "t.png")
    data = (tmp_path / "t.png").read_bytes()
    (tmp_path / "t.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"t\.png.*truncated"):
        read_image(tmp_path / "t.png")


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with atomic_path(target) as tmp:
        assert tmp.name == ".partial.out.json" and not target.exists()
        tmp.write_text("{}")
    assert target.read_text() == "{}" and not tmp.exists()

    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash mid-write")
    assert target.read_text() == "{}"  # the old complete file is untouched
    assert not tmp.exists()
