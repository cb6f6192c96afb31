"""Training: config resolution, the run folder, exact resume, failures stopped early, DDP."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import tiny_config
from unet_resnet.checkpoint import load_checkpoint
from unet_resnet.cli import main
from unet_resnet.data import make_demo_dataset
from unet_resnet.training import TrainConfig, train
from unet_resnet.training.config_io import load_yaml_config

TINY = [
    "--encoder",
    "resnet18",
    "--encoder-weights",
    "none",
    "--image-size",
    "32",
    "--batch-size",
    "4",
    "--workers",
    "0",
    "--progress",
    "false",
    "--log-images-every",
    "1",
]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), 8, 4, 32, seed=0, n_test=2)


def test_train_cli_writes_a_complete_run_folder(data, tmp_path, capsys):
    out = tmp_path / "run"
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump({"epochs": 5, "lr": 0.01, "loss": "ce_dice", "scheduler": "poly"})
    )
    code = main(
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--config",
            str(config),
            "--epochs",
            "2",
            *TINY,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "best val mIoU" in capsys.readouterr().out

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["epochs"] == 2  # the flag overrides the file
    assert resolved["lr"] == 0.01 and resolved["loss"] == "ce_dice"  # the file overrides defaults
    assert resolved["encoder_weights"] is None and resolved["batch_size"] == 4

    for name in ["best.pt", "last.pt", "last.ckpt"]:
        assert (out / "checkpoints" / name).is_file(), name
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss,val_miou") and len(rows) == 3
    assert (out / "curves.png").stat().st_size > 1000
    events = list((out / "tensorboard").glob("events.out.tfevents.*"))
    assert events

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    assert {"val/miou", "train/loss_epoch", "lr-Adam"} <= set(acc.Tags()["scalars"])
    assert "val/image_truth_prediction" in acc.Tags()["images"]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and 0 <= summary["best_miou"] <= 1

    model, meta = load_checkpoint(out / "checkpoints" / "best.pt")
    assert meta.classes.names == ["background", "disk", "square", "triangle"]
    assert meta.model_config["encoder"] == "resnet18" and meta.model_config["in_channels"] == 3
    assert meta.image_size == 32 and meta.image_dtype == "uint8" and len(meta.mean) == 3
    assert meta.extra["val"]["miou"] == pytest.approx(summary["best_miou"])
    assert model(torch.rand(1, 3, 40, 40)).shape == (1, 4, 40, 40)


def _weights(path):
    return torch.load(path, weights_only=True)["state_dict"]


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_resume_reaches_the_same_result(data, tmp_path, workers):
    """Ctrl-C during epoch 2, resume: the same weights as one uninterrupted run, also with
    DataLoader worker processes (their seeds come from the restored RNG state)."""

    class CtrlC(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                raise KeyboardInterrupt

    # A write after every epoch, so that the interrupted epoch has one to resume from.
    common = dict(
        epochs=3, augment="strong", limit_train_batches=2, checkpoint_every=1, workers=workers
    )
    train(tiny_config(data, tmp_path / "straight", **common))
    stopped = train(tiny_config(data, tmp_path / "resumed", **common), callbacks=[CtrlC()])
    assert stopped.interrupted
    train(tiny_config(data, tmp_path / "resumed", **common, resume="last"))
    a = _weights(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = _weights(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    rows = (tmp_path / "resumed" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]


def test_resume_without_checkpoint_is_a_clear_error(data, tmp_path, capsys):
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "new"), "--resume", *TINY])
    assert code == 2
    assert "Cannot resume" in capsys.readouterr().err


def test_nan_loss_stops_with_the_step_named(tmp_path, capsys):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "masks").mkdir(parents=True)
        for i in range(4):
            image = rng.random((32, 32, 3)).astype(np.float32)
            image[3, 3, 0] = np.nan  # a float TIFF/NPY with a NaN pixel
            np.save(tmp_path / split / "images" / f"{i}.npy", image)
            np.save(tmp_path / split / "masks" / f"{i}.npy", rng.integers(0, 2, (32, 32)))
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--data",
            str(tmp_path),
            "--num-classes",
            "2",
            "--out",
            str(out),
            "--epochs",
            "1",
            *TINY,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "loss became NaN or infinite at epoch 0, global step 0" in err
    assert "Traceback" not in err
    assert not (out / "checkpoints" / "best.pt").exists()


def test_data_problems_stop_before_the_first_epoch(tmp_path, capsys):
    root = make_demo_dataset(tmp_path / "d", 3, 2, 32)
    (root / "train" / "masks" / "0001.png").unlink()
    code = main(["train", "--data", str(root), "--out", str(tmp_path / "run"), *TINY])
    err = capsys.readouterr().err
    assert code == 2
    assert "Image without mask" in err and "0001.png" in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_unknown_yaml_key_and_bad_choice(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochz: 3\n")
    with pytest.raises(Exception, match="Unknown option.*epochz.*Valid keys"):
        load_yaml_config(bad)
    with pytest.raises(
        Exception, match="Invalid optimizer 'rmsprop'. Choose one of: adam, adamw, sgd"
    ):
        TrainConfig(optimizer="rmsprop")


@pytest.mark.parametrize("scheduler", ["cosine", "plateau", "poly", "onecycle", "none"])
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_schedulers_and_optimizers_train(data, tmp_path, scheduler, optimizer):
    result = train(
        tiny_config(
            data,
            tmp_path,
            scheduler=scheduler,
            optimizer=optimizer,
            limit_train_batches=2,
            epochs=2,
        )
    )
    assert result.epochs_completed == 2
    rows = (tmp_path / "metrics.csv").read_text().splitlines()[1:]
    lrs = [float(r.split(",")[6]) for r in rows]
    if scheduler in ("cosine", "poly", "onecycle"):
        assert lrs[-1] < 1e-3  # decayed from the peak
    if scheduler == "none":
        assert lrs == [1e-3, 1e-3]


def test_balanced_class_weights_and_frozen_encoder(data, tmp_path):
    from unet_resnet.training.train import balanced_class_weights

    weights = balanced_class_weights(np.array([900, 50, 50, 0]))
    assert weights[0] < 1 <= weights[1] and weights[3] == 0
    result = train(
        tiny_config(
            data, tmp_path, class_weights="balanced", freeze_encoder_epochs=1, limit_train_batches=2
        )
    )
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["class_weights"]) == 4 and summary["class_weights"][0] < 1
    assert result.epochs_completed == 1


def test_ddp_two_processes_on_cpu(data, tmp_path):
    """2-process DDP (gloo): identical weights on both ranks, metrics over the whole val set."""
    out = tmp_path / "ddp"
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "RANK", "MASTER_"))
    }
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "unet_resnet.cli",
            "train",
            "--data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--accelerator",
            "cpu",
            "--devices",
            "2",
            "--strategy",
            "ddp",
            "--precision",
            "32",
            *TINY,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((out / f"ddp_rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2
    assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]
    # 4 validation images of 32x32, split 2 + 2 across ranks, all counted on each rank.
    assert ranks[0]["val_pixels"] == ranks[1]["val_pixels"] == 4 * 32 * 32


def test_one_precision_vocabulary_and_config_errors():
    from unet_resnet.errors import ConfigError
    from unet_resnet.hardware import resolve_train_precision

    assert TrainConfig(precision="bf16-mixed").precision == "bf16"  # older spelling accepted
    assert TrainConfig(precision="32").precision == "fp32"
    assert resolve_train_precision("fp32") == "32"
    assert resolve_train_precision("bf16") == "bf16-mixed"
    with pytest.raises(ConfigError, match="Invalid precision 'fp8'"):
        TrainConfig(precision="fp8")


def test_config_groups_are_the_constructor_parameters():
    import inspect

    from unet_resnet.training.datamodule import SegmentationDataModule
    from unet_resnet.training.module import SegmentationModule

    config = TrainConfig(data="d")
    data_params = set(inspect.signature(SegmentationDataModule).parameters)
    passed_apart = {"pretrained", "pretrained_stats", "epochs", "options"}
    assert set(config.group("data")) == data_params - passed_apart
    # the layouts' options go in as one mapping (the data module's ``options``)
    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    assert set(config.group("layout")) == set(LAYOUT_OPTIONS)
    module_params = set(inspect.signature(SegmentationModule).parameters)
    assert set(config.group("optim")) <= module_params
    assert set(config.group("model")) == {"encoder", "encoder_weights", "upsampling_method"}


def test_auto_augment_rule():
    from unet_resnet.data.transforms import AUTO_MIN_IMAGES, AUTO_MIN_STEPS, choose_augment

    assert choose_augment(100, 10_000)[0] == "light"  # small dataset
    assert choose_augment(5000, 500)[0] == "light"  # short schedule
    preset, why = choose_augment(AUTO_MIN_IMAGES, AUTO_MIN_STEPS)
    assert preset == "default" and str(AUTO_MIN_STEPS) in why
    assert "images" in choose_augment(10, 10**6)[1]


def test_photometric_jitter_only_for_camera_images():
    from unet_resnet.data.transforms import RandomBrightnessContrast, build_train_transform

    def has_jitter(t) -> bool:
        return any(isinstance(s, RandomBrightnessContrast) for s in t.transforms)

    assert has_jitter(build_train_transform("default", size=32))
    assert not has_jitter(build_train_transform("default", size=32, photometric=False))
    assert not has_jitter(build_train_transform("strong", size=32, photometric=False))


def test_orientation_rule():
    from unet_resnet.data.transforms import choose_orientation

    assert choose_orientation("uint8")[0] == "upright"  # may be a photo of an upright world
    for dtype in ("uint16", "float32", "int16"):  # measurements: microscopy, CT/MR, reflectance
        assert choose_orientation(dtype)[0] == "free"
    orientation, why = choose_orientation("uint8", layout_upright=False)  # overhead, slices
    assert orientation == "free" and "layout" in why


def test_layouts_of_overhead_imagery_and_scans_have_no_up():
    from unet_resnet.data.layouts import LAYOUTS

    assert {name for name, layout in LAYOUTS.items() if not layout.upright} == {"nifti", "raster"}


@pytest.mark.parametrize("preset", ["light", "default"])
def test_free_orientation_flips_top_bottom_too(preset):
    from torchvision import tv_tensors

    from unet_resnet.data.transforms import build_train_transform

    # Each mask pixel holds its source row and column, so where they went after scaling,
    # rotation (up to 15 degrees) and flips is read back from the mask.
    rows = torch.arange(32).view(32, 1).expand(32, 32)
    image = tv_tensors.Image(torch.zeros(1, 32, 32))
    mask = tv_tensors.Mask(rows + 32 * rows.T)
    out_rows = torch.arange(16.0).view(16, 1).expand(16, 16)

    def direction(source: torch.Tensor, out: torch.Tensor) -> bool:
        """Whether ``source`` grows along ``out`` (not flipped)."""
        return bool(((source - source.mean()) * (out - out.mean())).sum() > 0)

    def flips(orientation: str) -> set[tuple[bool, bool]]:
        seen = set()
        transform = build_train_transform(
            preset, size=16, photometric=False, orientation=orientation
        )
        for seed in range(40):
            torch.manual_seed(seed)
            _, out = transform(image, mask)
            valid = out != 255
            if valid.sum() < 8:
                continue
            source = out[valid].float()
            down = direction(source % 32, out_rows[valid])
            right = direction(source // 32, out_rows.T[valid])
            seen.add((down, right))
        return seen

    assert {down for down, _ in flips("upright")} == {True}  # never upside down
    free = flips("free")
    assert {down for down, _ in free} == {True, False} and {r for _, r in free} == {True, False}
    with pytest.raises(ValueError, match="upright or free"):
        build_train_transform(preset, size=16, orientation="auto")


def test_auto_orientation_is_saved_with_its_reason(data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1))  # the demo data: 8-bit RGB PNGs
    text = (out / "config.yaml").read_text()
    assert yaml.safe_load(text)["orientation"] == "upright"
    assert "orientation: auto -> upright" in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["orientation"] == {
        "asked": "auto",
        "chosen": "upright",
        "why": summary["orientation"]["why"],
    }
    assert "8-bit" in summary["orientation"]["why"]


def test_resume_keeps_the_orientation_the_run_started_with(data, tmp_path):
    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1, orientation="free"))
    train(tiny_config(data, out, epochs=2, resume="last"))  # auto would say upright here
    assert yaml.safe_load((out / "config.yaml").read_text())["orientation"] == "free"
    # A run folder from before the option existed trained upright: resuming keeps that.
    config = yaml.safe_load((out / "config.yaml").read_text())
    del config["orientation"]
    (out / "config.yaml").write_text(yaml.safe_dump(config))
    train(tiny_config(data, out, epochs=3, resume="last"))
    assert yaml.safe_load((out / "config.yaml").read_text())["orientation"] == "upright"


def test_auto_augment_is_saved_and_kept_on_resume(data, tmp_path, monkeypatch):
    from unet_resnet.data import transforms

    out = tmp_path / "run"
    train(tiny_config(data, out, epochs=1))
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["augment"] == "light"
    assert "augment: auto -> light" in (out / "config.yaml").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["augment"]["asked"] == "auto" and summary["augment"]["chosen"] == "light"
    # Thresholds that would now pick "default": the resumed run keeps its preset.
    monkeypatch.setattr(transforms, "AUTO_MIN_STEPS", 0)
    monkeypatch.setattr(transforms, "AUTO_MIN_IMAGES", 0)
    train(tiny_config(data, out, epochs=2, resume="last"))
    assert yaml.safe_load((out / "config.yaml").read_text())["augment"] == "light"
    fresh = tmp_path / "fresh"
    train(tiny_config(data, fresh, epochs=1))
    assert yaml.safe_load((fresh / "config.yaml").read_text())["augment"] == "default"


def test_validation_interval_rule():
    from unet_resnet.training.train import validation_interval

    small = dict(n_train=100, train_pixels=256**2, val_pixels=256**2, epochs=30)
    assert validation_interval(n_val=25, **small) == 1  # 8% of training: every epoch
    every = validation_interval(n_val=200, **small)  # 67%: every 7 -> 10 (divides 30)
    assert every == 10 and 30 % every == 0
    big_val_images = dict(small, val_pixels=1024 * 2048)
    assert validation_interval(n_val=25, **big_val_images) > 1
    assert validation_interval(n_val=0, **small) == 1
    # validation dearer than 10 epochs of training, over 8 epochs: the last one only (this
    # searched for a divisor of 8 above 8 for ever and hung the run before its first step)
    few = dict(n_train=32, train_pixels=128**2, n_val=32, val_pixels=200**2, epochs=8)
    assert validation_interval(**few) == 8


def test_checkpoint_cadence_keeps_best_and_last_consistent(data, tmp_path):
    import torch

    out = tmp_path / "run"
    result = train(tiny_config(data, out, epochs=3, checkpoint_every=2))
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["epoch"] == 2  # written after the last epoch (3rd), not only every 2nd
    best = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    assert best["extra"]["epoch"] == result.best_epoch
    assert best["extra"]["val"]["miou"] == pytest.approx(result.best_miou)


def test_resume_checkpoint_auto_cadence_bounds_the_overhead(monkeypatch):
    import torch

    from unet_resnet.training import callbacks

    clock = [0.0]
    monkeypatch.setattr(callbacks.time, "monotonic", lambda: clock[0])

    class FakeTrainer:
        current_epoch, max_epochs, should_stop = 0, 100, False

    cb = callbacks.ResumeCheckpoint("x", "auto")
    trainer = FakeTrainer()
    model = torch.nn.Linear(1000, 1000)  # 4 MB of weights: an estimated write of 48 ms
    cb.on_train_start(trainer, model)
    clock[0] = 0.5
    assert not cb._due(trainer)  # 0.5 s < 20 x 48 ms
    clock[0] = 1.0
    assert cb._due(trainer)
    cb._last_end, cb._last_duration = 0.0, 2.0  # a 2 s write
    clock[0] = 39.0
    assert not cb._due(trainer)  # 39 s < 20 x 2 s
    clock[0] = 40.0
    assert cb._due(trainer)
    clock[0] = 41.0
    trainer.current_epoch = 99  # the last epoch is always written
    cb._last_end = 40.0
    assert cb._due(trainer)
    fixed = callbacks.ResumeCheckpoint("x", 3)
    trainer.current_epoch = 4
    assert not fixed._due(trainer)
    trainer.current_epoch = 5
    assert fixed._due(trainer)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--batch-size", "0", "Invalid --batch-size 0"),
        ("--image-size", "-5", "Invalid --image-size -5"),
        ("--image-size", "abc", "Invalid --image-size 'abc'"),
        ("--epochs", "-1", "Invalid --epochs -1"),
        ("--lr", "nan", "Invalid --lr nan"),
        ("--lr", "0", "Invalid --lr 0"),
        ("--workers", "-1", "Invalid --workers -1"),
        ("--class-weights", "a,b,c,d", "Invalid --class-weights 'a,b,c,d'"),
        ("--class-weights", "1,-2", "Invalid --class-weights"),
        (
            "--encoder",
            "resnet9000",
            "Invalid --encoder: Unknown encoder 'resnet9000'. Choose one of: resnet18",
        ),
        ("--limit-train-batches", "0", "Invalid --limit-train-batches 0"),
        ("--val-every", "x", "Invalid --val-every 'x'"),
        ("--checkpoint-every", "0", "Invalid --checkpoint-every 0"),
    ],
)
def test_bad_flags_are_one_line_errors_naming_the_flag(
    data, tmp_path, capsys, flag, value, message
):
    code = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), flag, value])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overlap": 600, "tile_size": 512}, "overlap must be smaller than the tile"),
        ({"tile_size": 8}, "Invalid tile size 8"),
        ({"batch_size": 0}, "Invalid batch size 0"),
    ],
)
def test_bad_segmenter_options_are_config_errors(kwargs, message):
    from unet_resnet.errors import ConfigError
    from unet_resnet.inference import Segmenter
    from unet_resnet.models import UNetWithResnet50Encoder

    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None)
    with pytest.raises(ConfigError, match=message):
        Segmenter(model, device="cpu", precision="fp32", pack_weights=False, **kwargs)


def test_the_run_is_named_steps_a_test_can_call(data, tmp_path):
    """train() is prepare_run, build_data, build_model, build_trainer, fit, summarise: each
    callable alone (here up to the model, no epoch run)."""
    from unet_resnet.training.train import build_data, build_model, prepare_run

    config = tiny_config(data, tmp_path / "run", class_weights="balanced")
    run_dir, resume = prepare_run(config)
    assert run_dir == tmp_path / "run" and resume is None
    datamodule = build_data(config, run_dir)
    assert datamodule.classes.num_classes == 4 and len(datamodule.train_set) == 8
    module, weights = build_model(config, datamodule)
    assert len(weights) == 4 and module.meta.split == {"layout": "folder"}
    assert module.meta.model_config["encoder"] == "resnet18"
    assert not (run_dir / "config.yaml").exists()  # nothing written before the run starts


def test_init_from_fine_tunes_a_checkpoint(checkpoint, demo_data, tmp_path):
    """--init-from starts from a checkpoint's weights, architecture and normalisation (the
    config's encoder is not used); other classes than the checkpoint's are one clear error."""
    import shutil

    from unet_resnet.errors import ConfigError

    source, source_meta = load_checkpoint(checkpoint)
    config = tiny_config(
        demo_data, tmp_path / "ft", init_from=str(checkpoint), encoder="resnet34", lr=1e-12,
        scheduler="none", limit_train_batches=1, normalization="dataset",
    )  # fmt: skip
    result = train(config)
    tuned, meta = load_checkpoint(result.last_checkpoint)
    assert meta.model_config == source_meta.model_config  # resnet18, as the checkpoint
    assert (meta.mean, meta.std) == (source_meta.mean, source_meta.std)
    first = "encoder.conv1.weight" if "encoder.conv1.weight" in tuned.state_dict() else None
    name = first or next(k for k in tuned.state_dict() if k.endswith("weight"))
    # the fine-tune started from the checkpoint (lr ~0: its weights are still the source's)
    torch.testing.assert_close(
        tuned.state_dict()[name], source.state_dict()[name], atol=1e-6, rtol=0
    )
    other = tmp_path / "other"
    shutil.copytree(demo_data, other)
    names = json.loads((other / "classes.json").read_text())
    names["names"] = ["background", "a", "b", "c"]
    (other / "classes.json").write_text(json.dumps(names))
    with pytest.raises(ConfigError, match="same classes"):
        train(tiny_config(other, tmp_path / "ft2", init_from=str(checkpoint)))
