"""The commands' dataset flags come from the layout registry: the layouts are the choices of
every command and the config, and each option a layout declares is a flag of every command
that reads a split."""

from __future__ import annotations

import pytest

from unet_resnet.cli import build_parser
from unet_resnet.data.layouts import LAYOUTS, checkable_layouts, layout_names
from unet_resnet.errors import ConfigError
from unet_resnet.training.config import TrainConfig


def _subparser(command: str):
    parser = build_parser()
    return next(a for a in parser._actions if a.dest == "command").choices[command]


def choices(command: str) -> tuple:
    return tuple(next(a for a in _subparser(command)._actions if a.dest == "dataset").choices)


def flags(command: str) -> set[str]:
    return {flag for action in _subparser(command)._actions for flag in action.option_strings}


def test_layouts_are_the_choices_of_every_command_and_the_config():
    assert set(layout_names()) >= {"folder", "voc", "pet", "cityscapes", "nifti", "raster"}
    assert choices("evaluate") == layout_names()
    assert choices("check-data") == checkable_layouts()
    assert set(checkable_layouts()) == {"folder", "nifti", "raster", "coco"}
    for name in layout_names():
        assert TrainConfig(dataset=name).dataset == name
    with pytest.raises(ConfigError, match="Invalid dataset 'yolo'.*folder"):
        TrainConfig(dataset="yolo")


def test_every_command_that_reads_a_split_takes_every_layout_option():
    """--crowd existed for train but not for evaluate or check-data: the flags were copies.
    They are generated from LAYOUT_OPTIONS now, and train's config has each as a field."""
    import dataclasses

    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for option in LAYOUT_OPTIONS.values():
        assert option.flag in flags("evaluate") and option.flag in flags("check-data")
        assert option.flag in flags("cross-validate") and option.flag in flags("train")
        assert option.name in fields
    assert "--slice-axis" in flags("predict")
    for name, layout in LAYOUTS.items():
        assert set(layout.options) <= set(LAYOUT_OPTIONS), name
