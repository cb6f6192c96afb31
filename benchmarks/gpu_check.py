"""The prepared device check: correctness, speed and memory on a CUDA GPU, as one command.

    make gpu-check                     # or: PYTHONPATH=. python3 benchmarks/gpu_check.py
    python3 benchmarks/gpu_check.py --quick --device cpu --out /tmp/check.json   # a dry run

It needs only what a GPU machine with PyTorch already has (torch, lightning, torchmetrics,
timm, onnxruntime; no network) and runs from the source tree. Each section is one object in
the JSON, with ``ok`` and its figures; the file is rewritten after every section, so a run
that is killed still reports what it finished. Sections (in the order they run):

- ``A_environment``: the GPU, its device class and ``auto`` precision, the bf16 matmul peak.
- ``C_training``: 30 steps on a fixed batch halve the loss in bf16 and fp16; one fp32 step
  (TF32 off) matches the CPU's; ``train()`` for 3 epochs with ``gradient_clip``; resume
  exactness (reported); a frozen encoder and clipping under the default precision.
- ``B_inference``: the trained model against the CPU in fp32: fp32 without TF32 within 1e-4,
  bf16 and fp16 argmax agreement >= 0.995, no NaN, TTA and a 2-model ensemble as on the CPU,
  host-to-device copies per tiled image, and ``predict`` / ``evaluate`` with default flags.
- ``D_speed``: our training step against plain PyTorch (channels_last, autocast bf16, fused
  Adam) at 512x512, batch 8 and 16, as a fraction of the measured peak; a whole ``train``
  epoch against the isolated step; the data pipeline alone; prediction against plain
  autocast at batch 1 and 8; a 4096x4096 image in megapixels/s; peak memory.
- ``E_suite``: the inference and training tests of the suite, run on this machine (their
  ``Segmenter``\\ s pick CUDA by default).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from the source tree
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

#: Sizes of a full run on a GPU and of a ``--quick`` dry run (on a CPU, in the tests).
FULL = {"image": 256, "speed": 512, "batches": (8, 16), "big": 4096, "steps": 30, "epochs": 6}
QUICK = {"image": 64, "speed": 64, "batches": (2,), "big": 256, "steps": 30, "epochs": 4}


class Check:
    """The run's state: its device, sizes, work folder and results (written after each
    section)."""

    def __init__(self, device: str, quick: bool, out: Path, work: Path) -> None:
        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"
        self.sizes = QUICK if quick else FULL
        self.quick = quick
        self.out = out
        self.work = work
        self.results: dict[str, Any] = {}
        self.checkpoint: Path | None = None
        self.data: Path | None = None
        self.encoder = "resnet18" if quick else "resnet50"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def seconds(self, fn: Callable[[], Any], reps: int, warmup: int = 2) -> float:
        for _ in range(warmup):
            fn()
        self.sync()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    def write(self) -> None:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.out.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.results, indent=1, default=str) + "\n")
        os.replace(tmp, self.out)


@contextlib.contextmanager
def exact_fp32():
    """TF32 off for matrix products and convolutions inside the block."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _peak_tflops(check: Check, dtype=torch.bfloat16) -> float:
    n = 8192 if check.cuda and not check.quick else 1024
    a = torch.randn(n, n, device=check.device, dtype=dtype)
    b = torch.randn(n, n, device=check.device, dtype=dtype)
    seconds = check.seconds(lambda: a @ b, reps=10 if check.cuda else 3)
    return 2 * n**3 / seconds / 1e12


# Sections -------------------------------------------------------------------------------
def environment(check: Check) -> dict[str, Any]:
    from unet_resnet.hardware import auto_precision, device_class

    cls = device_class(check.device)
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "device": str(check.device),
        "device_class": cls.name,
        "auto_precision": auto_precision(check.device),
        "why": cls.why,
        "python": sys.version.split()[0],
    }
    if check.cuda:
        props = torch.cuda.get_device_properties(check.device)
        info.update(
            gpu=props.name,
            capability=list(torch.cuda.get_device_capability(check.device)),
            memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            cuda=torch.version.cuda,
            cudnn=torch.backends.cudnn.version(),
        )
    info["bf16_peak_tflops"] = round(_peak_tflops(check), 1)
    info["ok"] = True
    return info


def _model(check: Check, classes: int = 4):
    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    return UNetWithResnet50Encoder(classes, encoder=check.encoder, encoder_weights=None)


