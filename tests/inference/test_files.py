"""Inputs of ``predict``: each file once, under one name, however it is reached."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from PIL import Image

from unet_resnet.cli import main
from unet_resnet.inference.files import expand_inputs


def _images(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name)


def test_a_symlink_back_up_is_walked_once(tmp_path, monkeypatch):
    """A recursive glob through a folder holding a link to its parent wrote 164 masks for 4
    images (Python's glob follows the link until the path is too long); two such links made
    the walk exponential."""
    data = tmp_path / "data"
    _images(data, ["a.png", "b.png"])
    _images(data / "sub", ["c.png", "d.png"])
    os.symlink("..", data / "sub" / "up")
    os.symlink("../..", data / "sub" / "up2")
    monkeypatch.chdir(tmp_path)
    found, missing = expand_inputs(["data/**/*.png"])
    assert [str(p) for p in found] == [
        "data/a.png",
        "data/b.png",
        "data/sub/c.png",
        "data/sub/d.png",
    ]
    assert missing == []


def test_a_file_reached_by_several_paths_is_one_input(tmp_path, monkeypatch):
    data = tmp_path / "data"
    _images(data, ["a.png", "b.png"])
    os.symlink(data, tmp_path / "alias")
    monkeypatch.chdir(tmp_path)
    inputs = ["data", "alias", "data/a.png", "alias/b.png", "data/*.png", str(data)]
    found, _ = expand_inputs(inputs)
    assert [str(p) for p in found] == ["data/a.png", "data/b.png"]  # first names kept


def test_glob_patterns_keep_their_meaning(tmp_path, monkeypatch):
    _images(tmp_path / "d", ["a1.png", "b2.png", "c.jpg"])
    _images(tmp_path / "d" / "x" / "y", ["deep.png"])
    _images(tmp_path / "d" / ".hidden", ["h.png"])
    monkeypatch.chdir(tmp_path)

    def names(pattern):
        return [p.name for p in expand_inputs([pattern])[0]]

    assert names("d/**/*.png") == ["a1.png", "b2.png", "deep.png"]  # ** also matches none
    assert names("**/deep.png") == ["deep.png"]
    assert names("d/[ab]?.png") == ["a1.png", "b2.png"]
    assert names("d/[!a]*.png") == ["b2.png"]
    assert names("d/*.png") == ["a1.png", "b2.png"]
    assert expand_inputs(["d/**/*.tif"]) == ([], ["d/**/*.tif"])


def test_predict_writes_each_image_once(tmp_path, monkeypatch, checkpoint):
    data = tmp_path / "data"
    _images(data, ["a.png", "b.png"])
    os.symlink("..", data / "up")
    monkeypatch.chdir(tmp_path)
    argv = ["predict", "data/**/*.png", "data", "--checkpoint", str(checkpoint), "--out", "out"]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a.png", "b.png"]


# A new input format is one module and one registry entry ------------------------------------
def _grid_format():
    """A made-up format: a text grid of grey values (``NAME.grid``), predicted to a text grid
    of class indices (``NAME_labels.txt``). Everything a format is, in one place."""
    from unet_resnet.inference.formats import FileFormat, OutputPaths

    def outputs(out, stem, request):
        return OutputPaths(out / f"{stem}_labels.txt")

    def predict(segmenter, path, paths, **_):
        grey = np.loadtxt(path, dtype=np.uint8, ndmin=2)
        labels = segmenter.predict(np.repeat(grey[..., None], 3, axis=2))
        np.savetxt(paths.mask, labels, fmt="%d")

    return FileFormat(
        "grid",
        "text grids of grey values",
        recognises=lambda path: path.suffix == ".grid",
        outputs=outputs,
        predict=predict,
        suffixes=(".grid",),
    )


@pytest.fixture
def registry():
    """The format registry, restored (in place) after the test."""
    from unet_resnet.inference import formats

    saved = dict(formats.FORMATS)
    yield formats
    formats.FORMATS.clear()
    formats.FORMATS.update(saved)


def test_a_made_up_format_is_one_registry_entry(tmp_path, registry, checkpoint):
    formats = registry
    formats.register_format(_grid_format())
    assert list(formats.FORMATS)[-2:] == ["grid", "image"]  # asked before the fallback
    data = tmp_path / "in"
    _images(data, ["photo.png"])
    np.savetxt(data / "scan.grid", np.arange(48 * 40).reshape(48, 40) % 256, fmt="%d")
    out = tmp_path / "out"
    argv = ["predict", str(data), "--checkpoint", str(checkpoint), "--out", str(out)]
    assert main([*argv, "--precision", "fp32"]) == 0
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "photo.png",
        "predict_report.json",
        "scan_labels.txt",
    ]
    assert np.loadtxt(out / "scan_labels.txt").shape == (48, 40)


def test_each_input_format_is_decided_once(tmp_path, registry, checkpoint):
    """The plan decides an input's format and carries it: the GeoTIFF test (which opens the
    file) ran three times per input on its way through ``predict``."""
    from unet_resnet.inference.files import plan_predictions, predict_files
    from unet_resnet.inference.segmenter import Segmenter

    formats = registry
    asked = []
    for name, fmt in list(formats.FORMATS.items()):
        spy = (lambda f: lambda path: asked.append((f.name, path.name)) or f.recognises(path))(fmt)
        formats.FORMATS[name] = dataclasses.replace(fmt, recognises=spy)
    data = tmp_path / "in"
    _images(data, ["a.png", "b.png"])
    plan = plan_predictions([str(data)], tmp_path / "out", overlay=True, probabilities=True)
    assert plan.formats == ["image", "image"]
    asked_in_plan = len(asked)
    predict_files(Segmenter.from_checkpoint(checkpoint, precision="fp32"), plan)
    assert len(asked) == asked_in_plan  # nothing re-detected while predicting
    assert {name for _, name in asked} == {"a.png", "b.png"}
    assert len(asked) == 2 * len(formats.FORMATS)  # volume, geotiff, image: once per input
