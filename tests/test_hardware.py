"""Machine settings: keeping freed memory for reuse (training, predicting commands, workers)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unet_resnet.accel.memory import _glibc, keep_freed_memory

ROOT = Path(__file__).resolve().parents[1]
needs_glibc = pytest.mark.skipif(_glibc() is None, reason="glibc's mallopt (Linux) only")


def _faults_of_repeated_allocations(n: int = 8, mib: int = 64) -> int:
    """Page faults of allocating, touching and freeing a large tensor ``n`` times."""
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        t = torch.empty(mib * 2**20, dtype=torch.uint8)
        t.fill_(1)
        del t
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start


def _resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


_REUSE_CHECK = """
import resource, sys
from tests.test_hardware import _faults_of_repeated_allocations
from unet_resnet.accel.memory import keep_freed_memory
before = _faults_of_repeated_allocations()
with keep_freed_memory() as active:
    inside = _faults_of_repeated_allocations()
print(before, inside, int(active))
"""


def _in_fresh_process(code: str) -> list[int]:
    """The integers ``code`` prints, run in a fresh interpreter: earlier tests leave free
    chunks in this process's heap, which glibc reuses whatever its settings."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return [int(v) for v in result.stdout.split()]


@needs_glibc
def test_freed_memory_is_reused_inside():
    before, inside, active = _in_fresh_process(_REUSE_CHECK)
    pages = 64 * 2**20 // resource.getpagesize()
    assert active
    assert before > 4 * pages  # glibc's default: every allocation is fresh pages
    # The first one or two allocations fault while the heap grows to hold them (two in about
    # half of the runs measured: 16384 or 32769 faults); the other six or more reuse them.
    assert inside < 2.5 * pages


@needs_glibc
def test_freed_memory_is_handed_back_after():
    with keep_freed_memory():
        t = torch.empty(256 * 2**20, dtype=torch.uint8)
        t.fill_(1)
        del t
        kept = _resident_mib()
    assert _resident_mib() < kept - 200  # returned to the system on leaving


def test_turned_off_it_changes_nothing():
    with keep_freed_memory(False) as active:
        assert active is False


def test_training_runs_inside_it(monkeypatch, tmp_path):
    import importlib

    from tests.conftest import spy_keep_freed_memory, tiny_config
    from unet_resnet.data import make_demo_dataset
    from unet_resnet.training import train

    # (the package's ``train`` attribute is the function, which hides the module)
    train_py = importlib.import_module("unet_resnet.training.train")
    entered = spy_keep_freed_memory(monkeypatch, train_py)
    data = make_demo_dataset(tmp_path / "d", 8, 4, 32, seed=0)
    train(tiny_config(data, tmp_path / "a"))
    train(tiny_config(data, tmp_path / "b", keep_freed_memory=False))
    assert entered == [True, False]


_NESTED_CHECK = """
from tests.test_hardware import _faults_of_repeated_allocations
from unet_resnet.accel import memory
with memory.keep_freed_memory():
    with memory.keep_freed_memory():
        _faults_of_repeated_allocations()
    after_inner = _faults_of_repeated_allocations()  # the outer block still keeps memory
    depth = memory._kept_depth
print(after_inner, depth, memory._kept_depth)
"""


@needs_glibc
def test_blocks_nest_and_only_the_outermost_restores():
    after_inner, depth, final_depth = _in_fresh_process(_NESTED_CHECK)
    pages = 64 * 2**20 // resource.getpagesize()
    assert depth == 1 and final_depth == 0
    assert after_inner < 0.5 * pages  # reused: the inner block's exit changed nothing


def test_commands_that_predict_keep_freed_memory(monkeypatch):
    from unet_resnet import cli
    from unet_resnet.accel import memory
    from unet_resnet.cli.registry import COMMANDS, Command

    keeping = {name for name, cmd in COMMANDS.items() if cmd.keeps_freed_memory}
    # train has its own (--keep-freed-memory)
    assert keeping == {"predict", "evaluate", "calibrate", "serve"}
    seen = []

    def handler(args):
        seen.append(memory._kept_depth)
        return 0

    monkeypatch.setitem(
        COMMANDS, "probe-keeps", Command("probe-keeps", "", handler, lambda p: None, True)
    )
    monkeypatch.setitem(
        COMMANDS, "probe-plain", Command("probe-plain", "", handler, lambda p: None)
    )
    assert cli.main(["probe-keeps"]) == 0 and cli.main(["probe-plain"]) == 0
    assert seen == [1 if memory._glibc() else 0, 0]
    assert memory._kept_depth == 0


