"""Every ``train`` flag set to a non-default value runs, with each precision this machine
offers; gradient clipping with every optimizer and precision.

``--gradient-clip`` stopped every mixed-precision run at its first step (the fused Adam told
Lightning it unscales gradients itself) and no test set it: a flag nobody runs is a flag that
can break. The matrix lists each flag once with a value that is not its default, grouped into
runs that can share a dataset; a flag added to ``TrainConfig`` without an entry here fails
:func:`test_the_matrix_names_every_flag`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.data.fixtures import make_multilabel
from unet_resnet.data import make_demo_dataset
from unet_resnet.training import TrainConfig, train

ROOT = Path(__file__).resolve().parents[2]
#: Both run on every CPU (bf16 natively or emulated). bf16 (mixed precision, where clipping
#: crashed) runs in `make test`; fp32, every other run's precision, in `make test-slow`.
PRECISIONS = (pytest.param("fp32", marks=pytest.mark.slow), "bf16")

#: One run on the folder layout (multiclass) with all of these at once.
FOLDER = {
    "image_size": "32,48",
    "augment": "strong",
    "orientation": "free",
    "normalization": "dataset",
    "ignore_index": 250,
    "check_data": False,
    "workers": 1,
    "folds": 2,
    "fold": 1,
    "splits": "{tmp}/splits.json",
    "encoder": "resnet18",
    "encoder_weights": "none",
    "upsampling_method": "bilinear",
    "freeze_encoder_epochs": 1,
    "epochs": 2,
    "batch_size": 2,
    "lr": 0.002,  # 0.01 diverged at the unfreezing in bf16 now and then, alone or not
    "optimizer": "sgd",
    "weight_decay": 1e-4,
    "momentum": 0.8,
    "scheduler": "onecycle",
    "warmup_epochs": 0.5,
    "loss": "focal",
    "class_weights": "balanced",
    "calibrate": False,
    "accumulate_grad_batches": 2,
    "gradient_clip": 0.5,
    "early_stopping_patience": 3,
    "channels_last": False,
    "gemm_convolutions": False,
    "keep_freed_memory": False,
    "deterministic": True,
    "accelerator": "cpu",
    "devices": "1",
    "strategy": "ddp",
    "seed": 3,
    "overwrite": True,
    "max_minutes": 30.0,
    "limit_train_batches": 2,
    "limit_val_batches": 0.5,
    "val_every": 1,
    "checkpoint_every": 1,
    "log_images_every": 1,
    "logger": "csv,mlflow",
    "experiment_name": "matrix",
    "tracking_uri": "{uri}",
    "progress": False,
}
#: The same folder run, continued: resume.
RESUME = {"resume": "last", "epochs": 3}
#: Runs on other layouts or tasks, with the flags only they take.
OTHER = {
    "multilabel": {"task": "multilabel", "thresholds": "tune", "num_classes": 2},
    "coco": {"dataset": "coco", "annotations": "{root}/train/_annotations.coco.json",
             "crowd": "class"},
    "nifti": {"dataset": "nifti", "slice_axis": 1, "foreground_oversampling": 0.5,
              "context_slices": 1, "modality": "ct", "target_spacing": 2.0},
    "raster": {"dataset": "raster", "samples_per_epoch": 4, "labels": "{labels}",
               "label_field": "kind"},
}  # fmt: skip
#: Flags no run here sets, and why.
NOT_RUN = {
    "data": "every run names its dataset",
    "out": "every run names its folder",
    "precision": "the parameter of every run",
    "num_nodes": "needs several machines",
    "layout_options": "holds plug-in layouts' options (tests/data/test_registry.py)",
    "init_from": "needs a trained checkpoint (tests/training/test_train.py, fine-tuning)",
}


def test_the_matrix_names_every_flag():
    named = set(FOLDER) | set(RESUME) | set(NOT_RUN)
    for flags in OTHER.values():
        named |= set(flags)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert fields - named == set(), "give each new flag a non-default value in the matrix"
    defaults = TrainConfig()
    for name, value in [*FOLDER.items(), *RESUME.items()] + [
        item for flags in OTHER.values() for item in flags.items()
    ]:
        assert value != getattr(defaults, name), f"{name}: {value!r} is its default"


def _fill(flags: dict, **values) -> dict:
    return {k: v.format(**values) if isinstance(v, str) else v for k, v in flags.items()}


def _steps_ran(run: Path) -> int:
    rows = (run / "metrics.csv").read_text().splitlines()
    return len(rows) - 1


@pytest.fixture
def own_process_group(monkeypatch):
    """``--strategy ddp`` in this process (one device): Lightning sets MASTER_PORT and the
    like in os.environ and leaves a process group; later multi-process tests must not
    inherit either (their rank 0 could not bind the port and the other rank waited)."""
    import os

    import torch.distributed as dist

    saved = dict(os.environ)
    yield
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    os.environ.clear()
    os.environ.update(saved)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.usefixtures("own_process_group")
def test_every_folder_flag_at_once_then_resumed(tmp_path, precision, monkeypatch, request):
    # Late in `make test`'s one long process (never alone, nor after either half of the suite
    # before it) this run's loss became NaN at its second epoch; it runs where nothing ran.
    from tests.conftest import elsewhere

    if elsewhere(request):
        return
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    data = make_demo_dataset(tmp_path / "data", 8, 2, 48, seed=0)
    values = {"tmp": tmp_path, "uri": (tmp_path / "mlruns").as_uri()}
    flags = _fill(FOLDER, **values)
    run = tmp_path / "run"
    result = train(TrainConfig(data=str(data), out=str(run), precision=precision, **flags))
    assert result.epochs_completed == 2 and result.best_checkpoint.is_file()
    assert _steps_ran(run) == 2
    resumed = {**flags, "overwrite": False, **RESUME}
    result = train(TrainConfig(data=str(data), out=str(run), precision=precision, **resumed))
    assert result.epochs_completed == 3 and _steps_ran(run) == 3


def _coco(root: Path) -> dict:
    from tests.data.test_coco import _write_split

    for split in ("train", "val"):
        _write_split(root / split, root / split / "_annotations.coco.json")
    return {}


def _nifti(root: Path) -> dict:
    spec = importlib.util.spec_from_file_location("medical", ROOT / "examples/medical/run.py")
    medical = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(medical)
    medical.make_dataset(root, n_train=2, n_val=1, n_test=1, shape=(32, 32, 6))
    return {}


def _raster(root: Path) -> dict:
    pytest.importorskip("rasterio")
    pytest.importorskip("pyogrio")
    from tests.data.test_vector_labels import NAMES, _features, _scene, _write_geojson

    _scene(root, "train")
    _scene(root, "val")
    (root / "classes.json").write_text(json.dumps({"names": NAMES}))
    return {"labels": _write_geojson(root.parent / "labels.geojson", _features())}


def _multilabel(root: Path) -> dict:
    make_multilabel(root, np.random.default_rng(0), n_train=4, n_val=2)
    return {}


MAKERS = {"multilabel": _multilabel, "coco": _coco, "nifti": _nifti, "raster": _raster}


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("layout", sorted(OTHER))
def test_each_layouts_own_flags(tmp_path, layout, precision):
    if layout in ("coco", "nifti", "raster"):
        pytest.importorskip(
            {"coco": "pycocotools", "nifti": "nibabel", "raster": "rasterio"}[layout]
        )
    root = tmp_path / "data"
    values = MAKERS[layout](root)
    flags = _fill(OTHER[layout], root=root, **values)
    run = tmp_path / "run"
    config = TrainConfig(
        data=str(root), out=str(run), precision=precision, encoder="resnet18",
        encoder_weights=None, image_size=32, batch_size=2, workers=0, progress=False,
        epochs=1, limit_train_batches=1, log_images_every=0, **flags,
    )  # fmt: skip
    result = train(config)
    assert result.epochs_completed == 1 and result.best_checkpoint.is_file()
    # what reading the splits needs is saved with the model, for evaluate and cross-validate
    from unet_resnet.checkpoint import read_meta
    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    meta = read_meta(result.best_checkpoint)
    saved = {k: v for k, v in flags.items() if k in LAYOUT_OPTIONS and LAYOUT_OPTIONS[k].saved}
    assert meta.split == {"layout": flags.get("dataset", "folder"), **saved}
    # georeferenced scenes (10 m pixels in UTM) record their ground resolution, for GIS tools
    assert meta.resolution_cm == (1000.0 if layout == "raster" else None)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd"])
def test_gradient_clipping_with_every_optimizer_and_precision(tmp_path, optimizer, precision):
    """Clipping runs where it crashed (fused Adam under mixed precision); with SGD, whose
    step is the gradient itself, it also shows it clips: the weights move far less."""
    from tests.conftest import tiny_config

    data = make_demo_dataset(tmp_path / "data", 4, 2, 32, seed=0)
    common = dict(
        optimizer=optimizer, precision=precision, limit_train_batches=1, scheduler="none",
        log_images_every=0, momentum=0.0,
    )  # fmt: skip
    clipped = train(tiny_config(data, tmp_path / "clipped", gradient_clip=1e-3, lr=0.1, **common))
    assert clipped.epochs_completed == 1 and clipped.last_checkpoint.is_file()
    if optimizer != "sgd":
        return
    start = train(tiny_config(data, tmp_path / "start", lr=1e-12, **common))  # as drawn
    free = train(tiny_config(data, tmp_path / "free", lr=0.1, **common))
    moved = {
        name: _distance(run.last_checkpoint, start.last_checkpoint)
        for name, run in (("clipped", clipped), ("free", free))
    }
    assert 0 < moved["clipped"] < moved["free"] / 10


def _distance(a: Path, b: Path) -> float:
    """Summed absolute difference of two checkpoints' parameters (not BatchNorm's running
    statistics, which move with any forward pass in training mode)."""
    from unet_resnet.checkpoint import load_checkpoint

    (ma, _), (mb, _) = load_checkpoint(a), load_checkpoint(b)
    pb = dict(mb.named_parameters())
    return sum(float((p - pb[name]).abs().sum()) for name, p in ma.named_parameters())
