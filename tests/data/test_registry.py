"""Dataset layouts come from one table: choices everywhere derive from it."""

from __future__ import annotations

import pytest

from unet_resnet.cli import build_parser
from unet_resnet.data import DataError, make_demo_dataset
from unet_resnet.data.registry import (
    LAYOUTS,
    SplitOptions,
    checkable_layouts,
    layout_names,
    open_split,
    register_layout,
)
from unet_resnet.errors import ConfigError
from unet_resnet.training.config import TrainConfig


def _choices(command: str) -> tuple:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return tuple(next(a for a in sub._actions if a.dest == "dataset").choices)


def test_layouts_are_the_choices_of_every_command_and_the_config():
    assert set(layout_names()) >= {"folder", "voc", "pet", "cityscapes", "nifti", "raster"}
    assert _choices("evaluate") == layout_names()
    assert _choices("check-data") == checkable_layouts()
    assert set(checkable_layouts()) == {"folder", "nifti", "raster", "coco"}
    for name in layout_names():
        assert TrainConfig(dataset=name).dataset == name
    with pytest.raises(ConfigError, match="Invalid dataset 'yolo'.*folder"):
        TrainConfig(dataset="yolo")


def test_a_registered_layout_is_usable_everywhere_at_once(tmp_path, monkeypatch):
    root = make_demo_dataset(tmp_path / "d", 2, 1, 32, seed=0)
    monkeypatch.setitem(LAYOUTS, "mirror", LAYOUTS["folder"])  # restored after the test

    @register_layout("mirror", "the folder layout under another name")
    def _open(root, split, options):
        return LAYOUTS["folder"].open(root, split, options)

    assert TrainConfig(dataset="mirror").dataset == "mirror"
    assert "mirror" in _choices("evaluate")
    assert len(open_split(root, "train", "mirror")) == 2


def test_open_split_missing_split_and_unknown_layout(tmp_path):
    root = make_demo_dataset(tmp_path / "d", 2, 1, 32, seed=0, n_test=0)
    assert open_split(root, "test", "folder") is None
    assert len(open_split(root, "val", "folder", SplitOptions())) == 1
    with pytest.raises(DataError, match="Unknown dataset layout 'nope'.*folder"):
        open_split(root, "val", "nope")