def _fixed_batch(check: Check, size: int, batch: int, classes: int = 4):
    """A learnable fixed batch: the class of each pixel is which quadrant-ish shape it is in."""
    g = torch.Generator().manual_seed(0)
    y = torch.zeros(batch, size, size, dtype=torch.long)
    for i in range(batch):
        for c in range(1, classes):
            top, left = torch.randint(0, size // 2, (2,), generator=g).tolist()
            y[i, top : top + size // 3, left : left + size // 3] = c
    colours = torch.rand(classes, 3, generator=g)
    x = colours[y].permute(0, 3, 1, 2) + 0.02 * torch.randn(batch, 3, size, size, generator=g)
    return x, y


def _loss_drop(check: Check, precision: str) -> dict[str, float]:
    """30 steps of our training recipe on one fixed batch: the loss's first and last value."""
    import torch.nn.functional as F

    from unet_resnet.accel.optim import Adam

    model = _model(check).to(check.device).to(memory_format=torch.channels_last).train()
    x, y = _fixed_batch(check, check.sizes["image"] // 2, 4)
    x = x.to(check.device).contiguous(memory_format=torch.channels_last)
    y = y.to(check.device)
    optimizer = Adam(model.parameters(), lr=3e-3, fused=True)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    scaler = torch.amp.GradScaler(check.device.type, enabled=precision == "fp16")
    losses = []
    for _ in range(check.sizes["steps"]):
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(check.device.type, dtype=dtype):
            loss = F.cross_entropy(model(x).float(), y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # clipping after unscaling
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.detach()))
    return {"first": losses[0], "last": losses[-1], "halved": losses[-1] <= losses[0] / 2}


def _step_matches_cpu(check: Check) -> dict[str, float]:
    """One fp32 SGD step on the GPU (TF32 off) against the same step on the CPU."""
    import torch.nn.functional as F

    x, y = _fixed_batch(check, 64, 2)
    results = []
    for where in (torch.device("cpu"), check.device):
        model = _model(check).to(where).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        loss = F.cross_entropy(model(x.to(where)), y.to(where))
        loss.backward()
        optimizer.step()
        results.append((float(loss), [p.detach().cpu() for p in model.parameters()]))
    (cpu_loss, cpu_params), (dev_loss, dev_params) = results
    worst = max(float((a - b).abs().max()) for a, b in zip(cpu_params, dev_params, strict=True))
    scale = max(float(p.abs().max()) for p in cpu_params)
    return {
        "loss_cpu": cpu_loss,
        "loss_device": dev_loss,
        "loss_relative_difference": abs(cpu_loss - dev_loss) / abs(cpu_loss),
        "weights_max_difference": worst,
        "weights_max_relative": worst / scale,
        "matches": abs(cpu_loss - dev_loss) / abs(cpu_loss) < 1e-4 and worst / scale < 1e-4,
    }


def _config(check: Check, out: Path, **overrides):
    from unet_resnet.training import TrainConfig

    values = {
        "data": str(check.data),
        "out": str(out),
        "encoder": check.encoder,
        "encoder_weights": None,
        "image_size": check.sizes["image"],
        "batch_size": 8,
        "epochs": check.sizes["epochs"],
        "lr": 3e-3,
        "progress": False,
        "log_images_every": 0,
        "accelerator": "gpu" if check.cuda else "cpu",
        "devices": "1",
        **overrides,
    }
    return TrainConfig(**values)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    from unet_resnet.checkpoint import load_checkpoint

    model, _ = load_checkpoint(path)
    return {k: v.float() for k, v in model.state_dict().items()}


def training(check: Check) -> dict[str, Any]:
    from unet_resnet.data import make_demo_dataset
    from unet_resnet.training import train

    size = check.sizes["image"]
    check.data = make_demo_dataset(check.work / "data", 64, 8, size, seed=0, n_test=2)
    result: dict[str, Any] = {}
    for precision in ("bf16", "fp16") if check.cuda else ("bf16",):
        result[f"fixed_batch_{precision}"] = _loss_drop(check, precision)
    with exact_fp32():
        result["fp32_step_vs_cpu"] = _step_matches_cpu(check)
    start = time.perf_counter()
    run = train(_config(check, check.work / "run", gradient_clip=1.0, freeze_encoder_epochs=1))
    result["train_clipped_frozen"] = {
        "epochs": run.epochs_completed,
        "precision": run.precision,
        "best_miou": run.best_miou,
        "seconds": round(time.perf_counter() - start, 1),
    }
    check.checkpoint = run.best_checkpoint
    result["resume"] = _resume_exactness(check)  # reported, not required
    result["ok"] = bool(
        all(v["halved"] for k, v in result.items() if k.startswith("fixed_batch_"))
        and result["fp32_step_vs_cpu"]["matches"]
        and run.epochs_completed == check.sizes["epochs"]
        and run.best_checkpoint.is_file()
    )
    return result


def _resume_exactness(check: Check) -> dict[str, Any]:
    """Ctrl-C during epoch 2 of 3 and resume, against the same run uninterrupted (both with
    ``deterministic``): the largest weight difference. Bitwise on CPUs (a test says so);
    reported here for the GPU."""
    import lightning as L

    from unet_resnet.training import train

    class CtrlC(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if trainer.current_epoch == 1 and batch_idx == 1:
                raise KeyboardInterrupt

    common = dict(epochs=3, limit_train_batches=3, checkpoint_every=1, deterministic=True)
    train(_config(check, check.work / "straight", **common))
    train(_config(check, check.work / "resumed", **common), callbacks=[CtrlC()])
    train(_config(check, check.work / "resumed", **common, resume="last"))
    a = _weights(check.work / "straight" / "checkpoints" / "last.pt")
    b = _weights(check.work / "resumed" / "checkpoints" / "last.pt")
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    return {"max_weight_difference": worst, "bitwise": worst == 0.0}


def _image(check: Check, size: int, seed: int = 0) -> np.ndarray:
    from unet_resnet.data.demo import make_demo_sample

    return make_demo_sample(np.random.default_rng(seed), size)[0]


def _agreement(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.argmax(0) == b.argmax(0)).mean())


def inference(check: Check) -> dict[str, Any]:
    from unet_resnet.inference import Segmenter

    assert check.checkpoint is not None, "the training section made no checkpoint"
    ckpt = str(check.checkpoint)
    image = _image(check, check.sizes["image"])
    cpu = Segmenter.from_checkpoint(ckpt, device="cpu", precision="fp32", pack_weights=False)
    reference = cpu.predict_proba(image)
    result: dict[str, Any] = {}
    default = Segmenter.from_checkpoint(ckpt)  # device and precision "auto": crashed on CUDA
    result["default"] = {
        "device": str(default.device),
        "precision": default.precision,
        "agreement": _agreement(default.predict_proba(image), reference),
    }
    with exact_fp32():
        fp32 = Segmenter.from_checkpoint(ckpt, device=str(check.device), precision="fp32")
        result["fp32_max_difference"] = float(np.abs(fp32.predict_proba(image) - reference).max())
    precisions = ("bf16", "fp16") if check.cuda else ("bf16",)
    for precision in precisions:
        seg = Segmenter.from_checkpoint(ckpt, device=str(check.device), precision=precision)
        probs = seg.predict_proba(image)
        result[f"{precision}_agreement"] = _agreement(probs, reference)
        result[f"{precision}_nan"] = bool(np.isnan(probs).any())
    tta_ref = cpu.predict_proba(image, tta=True)
    seg = Segmenter.from_checkpoint(ckpt, device=str(check.device), tta=True)
    result["tta_agreement"] = _agreement(seg.predict_proba(image), tta_ref)
    ensemble_cpu = Segmenter.from_checkpoint([ckpt, ckpt], device="cpu", precision="fp32")
    ensemble = Segmenter.from_checkpoint([ckpt, ckpt], device=str(check.device))
    result["ensemble_agreement"] = _agreement(
        ensemble.predict_proba(image), ensemble_cpu.predict_proba(image)
    )
    result["copies_per_tiled_image"] = _copies_per_tiled_image(check, default)
    result["cli"] = _cli(check, ckpt)
    result["ok"] = bool(
        result["fp32_max_difference"] <= 1e-4
        and all(result[f"{p}_agreement"] >= 0.995 for p in precisions)
        and not any(result[f"{p}_nan"] for p in precisions)
        and result["tta_agreement"] >= 0.995
        and result["ensemble_agreement"] >= 0.995
        and result["default"]["agreement"] >= 0.995
        and (not check.cuda or result["copies_per_tiled_image"] <= 3)
        and all(code == 0 for code in result["cli"].values())
    )
    return result


def _copies_per_tiled_image(check: Check, segmenter) -> int | None:
    """Host-to-device copies the profiler sees while one tiled image (the second one, after
    the first has warmed caches) is predicted."""
    if not check.cuda:
        return None
    from torch.profiler import ProfilerActivity, profile

    image = _image(check, 4 * 128)
    segmenter.predict(image, tile_size=128)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        segmenter.predict(image, tile_size=128)
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if "HtoD" in e.name or "Memcpy HtoD" in e.name)


def _cli(check: Check, ckpt: str) -> dict[str, int]:
    """``predict`` and ``evaluate`` with default flags (device and precision auto)."""
    from unet_resnet.cli import main

    codes = {}
    images = check.data / "test" / "images"
    codes["predict"] = main(["predict", str(images), "--checkpoint", ckpt,
                             "--out", str(check.work / "predicted")])  # fmt: skip
    codes["evaluate"] = main(["evaluate", "--checkpoint", ckpt, "--data", str(check.data),
                              "--split", "val"])  # fmt: skip
    return codes


def _our_step(check: Check, batch: int, size: int):
    """One training step as ``train`` runs it: SegmentationModule's forward (channels_last,
    the batch in the autocast dtype), our fused Adam, our loss, autocast bf16."""
    from unet_resnet.accel.optim import Adam
    from unet_resnet.checkpoint import CheckpointMeta
    from unet_resnet.data.classes import ClassInfo
    from unet_resnet.training.module import SegmentationModule

    meta = CheckpointMeta(
        model_config={"n_classes": 4, "in_channels": 3, "encoder": check.encoder},
        classes=ClassInfo.generic(4),
    )
    torch.manual_seed(0)
    module = SegmentationModule(meta.to_dict(), encoder_weights=None).to(check.device).train()
    optimizer = Adam(module.model.parameters(), lr=1e-3, fused=True)
    x, y = _fixed_batch(check, size, batch)
    x, y = x.to(check.device), y.to(check.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(check.device.type, dtype=torch.bfloat16):
            loss = module.criterion(module(x), y)
        loss.backward()
        optimizer.step()

    return step, module.model


def _plain_step(check: Check, batch: int, size: int):
    """The plain PyTorch recipe: channels_last, autocast bf16, torch's fused Adam."""
    import torch.nn.functional as F

    model = _model(check).to(check.device).to(memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    x, y = _fixed_batch(check, size, batch)
    x = x.to(check.device).contiguous(memory_format=torch.channels_last)
    y = y.to(check.device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(check.device.type, dtype=torch.bfloat16):
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        optimizer.step()

    return step, model


def _step_gflop(step) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / 1e9


def speed(check: Check) -> dict[str, Any]:
    from unet_resnet.hardware import configure_device

    configure_device(check.device, precision="bf16", fixed_size=True)
    size = check.sizes["speed"]
    reps = 10 if check.cuda else 2
    peak = _peak_tflops(check)
    result: dict[str, Any] = {"size": size, "bf16_peak_tflops": round(peak, 1), "training": {}}
    for batch in check.sizes["batches"]:
        row = {}
        for name, build in (("ours", _our_step), ("plain", _plain_step)):
            step, model = build(check, batch, size)
            seconds = check.seconds(step, reps=reps)
            row[name] = {
                "images_per_s": round(batch / seconds, 2),
                "fraction_of_peak": round(_step_gflop(step) / seconds / 1e3 / peak, 3),
            }
            del step, model
        row["ours_vs_plain"] = round(row["ours"]["images_per_s"] / row["plain"]["images_per_s"], 3)
        result["training"][str(batch)] = row
    result["epoch"] = _epoch_vs_step(check)
    result["prediction"] = _prediction_speed(check, size)
    if check.cuda:
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    ratios = [row["ours_vs_plain"] for row in result["training"].values()]
    result["ok"] = bool(
        min(ratios) >= 1.0
        and result["epoch"]["epoch_vs_step"] >= 0.85
        and min(result["prediction"]["vs_plain"].values()) >= 1.0
        and result["prediction"]["large_vs_batched"] >= 0.8
    )
    return result


def _epoch_vs_step(check: Check) -> dict[str, Any]:
    """A whole ``train`` epoch against the isolated step (same size and batch), and the
    data pipeline alone (batches per second of the loader)."""
    import lightning as L

    from unet_resnet.data import make_demo_dataset
    from unet_resnet.training import train
    from unet_resnet.training.datamodule import SegmentationDataModule

    size, batch = check.sizes["image"], 8
    data = make_demo_dataset(check.work / "epoch_data", 64 if check.quick else 256, 8, size)

    class Clock(L.Callback):
        def __init__(self) -> None:
            self.starts: list[float] = []

        def on_train_epoch_start(self, trainer, module) -> None:
            check.sync()
            self.starts.append(time.perf_counter())

    clock = Clock()
    epochs = 3
    train(_config(check, check.work / "epoch", epochs=epochs, image_size=size,
                  val_every=epochs, data=str(data)), callbacks=[clock])  # fmt: skip
    epoch_s = (clock.starts[-1] - clock.starts[1]) / (epochs - 2)
    steps = (64 if check.quick else 256) // batch
    step, _ = _our_step(check, batch, size)
    step_s = check.seconds(step, reps=5)
    loader_data = SegmentationDataModule(str(data), image_size=size, batch_size=batch)
    loader_data.setup("fit")
    loader = loader_data.train_dataloader()
    start = time.perf_counter()
    count = sum(1 for _ in loader)
    loader_s = time.perf_counter() - start
    return {
        "epoch_s": round(epoch_s, 3),
        "steps_per_epoch": steps,
        "step_s": round(step_s, 4),
        "epoch_vs_step": round(steps * step_s / epoch_s, 3),
        "loader_batches_per_s": round(count / loader_s, 1),
        "loader_vs_step": round((count / loader_s) * step_s, 2),
    }


def _prediction_speed(check: Check, size: int) -> dict[str, Any]:
    """Our Segmenter against plain autocast at batch 1 and 8, and a large image."""
    from unet_resnet.inference import Segmenter

    model = _model(check).eval()
    ours = Segmenter(model, device=str(check.device), batch_size=8)
    plain = model.to(check.device).to(memory_format=torch.channels_last)
    result: dict[str, Any] = {"images_per_s": {}, "vs_plain": {}}
    for batch in (1, 8):
        x = torch.randn(batch, 3, size, size, device=check.device)

        def run_plain(x=x) -> None:
            with torch.inference_mode(), torch.autocast(check.device.type, dtype=torch.bfloat16):
                plain(x.contiguous(memory_format=torch.channels_last)).softmax(1)

        ours_s = check.seconds(lambda x=x: ours.probabilities(x), reps=10 if check.cuda else 2)
        plain_s = check.seconds(run_plain, reps=10 if check.cuda else 2)
        result["images_per_s"][str(batch)] = round(batch / ours_s, 2)
        result["vs_plain"][str(batch)] = round(plain_s / ours_s, 3)
    big = check.sizes["big"]
    image = (np.random.default_rng(0).random((big, big, 3)) * 255).astype(np.uint8)
    seconds = check.seconds(lambda: ours.predict(image, tile_size=size), reps=2, warmup=1)
    result["large_megapixels_per_s"] = round(big * big / seconds / 1e6, 2)
    batched = result["images_per_s"]["8"] * size * size / 1e6
    result["large_vs_batched"] = round(result["large_megapixels_per_s"] / batched, 3)
    return result


def suite(check: Check) -> dict[str, Any]:
    """The inference and training tests, on this machine (a subprocess: its own CUDA)."""
    if check.quick:
        return {"ok": True, "skipped": "dry run"}
    log = check.out.with_name(check.out.stem + "-suite.log")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
         "tests/inference", "tests/training", "tests/test_losses.py"],
        cwd=ROOT, capture_output=True, text=True, timeout=240,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    log.write_text(proc.stdout + proc.stderr)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {
        "ok": proc.returncode == 0,
        "returncode": proc.returncode,
        "summary": tail,
        "seconds": round(time.perf_counter() - start, 1),
    }


#: In the order they run (B uses C's checkpoint); the JSON's keys say the section's letter.
SECTIONS: list[tuple[str, Callable[[Check], dict[str, Any]]]] = [
    ("A_environment", environment),
    ("C_training", training),
    ("B_inference", inference),
    ("D_speed", speed),
    ("E_suite", suite),
]


def default_out() -> Path:
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    slug = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    return ROOT / "benchmarks" / "results" / f"gpu_check-{slug}.json"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a dry run)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--only", nargs="*", help="section names (A_environment, ...)")
    args = parser.parse_args(argv)
    out = args.out or default_out()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        check = Check(args.device, args.quick, out, Path(work))
        for name, section in SECTIONS:
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            try:
                result = section(check)
            except Exception as exc:  # report and go on: the next sections still run
                result = {
                    "ok": False,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc()[-3000:],
                }
            result["seconds"] = round(time.perf_counter() - start, 1)
            check.results[name] = result
            check.write()
            print(f"{name}: {'ok' if result['ok'] else 'FAILED'} ({result['seconds']} s)",
                  flush=True)  # fmt: skip
    print(f"wrote {out}")
    return 0 if all(r["ok"] for r in check.results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
