"""Nothing the user did not ask to replace is ever overwritten; everything that comes from
outside is validated and refused with a message naming the field or the file."""

from __future__ import annotations

import errno
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from unet_resnet.cli import main
from unet_resnet.data.classes import ClassInfo, DataError, load_classes
from unet_resnet.errors import WeightsFileError
from unet_resnet.inference.files import plan_outputs


def _png(path, seed=0, size=(40, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path


# Outputs ----------------------------------------------------------------------------------------
def test_output_names_never_collide_with_inputs_or_each_other(tmp_path):
    files = [
        _png(tmp_path / "a" / "x.png"),
        _png(tmp_path / "b" / "x.png"),  # same name, other folder
        _png(tmp_path / "a" / "x.jpg"),  # same stem, other suffix
        _png(tmp_path / "a" / "x_overlay.png"),  # collides with x.png's overlay
    ]
    plans = plan_outputs(files, tmp_path / "a", overlay=True, probabilities=True)
    paths = [p.resolve() for plan in plans for p in plan.paths()]
    assert len(paths) == len(set(paths))  # every output claimed once
    assert not set(paths) & {f.resolve() for f in files}  # no input replaced
    assert plans[0].mask.name == "a_x.png"  # --out is the inputs' folder: prefixed


def test_predict_into_the_input_folder_keeps_every_input(checkpoint, tmp_path, capsys):
    folder = tmp_path / "imgs"
    inputs = [_png(folder / f"{n}.png", seed=i) for i, n in enumerate(["p", "q"])]
    before = {p: p.read_bytes() for p in inputs}
    assert (
        main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(folder)]) == 0
    )
    assert all(p.read_bytes() == data for p, data in before.items())
    assert (folder / "imgs_p.png").is_file() and (folder / "imgs_q.png").is_file()


def test_predict_refuses_to_replace_an_earlier_result(checkpoint, tmp_path, capsys):
    image = _png(tmp_path / "in" / "p.png")
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out)]
    assert main(args) == 0
    first = (out / "p.png").read_bytes()
    (out / "p.png").write_bytes(b"earlier result")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--overwrite" in err and "p.png" in err
    assert (out / "p.png").read_bytes() == b"earlier result"
    assert main([*args, "--overwrite"]) == 0
    assert (out / "p.png").read_bytes() == first


def test_train_never_replaces_an_existing_run_unasked(checkpoint, demo_data, tmp_path, capsys):
    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    (out / "checkpoints" / "best.pt").write_bytes(b"the earlier run's model")
    args = ["train", "--data", str(demo_data), "--out", str(out), "--encoder", "resnet18"]
    assert main([*args, "--epochs", "1"]) == 2
    assert "already holds a training run" in capsys.readouterr().err
    assert (out / "checkpoints" / "best.pt").read_bytes() == b"the earlier run's model"


def test_export_never_replaces_its_checkpoint_or_an_earlier_export(checkpoint, tmp_path, capsys):
    copy = tmp_path / "model.pt"
    shutil.copy(checkpoint, copy)
    before = copy.read_bytes()
    assert main(["export", "--checkpoint", str(copy), "--out", str(copy)]) == 2
    assert "replace the checkpoint" in capsys.readouterr().err
    assert copy.read_bytes() == before
    earlier = tmp_path / "m.onnx"
    earlier.write_bytes(b"an earlier export")
    assert main(["export", "--checkpoint", str(copy), "--out", str(earlier)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert earlier.read_bytes() == b"an earlier export"


def test_stale_partial_files_are_cleaned_up(checkpoint, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".partial.p.png").write_bytes(b"left by a killed run")
    image = _png(tmp_path / "p.png")
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(out)]) == 0
    assert not (out / ".partial.p.png").exists()


# Metadata ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"names": "road"}, "must be a list of class names"),
        ({"names": []}, "'names' is empty"),
        ({"names": ["a", "a"]}, "duplicates"),
        ({"names": ["a", "b"], "colors": [[0, 0, 0], [1, 2]]}, "not three integers 0-255"),
        ({"names": ["a", "b"], "colors": [[0, 0, 0], [1, 2, 300]]}, "not three integers"),
        ({"names": ["a", "b"], "colors": "red"}, "'colors' must be a list"),
        ({"names": ["a", "b"], "ignore_index": None}, "'ignore_index' must be an integer"),
        ({"names": ["a", "b"], "ignore_index": 1}, "is also a class index"),
    ],
)
def test_classes_file_is_validated_naming_the_field(tmp_path, data, message):
    path = tmp_path / "classes.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DataError, match=message) as info:
        load_classes(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda c: c.pop("model_config"), "'model_config' is missing"),
        (lambda c: c.update(classes={"names": ["a", "b", "c"]}), "names 3"),
        (lambda c: c.update(std=[0.2, 0.0, 0.2]), "std must be positive"),
        (lambda c: c.update(mean=[0.5]), "mean has 1 values for 3"),
        (lambda c: c.update(std=[float("nan")] * 3), "non-finite"),
        (lambda c: c.pop("state_dict"), "holds no weights"),
    ],
)
def test_damaged_checkpoint_metadata_is_one_clear_error(checkpoint, tmp_path, damage, message):
    from unet_resnet import Segmenter

    ckpt = torch.load(checkpoint, weights_only=True)
    damage(ckpt)
    path = tmp_path / "damaged.pt"
    torch.save(ckpt, path)
    with pytest.raises(WeightsFileError, match=message):
        Segmenter.from_checkpoint(path)


def test_evaluate_refuses_data_with_other_classes(checkpoint, demo_data, tmp_path, capsys):
    other = tmp_path / "binary"
    shutil.copytree(demo_data, other)
    ClassInfo(["background", "thing"]).save(other / "classes.json")
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(other),
            "--out",
            str(tmp_path / "e"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "the dataset has 2 (background, thing)" in err
    assert not (tmp_path / "e").exists()


def test_environment_faults_are_one_line_errors(checkpoint, tmp_path, capsys, monkeypatch):
    from unet_resnet.inference.formats import image as image_format

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "out" / "p.png"))

    monkeypatch.setattr(image_format, "write_mask_png", full_disk)  # the image format's writer
    image = _png(tmp_path / "p.png")
    code = main(
        ["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "out")]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.strip().count("\n") == 0
    assert "No space left on device" in err and "p.png" in err
