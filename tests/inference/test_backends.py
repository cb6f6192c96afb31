"""``backend="auto"`` on a CPU: the torch path timed against the backends that convert
checkpoints, the fastest kept (past a margin), cached, and carried to every Ray worker.

The decision is tested with a registered stand-in backend whose speed the test sets (the
timer is replaced); ONNX Runtime is timed for real here, OpenVINO in its own process
(tests/inference/openvino_cases.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from unet_resnet.accel import fastpath
from unet_resnet.checkpoint import load_checkpoint
from unet_resnet.inference import Segmenter
from unet_resnet.inference import backends as registry
from unet_resnet.inference.runtime import RuntimeModel


class _Standin(RuntimeModel):
    """The checkpoint's own model in fp32, run "by another runtime"."""

    backend = "standin"

    def __init__(self, model, meta) -> None:
        super().__init__({"model_config": meta.model_config})
        self.model = model.eval()

    def run(self, array: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return self.model(torch.from_numpy(array)).numpy()


@pytest.fixture
def standin(monkeypatch, tmp_path):
    """A registered backend that converts checkpoints, and a timer that reports ``times``
    (seconds per call for "torch" and "standin"); yields (times, the names timed)."""
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("UNET_RESNET_AUTO_BACKENDS", "standin")
    built: list[str] = []

    def build(source, device, precision):
        built.append(source)
        return _Standin(*load_checkpoint(source)), load_checkpoint(source)[1]

    backend = registry.Backend(
        "standin", "a stand-in: checkpoints", lambda s: False, ("fp32", "bf16"), build,
        converts_checkpoints=True,
    )  # fmt: skip
    monkeypatch.setitem(registry.BACKENDS, "standin", backend)
    times = {"torch": 1.0, "standin": 1.0}
    timed: list[str] = []

    def fake(model, x):
        name = "standin" if isinstance(model, _Standin) else "torch"
        timed.append(name)
        return times[name]

    monkeypatch.setattr(fastpath, "seconds_per_call", fake)
    return times, timed


def test_a_faster_backend_is_chosen_cached_and_predicts_like_torch(standin, checkpoint, capsys):
    times, timed = standin
    times["standin"] = 0.5
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", explain=True)
    assert seg.backend.name == "standin" and seg.backend.source == "measured"
    assert isinstance(seg.model, _Standin)  # the model built while timing, not a second one
    assert seg.backend.timings == {"torch": 1.0, "standin": 0.5}
    assert "backend: standin (measured)" in capsys.readouterr().out
    reference = Segmenter.from_checkpoint(checkpoint, precision="fp32", backend="torch")
    assert reference.backend.name == "torch" and reference.backend.source == "fixed"
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    np.testing.assert_allclose(seg.predict_proba(image), reference.predict_proba(image), atol=1e-4)
    # Built again: read from the cache, nothing timed.
    timed.clear()
    again = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert again.backend.name == "standin" and again.backend.source == "cache"
    assert "standin" not in timed and isinstance(again.model, _Standin)


@pytest.mark.parametrize(
    ("standin_seconds", "expected"), [(0.97, "torch"), (0.94, "standin"), (2.0, "torch")]
)
def test_another_backend_replaces_torch_only_past_the_margin(
    standin, checkpoint, standin_seconds, expected
):
    times, _ = standin
    times["standin"] = standin_seconds
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert seg.backend.name == expected
    assert isinstance(seg.model, _Standin) == (expected == "standin")


def test_nothing_is_timed_when_the_choice_is_not_open(standin, checkpoint, monkeypatch):
    _, timed = standin
    assert Segmenter.from_checkpoint(checkpoint, backend="torch").backend.source == "fixed"
    # a precision no other backend offers, and ensembles, stay on torch untimed
    registry.BACKENDS["standin"] = registry.Backend(
        "standin", "x: y", lambda s: False, ("fp32",), registry.BACKENDS["standin"].build,
        converts_checkpoints=True,
    )  # fmt: skip
    assert Segmenter.from_checkpoint(checkpoint, precision="bf16").backend.name == "torch"
    ensemble = Segmenter.from_checkpoint([checkpoint, checkpoint], precision="fp32")
    assert ensemble.backend.name == "torch"
    # settings only the torch path has (packing, compile, a decided fast path) keep it
    assert Segmenter.from_checkpoint(checkpoint, pack_weights=False).backend.source == "fixed"
    monkeypatch.setenv("UNET_RESNET_AUTO_BACKENDS", "torch")
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert seg.backend.source == "fixed" and "UNET_RESNET_AUTO_BACKENDS" in seg.backend.reason
    assert "standin" not in timed


def test_the_choice_is_cached_per_architecture_and_thread_count(standin, checkpoint, tmp_path):
    times, timed = standin
    times["standin"] = 0.5
    Segmenter.from_checkpoint(checkpoint, precision="fp32")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        timed.clear()
        Segmenter.from_checkpoint(checkpoint, precision="fp32")
        assert "standin" in timed  # another thread count: timed again
    finally:
        torch.set_num_threads(threads)
    cache = json.loads((tmp_path / "cache" / registry.AUTO_CACHE_FILE).read_text())
    assert len(cache) == 2 and {e["name"] for e in cache.values()} == {"standin"}


def test_a_ray_run_carries_the_drivers_backend_to_every_worker(standin, checkpoint):
    """The driver times once; workers (another thread count, perhaps) run that backend."""
    from unet_resnet.inference.scale import decided_once

    times, timed = standin
    times["standin"] = 0.5
    options = decided_once([str(checkpoint)], {"precision": "fp32", "tile_size": 64})
    assert options["backend"] == "standin" and "fastpath" not in options
    timed.clear()
    worker = Segmenter.from_checkpoint(checkpoint, **options)
    assert timed == [] and isinstance(worker.model, _Standin)
    times["standin"] = 2.0  # torch wins on another machine's driver: its fast path travels
    registry_cache = registry.AUTO_CACHE_FILE
    (fastpath.cache_dir() / registry_cache).unlink()
    options = decided_once([str(checkpoint)], {"precision": "fp32", "tile_size": 64})
    assert options["backend"] == "torch" and options["fastpath"]["precision"] == "fp32"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnxruntime_converts_a_checkpoint_and_is_timed_for_real(checkpoint, monkeypatch, tmp_path):
    """No stand-in: ONNX Runtime converts the checkpoint in memory, agrees with torch fp32,
    and ``auto`` keeps whichever the real timings favour."""
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    image = np.random.default_rng(1).integers(0, 255, (70, 90, 3), dtype=np.uint8)
    converted = Segmenter.from_checkpoint(checkpoint, backend="onnxruntime")
    assert converted.backend.name == "onnxruntime" and converted.model.backend == "onnxruntime"
    torch_fp32 = Segmenter.from_checkpoint(checkpoint, backend="torch", precision="fp32")
    np.testing.assert_allclose(
        converted.predict_proba(image), torch_fp32.predict_proba(image), atol=1e-4
    )
    monkeypatch.setenv("UNET_RESNET_AUTO_BACKENDS", "onnxruntime")
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    timings = seg.backend.timings
    assert seg.backend.source == "measured" and set(timings) == {"torch", "onnxruntime"}
    faster = timings["onnxruntime"] < (1 - registry.AUTO_MARGIN) * timings["torch"]
    assert seg.backend.name == ("onnxruntime" if faster else "torch")


def test_a_backend_that_cannot_convert_the_model_is_left_out(standin, checkpoint, caplog):
    """An encoder another runtime cannot convert must not break ``predict``: that backend
    is simply not a candidate (and says so)."""
    del standin  # its registration and timer; this test replaces the builder

    def broken(source, device, precision):
        raise RuntimeError("unsupported operator")

    registry.BACKENDS["standin"] = registry.Backend(
        "standin", "x: y", lambda s: False, ("fp32",), broken, converts_checkpoints=True
    )
    with caplog.at_level("WARNING", logger="unet_resnet.backends"):
        seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert seg.backend.name == "torch" and set(seg.backend.timings) == {"torch"}
    assert "standin could not run this model" in caplog.text
