"""Dataset layouts come from one table: choices everywhere derive from it."""

from __future__ import annotations

from dataclasses import replace as dataclasses_replace

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


# Layout options: declared once, flags generated, saved in the checkpoint and read back -----
def _flags(command: str) -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    return {flag for action in sub._actions for flag in action.option_strings}


def test_every_command_that_reads_a_split_takes_every_layout_option():
    """--crowd existed for train but not for evaluate or check-data: the flags were copies.
    They are generated from LAYOUT_OPTIONS now, and train's config has each as a field."""
    import dataclasses

    from unet_resnet.data.registry import LAYOUT_OPTIONS

    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for option in LAYOUT_OPTIONS.values():
        assert option.flag in _flags("evaluate") and option.flag in _flags("check-data")
        assert option.flag in _flags("cross-validate") and option.flag in _flags("train")
        assert option.name in fields
    assert "--slice-axis" in _flags("predict")
    for name, layout in LAYOUTS.items():
        assert set(layout.options) <= set(LAYOUT_OPTIONS), name


def test_a_checkpoints_saved_options_are_read_back_unless_a_flag_says_otherwise():
    """The checkpoint stored the slice axis, but prediction and evaluate read along axis 2
    unless the user repeated the flag; the crowd rule was not stored at all."""
    from unet_resnet.data.classes import ClassInfo

    classes = ClassInfo.generic(3)
    volume = {"slice_axis": 0, "context_slices": 1, "intensity": None}
    split = {"layout": "coco", "crowd": "class", "label_field": "kind"}
    read = SplitOptions().for_checkpoint(classes, volume, split=split)
    assert (read.slice_axis, read.crowd, read.label_field) == (0, "class", "kind")
    assert read.context_slices == 1 and read.classes is classes
    given = {"slice_axis": 1, "crowd": None}  # a flag set, and one left unset
    read = SplitOptions().for_checkpoint(classes, volume, split=split, given=given)
    assert (read.slice_axis, read.crowd) == (1, "class")
    old = SplitOptions().for_checkpoint(classes, None, split=None)  # an older checkpoint
    assert (old.slice_axis, old.crowd) == (2, "ignore")


def test_what_a_split_saves_is_its_layouts_saved_options():
    options = SplitOptions(slice_axis=1, crowd="class", annotations="a.json", label_field="k")
    assert options.to_save("coco") == {"layout": "coco", "crowd": "class"}
    assert options.to_save("nifti") == {"layout": "nifti", "slice_axis": 1}
    assert options.to_save("raster") == {"layout": "raster", "label_field": "k"}
    assert options.to_save("folder") == {"layout": "folder"}


def test_volumes_are_predicted_along_the_checkpoints_slice_axis(tmp_path):
    nib = pytest.importorskip("nibabel")
    import numpy as np

    from unet_resnet.data.classes import ClassInfo
    from unet_resnet.inference.files import predict_nifti

    class Recorder:
        classes = ClassInfo.generic(2)
        volume = {"slice_axis": 0}

        def __init__(self):
            self.shapes = []

        def predict(self, image):
            self.shapes.append(image.shape[:2])
            return np.zeros(image.shape[:2], np.uint8)

    data = np.zeros((5, 7, 9), np.int16)
    nib.save(nib.Nifti1Image(data, np.eye(4)), tmp_path / "case.nii.gz")
    seg = Recorder()
    predict_nifti(seg, tmp_path / "case.nii.gz", tmp_path / "out.nii.gz")
    assert seg.shapes == [(7, 9)] * 5  # along axis 0, as trained (was axis 2: 9 x (5, 7))
    seg.shapes.clear()
    predict_nifti(seg, tmp_path / "case.nii.gz", tmp_path / "out2.nii.gz", axis=2)
    assert seg.shapes == [(5, 7)] * 9  # an explicit axis still wins


def test_volume_options_follow_the_layouts_capability(monkeypatch, tmp_path):
    """ "nifti" was tested as a string in four places; a layout says it reads volumes."""
    from unet_resnet.data.registry import volume_layouts

    assert volume_layouts() == ("nifti",)
    monkeypatch.setitem(LAYOUTS, "stacks", dataclasses_replace(LAYOUTS["nifti"], name="stacks"))
    assert "stacks" in volume_layouts()
    TrainConfig(data="d", dataset="stacks", context_slices=1)  # accepted for the new layout
    with pytest.raises(ConfigError, match="apply to volumes \\(--dataset nifti or stacks\\)"):
        TrainConfig(data="d", dataset="folder", context_slices=1)
