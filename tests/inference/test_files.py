"""Inputs of ``predict``: each file once, under one name, however it is reached."""

from __future__ import annotations

import os

import numpy as np
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
