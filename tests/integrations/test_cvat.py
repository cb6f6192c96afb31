"""The CVAT auto-annotation function, run through cvat-sdk's own driver (``annotate_task``:
label matching by name, shape validation, frame remapping) with a stand-in for the server:
the masks CVAT would store decode to exactly our prediction; polygons when CVAT asks."""

from __future__ import annotations

import importlib
import logging
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw

cvataa = pytest.importorskip("cvat_sdk.auto_annotation")
from cvat_sdk.auto_annotation import driver  # noqa: E402
from cvat_sdk.masks import decode_mask  # noqa: E402

from unet_resnet import Segmenter  # noqa: E402


def _frame(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    canvas = Image.fromarray(rng.integers(0, 60, (64, 80, 3), dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    draw.ellipse((6, 6, 30, 30), fill=(220, 20, 60))
    draw.rectangle((44, 30, 70, 56), fill=(30, 144, 255))
    return canvas


class _Task:
    """What the driver reads from a CVAT task: its labels and its frames; and what it writes."""

    def __init__(self, names, label_type, frames):
        self.labels = [
            SimpleNamespace(id=100 + i, name=n, type=label_type, attributes=[], sublabels=[])
            for i, n in enumerate(names)
        ]
        self.samples = [
            SimpleNamespace(
                frame_index=10 + i,
                frame_name=f"f{i}.png",
                media=SimpleNamespace(load_image=lambda im=im: im),
            )
            for i, im in enumerate(frames)
        ]
        self.uploaded = []

    def dataset(self, client, task_id, *, load_annotations):
        return self

    def client(self):
        def partial_update_annotations(action, task_id, *, patched_labeled_data_request):
            self.uploaded.append((action, task_id, patched_labeled_data_request))

        api = SimpleNamespace(partial_update_annotations=partial_update_annotations)
        return SimpleNamespace(logger=logging.getLogger("cvat"), tasks=SimpleNamespace(api=api))


@pytest.fixture(scope="module")
def function(checkpoint):
    module = importlib.import_module("unet_resnet.integrations.cvat")
    return module.create(checkpoint=str(checkpoint), precision="fp32", tile_size=64)


def _annotate(function, task, monkeypatch, **options):
    monkeypatch.setattr(driver, "TaskDataset", task.dataset)
    driver.annotate_task(task.client(), 7, function, allow_unmatched_labels=True, **options)
    ((action, task_id, request),) = task.uploaded
    assert (action, task_id) == ("create", 7)
    return request.shapes


def test_spec_lists_the_classes_as_masks(function):
    labels = function.spec.labels
    assert [(lab.name, lab.id, lab.type) for lab in labels] == [
        ("disk", 1, "mask"),
        ("square", 2, "mask"),
        ("triangle", 3, "mask"),
    ]


def test_masks_through_the_driver_equal_our_prediction(function, checkpoint, monkeypatch):
    frames = [_frame(0), _frame(1)]
    # The task has two of our classes (and one of its own); label ids are the task's.
    task = _Task(["square", "disk", "person"], "mask", frames)
    shapes = _annotate(function, task, monkeypatch)
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)
    ids = {lab.name: lab.id for lab in task.labels}
    expected = {}
    for sample, frame in zip(task.samples, frames, strict=True):
        labels = seg.predict(np.asarray(frame))
        for index, name in [(1, "disk"), (2, "square")]:
            if (labels == index).sum() >= 4:
                expected[(sample.frame_index, ids[name])] = labels == index
    got = {}
    for shape in shapes:
        assert shape.type.value == "mask" and shape.source == "auto"
        got[(shape.frame, shape.label_id)] = decode_mask(
            shape.points, image_width=80, image_height=64
        )
    assert got.keys() == expected.keys() and got
    for key, mask in expected.items():
        np.testing.assert_array_equal(got[key], mask)


def test_polygons_when_cvat_asks_for_them(function, monkeypatch):
    task = _Task(["disk", "square", "triangle"], "polygon", [_frame(2)])
    shapes = _annotate(function, task, monkeypatch, conv_mask_to_poly=True)
    assert shapes and {s.type.value for s in shapes} == {"polygon"}
    for shape in shapes:
        points = np.asarray(shape.points).reshape(-1, 2)
        assert len(points) >= 3 and (points >= 0).all() and (points <= [80, 64]).all()


def test_missing_checkpoint_is_one_clear_error():
    from unet_resnet.errors import UnetResnetError
    from unet_resnet.integrations.cvat import create

    with pytest.raises(UnetResnetError, match="checkpoint=str:PATH"):
        create()


def test_missing_extra_is_one_error_naming_it(monkeypatch):
    import sys

    from unet_resnet.errors import UnetResnetError

    monkeypatch.setitem(sys.modules, "cvat_sdk.auto_annotation", None)
    monkeypatch.delitem(sys.modules, "unet_resnet.integrations.cvat", raising=False)
    with pytest.raises(UnetResnetError, match=r"unet-resnet\[integrations\]"):
        importlib.import_module("unet_resnet.integrations.cvat")
