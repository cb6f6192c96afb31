"""Dataset layouts come from one table: choices everywhere derive from it."""

from __future__ import annotations

from dataclasses import replace as dataclasses_replace

import pytest

from tests.cli.test_layout_flags import choices as _choices
from tests.cli.test_layout_flags import flags as _flags
from unet_resnet.cli import build_parser
from unet_resnet.data import DataError, make_demo_dataset
from unet_resnet.data.layouts import (
    LAYOUTS,
    SplitOptions,
    open_split,
    register_layout,
)
from unet_resnet.errors import ConfigError
from unet_resnet.training.config import TrainConfig


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


def test_a_checkpoints_saved_options_are_read_back_unless_a_flag_says_otherwise():
    """The checkpoint stored the slice axis, but prediction and evaluate read along axis 2
    unless the user repeated the flag; the crowd rule was not stored at all."""
    from unet_resnet.data.classes import ClassInfo

    classes = ClassInfo.generic(3)
    volume = {"slice_axis": 0, "context_slices": 1, "intensity": None}
    split = {"layout": "coco", "crowd": "class", "label_field": "kind"}
    read = SplitOptions().for_checkpoint(classes, volume, split=split)
    assert [read.option(n) for n in ("slice_axis", "crowd", "label_field")] == [0, "class", "kind"]
    assert read.context_slices == 1 and read.classes is classes
    given = {"slice_axis": 1, "crowd": None}  # a flag set, and one left unset
    read = SplitOptions().for_checkpoint(classes, volume, split=split, given=given)
    assert (read.option("slice_axis"), read.option("crowd")) == (1, "class")
    old = SplitOptions().for_checkpoint(classes, None, split=None)  # an older checkpoint
    assert (old.option("slice_axis"), old.option("crowd")) == (2, "ignore")


def test_what_a_split_saves_is_its_layouts_saved_options():
    options = SplitOptions(
        layout={"slice_axis": 1, "crowd": "class", "annotations": "a.json", "label_field": "k"}
    )
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
    from unet_resnet.data.layouts import volume_layouts

    assert volume_layouts() == ("nifti",)
    monkeypatch.setitem(LAYOUTS, "stacks", dataclasses_replace(LAYOUTS["nifti"], name="stacks"))
    assert "stacks" in volume_layouts()
    TrainConfig(data="d", dataset="stacks", context_slices=1)  # accepted for the new layout
    with pytest.raises(ConfigError, match="apply to volumes \\(--dataset nifti or stacks\\)"):
        TrainConfig(data="d", dataset="folder", context_slices=1)


@pytest.fixture
def made_up_layout():
    """The made-up layout module registered for one test, the registries restored after."""
    import importlib
    import sys

    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    layouts, options = dict(LAYOUTS), dict(LAYOUT_OPTIONS)
    module = importlib.import_module("tests.data.made_up_layout")
    importlib.reload(module)  # registers, whatever an earlier test did
    yield module
    LAYOUTS.clear(), LAYOUTS.update(layouts)
    LAYOUT_OPTIONS.clear(), LAYOUT_OPTIONS.update(options)
    sys.modules.pop("tests.data.made_up_layout", None)


def test_a_made_up_layout_is_one_module(made_up_layout, tmp_path):
    """Its option gets the flags of every command that reads a split, is read through the
    one options mapping (by open_split and by the training data module), and is saved with
    a checkpoint and read back from it unless a flag says otherwise."""
    from unet_resnet.data.classes import ClassInfo
    from unet_resnet.training.datamodule import SegmentationDataModule

    root = make_demo_dataset(tmp_path / "d", 6, 2, 32, seed=0)
    for command in ("evaluate", "check-data", "cross-validate", "train"):
        assert "--step" in _flags(command), command
    assert "every-nth" in _choices("evaluate")
    assert len(open_split(root, "train", "every-nth")) == 6  # the declared default
    options = SplitOptions(layout={"step": 3})
    assert len(open_split(root, "train", "every-nth", options)) == 2
    saved = options.to_save("every-nth")
    assert saved == {"layout": "every-nth", "step": 3}
    read = SplitOptions().for_checkpoint(ClassInfo.generic(2), None, split=saved)
    assert read.option("step") == 3
    assert (
        SplitOptions()
        .for_checkpoint(ClassInfo.generic(2), None, split=saved, given={"step": 2})
        .option("step")
        == 2
    )
    data = SegmentationDataModule(
        root, dataset="every-nth", options={"step": 2}, image_size=32, check_data=False
    )
    data.setup("fit")
    assert len(data.train_set) == 3 and data.split_options() == {"layout": "every-nth", "step": 2}
    with pytest.raises(DataError, match="Unknown layout option.*'stride'"):
        SplitOptions(layout={"stride": 2})


def test_a_made_up_layouts_option_reaches_train_through_one_mapping(made_up_layout, tmp_path):
    from unet_resnet.training.config_io import config_from_args

    parser = build_parser()
    args = parser.parse_args(["train", "--data", "d", "--dataset", "every-nth", "--step", "3"])
    config = config_from_args(args)
    assert config.group("layout")["step"] == 3 and config.layout_options == {"step": 3}
    (tmp_path / "c.yaml").write_text("dataset: every-nth\nstep: 4\n")
    args = parser.parse_args(["train", "--data", "d", "--config", str(tmp_path / "c.yaml")])
    assert config_from_args(args).group("layout")["step"] == 4
