"""Machine settings: keeping freed memory for reuse (training, predicting commands, workers)."""

from __future__ import annotations

import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unet_resnet.hardware import _glibc, keep_freed_memory

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
from unet_resnet.hardware import keep_freed_memory
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
from unet_resnet import hardware
with hardware.keep_freed_memory():
    with hardware.keep_freed_memory():
        _faults_of_repeated_allocations()
    after_inner = _faults_of_repeated_allocations()  # the outer block still keeps memory
    depth = hardware._kept_depth
print(after_inner, depth, hardware._kept_depth)
"""


@needs_glibc
def test_blocks_nest_and_only_the_outermost_restores():
    after_inner, depth, final_depth = _in_fresh_process(_NESTED_CHECK)
    pages = 64 * 2**20 // resource.getpagesize()
    assert depth == 1 and final_depth == 0
    assert after_inner < 0.5 * pages  # reused: the inner block's exit changed nothing


def test_commands_that_predict_keep_freed_memory(monkeypatch):
    from unet_resnet import cli, hardware
    from unet_resnet.cli.registry import COMMANDS, Command

    keeping = {name for name, cmd in COMMANDS.items() if cmd.keeps_freed_memory}
    assert keeping == {"predict", "evaluate", "serve"}  # train has its own (--keep-freed-memory)
    seen = []

    def handler(args):
        seen.append(hardware._kept_depth)
        return 0

    monkeypatch.setitem(
        COMMANDS, "probe-keeps", Command("probe-keeps", "", handler, lambda p: None, True)
    )
    monkeypatch.setitem(
        COMMANDS, "probe-plain", Command("probe-plain", "", handler, lambda p: None)
    )
    assert cli.main(["probe-keeps"]) == 0 and cli.main(["probe-plain"]) == 0
    assert seen == [1 if hardware._glibc() else 0, 0]
    assert hardware._kept_depth == 0


def test_a_ray_worker_keeps_freed_memory_for_its_life(checkpoint):
    from unet_resnet import hardware
    from unet_resnet.inference.scale import _Worker

    threads = torch.get_num_threads()
    worker = _Worker([str(checkpoint)], {"device": "cpu"}, threads)
    try:
        assert worker.kept_memory is (hardware._glibc() is not None)
        assert hardware._kept_depth == int(worker.kept_memory)
    finally:
        worker._memory.close()
        torch.set_num_threads(threads)  # the worker sets the process's threads
    assert hardware._kept_depth == 0