def test_a_ray_worker_keeps_freed_memory_for_its_life(checkpoint):
    from unet_resnet.accel import memory
    from unet_resnet.inference.scale import _Worker

    threads = torch.get_num_threads()
    worker = _Worker([str(checkpoint)], {"device": "cpu"}, threads)
    try:
        assert worker.kept_memory is (memory._glibc() is not None)
        assert memory._kept_depth == int(worker.kept_memory)
    finally:
        worker._memory.close()
        torch.set_num_threads(threads)  # the worker sets the process's threads
    assert memory._kept_depth == 0


# The device-class table: one precision and one set of tricks per class of device --------------
@pytest.mark.parametrize(
    ("capability", "name", "precision"),
    [
        ((9, 0), "cuda-ampere", "bf16"),  # H100/H200
        ((8, 0), "cuda-ampere", "bf16"),  # A100
        ((7, 5), "cuda-fp16", "fp16"),  # T4, RTX 20xx: bf16 would be emulated
        ((7, 0), "cuda-fp16", "fp16"),  # V100
        ((6, 0), "cuda-fp16", "fp16"),  # P100
        ((6, 1), "cuda-fp32", "fp32"),  # GTX 10xx: slow half precision
        ((5, 2), "cuda-fp32", "fp32"),
    ],
)
def test_gpu_classes_by_compute_capability(monkeypatch, capability, name, precision):
    from unet_resnet import hardware

    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 2)
    monkeypatch.setattr(hardware, "cuda_capability", lambda index=0: capability)
    cls = hardware.device_class("cuda:1")
    assert cls.name == name and cls.precision == precision
    assert hardware.auto_precision("cuda") == precision
    assert (
        hardware.resolve_train_precision("auto", "gpu")
        == {
            "bf16": "bf16-mixed",
            "fp16": "16-mixed",
            "fp32": "32",
        }[precision]
    )
    assert not cls.cpu_memory_reuse and not cls.cpu_packing and cls.pin_memory
    assert hardware.resolve_device("auto").type == "cuda"


def test_cpu_classes_keep_cpu_tricks_and_follow_the_isa_cap(monkeypatch):
    from unet_resnet import hardware

    monkeypatch.setattr(hardware, "_cpu_flags_have_bf16", lambda: True)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert hardware.device_class("cpu").name == "cpu-bf16"
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    cls = hardware.device_class("cpu")
    assert cls.name == "cpu" and cls.precision == "fp32"
    assert cls.cpu_memory_reuse and cls.cpu_packing and not cls.pin_memory


def test_choosing_a_precision_does_not_initialise_cuda(monkeypatch):
    """Lightning forks its DDP workers after train() chose the precision: asking
    torch.cuda for bf16 support in the parent would have initialised CUDA there."""
    from unet_resnet import hardware

    def forbidden(*args, **kwargs):
        raise AssertionError("CUDA initialised")

    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(hardware, "_nvml_capability", lambda index: (8, 6))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", forbidden)
    monkeypatch.setattr(torch.cuda, "get_device_capability", forbidden)
    monkeypatch.setattr(torch.cuda, "init", forbidden)
    assert hardware.resolve_train_precision("auto") == "bf16-mixed"


def test_configure_device_sets_gpu_flags_only_on_gpus(monkeypatch):
    from unet_resnet import hardware

    flags = {}
    saved = (
        torch.backends.cudnn.benchmark,
        torch.backends.cuda.matmul.allow_tf32,
        torch.backends.cudnn.allow_tf32,
    )
    try:
        torch.backends.cudnn.benchmark = False
        hardware.configure_device("cpu", precision="bf16", fixed_size=True)
        assert torch.backends.cudnn.benchmark is False  # nothing on CPUs
        monkeypatch.setattr(hardware, "cuda_device_count", lambda: 1)
        monkeypatch.setattr(hardware, "cuda_capability", lambda index=0: (9, 0))
        hardware.configure_device("cuda", precision="bf16", fixed_size=True)
        flags["mixed"] = (
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        )
        hardware.configure_device("cuda", precision="fp32", fixed_size=True)
        flags["fp32"] = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    finally:
        (
            torch.backends.cudnn.benchmark,
            torch.backends.cuda.matmul.allow_tf32,
            torch.backends.cudnn.allow_tf32,
        ) = saved
    assert flags["mixed"] == (True, True, True)
    assert flags["fp32"] == (False, False)  # an explicit fp32 is exact fp32


def test_predicting_commands_keep_freed_memory_only_for_cpu_runs(monkeypatch):
    import argparse

    from unet_resnet import cli, hardware

    args = argparse.Namespace(keeps_freed_memory=True, device="cpu")
    assert cli._keeps_freed_memory(args)
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(hardware, "cuda_capability", lambda index=0: (9, 0))
    assert not cli._keeps_freed_memory(argparse.Namespace(keeps_freed_memory=True, device="auto"))
    assert not cli._keeps_freed_memory(argparse.Namespace(keeps_freed_memory=False, device="cpu"))
