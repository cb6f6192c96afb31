"""The fast path is chosen by measurement, once per architecture and CPU, and cached."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from unet_resnet import Segmenter
from unet_resnet.accel import fastpath, onednn
from unet_resnet.models import UNetWithResnet50Encoder

needs_onednn = pytest.mark.skipif(not onednn.available(), reason="no oneDNN operators")


def _model(classes: int = 3):
    torch.manual_seed(0)
    return UNetWithResnet50Encoder(classes, encoder="resnet18", encoder_weights=None).eval()


def _fake_timer(monkeypatch, seconds: dict[str, float]) -> list[str]:
    """Replace the timing with fixed seconds per candidate; returns the candidates timed."""
    timed: list[str] = []

    def fake(model, x):
        name = {torch.bfloat16: "bf16", torch.float32: "fp32"}[x.dtype]
        if any(isinstance(m, onednn.PackedConv2d) for m in model.modules()):
            name += "+packed"
        timed.append(name)
        return seconds[name]

    monkeypatch.setattr(fastpath, "seconds_per_call", fake)
    return timed


@needs_onednn
@pytest.mark.parametrize("fastest", ["fp32", "fp32+packed"])
def test_the_fastest_candidate_is_chosen_and_cached(tmp_path, monkeypatch, fastest):
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    times = {"fp32": 2.0, "fp32+packed": 3.0}
    times[fastest] = 1.0
    timed = _fake_timer(monkeypatch, times)
    seg = Segmenter(_model(), device="cpu", precision="fp32")
    assert sorted(timed) == ["fp32", "fp32+packed"]
    assert seg.fastpath.source == "measured"
    assert seg.packed == fastest.endswith("packed") and seg.precision == "fp32"
    assert seg.fastpath.timings == times
    # Same architecture (other weights): the cached choice, nothing timed again.
    timed.clear()
    again = Segmenter(_model().apply(lambda m: None), device="cpu", precision="fp32")
    assert timed == [] and again.fastpath.source == "cache"
    assert again.packed == seg.packed
    # Another architecture is measured on its own.
    Segmenter(_model(classes=5), device="cpu", precision="fp32")
    assert len(timed) == 2
    assert len(json.loads((tmp_path / "fastpath.json").read_text())) == 2
    # Packing that covers more layers (a new onednn.VERSION) measures again.
    timed.clear()
    monkeypatch.setattr(onednn, "VERSION", onednn.VERSION + 1)
    assert Segmenter(_model(), device="cpu", precision="fp32").fastpath.source == "measured"
    assert len(timed) == 2


@needs_onednn
def test_layers_measured_faster_plain_are_cached_with_the_choice(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    _fake_timer(monkeypatch, {"fp32": 2.0, "fp32+packed": 1.0})
    timed = []

    def fake(layer, args, kwargs):  # the upsampling layers measure faster plain
        timed.append(layer)
        plain_wins = isinstance(layer, onednn.PackedConvTranspose2d)
        return 1.0 if layer.packed != plain_wins else 2.0

    monkeypatch.setattr(onednn, "_layer_seconds", fake)
    seg = Segmenter(_model(), device="cpu", precision="fp32", explain=True)
    plain = seg.fastpath.plain_layers
    assert seg.packed and plain and all(name.endswith("upsample") for name in plain)
    assert "layers measured faster unpacked, left plain: up_blocks" in capsys.readouterr().out
    layers = dict(seg.model.named_modules())
    assert all(not layers[name].packed for name in plain)
    # From the cache: the same layers run plain, none is timed again.
    timed.clear()
    again = Segmenter(_model(), device="cpu", precision="fp32")
    assert again.fastpath.source == "cache" and timed == []
    assert onednn.plain_layers(again.model) == plain == again.fastpath.plain_layers


@needs_onednn
def test_the_choice_is_per_cpu(tmp_path, monkeypatch):
    """A different CPU (here: oneDNN capped to AVX2) does not reuse another CPU's choice."""
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    timed = _fake_timer(monkeypatch, {"fp32": 1.0, "fp32+packed": 2.0})
    Segmenter(_model(), device="cpu", precision="fp32")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    Segmenter(_model(), device="cpu", precision="fp32")
    assert len(timed) == 4


def test_auto_precision_compares_bf16_and_fp32_where_bf16_is_native(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    monkeypatch.setattr(fastpath, "cpu_has_fast_bf16", lambda: True)
    timed = _fake_timer(monkeypatch, {"bf16": 2.0, "fp32": 1.0})
    seg = Segmenter(_model(), device="cpu", pack_weights=False)
    assert sorted(timed) == ["bf16", "fp32"]
    assert seg.precision == "fp32" and seg.dtype == torch.float32  # fp32 measured faster
    image = np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8)
    assert seg.predict(image).shape == (40, 40)
    monkeypatch.setattr(fastpath, "cpu_has_fast_bf16", lambda: False)
    timed.clear()
    assert Segmenter(_model(), device="cpu", pack_weights=False).precision == "fp32"
    assert timed == []  # emulated bf16 is never a candidate


def test_fixed_choices_are_not_timed_and_explain_says_why(monkeypatch, capsys):
    timed = _fake_timer(monkeypatch, {})
    seg = Segmenter(_model(), device="cpu", precision="fp32", pack_weights=False, explain=True)
    assert timed == [] and seg.fastpath.source == "fixed" and not seg.packed
    out = capsys.readouterr().out
    assert "fast path: fp32 weights, plain convolutions (fixed)" in out
    assert "packing off" in out


def test_a_damaged_cache_is_measured_again(tmp_path, monkeypatch):
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    (tmp_path / "fastpath.json").write_text("{not json")
    timed = _fake_timer(monkeypatch, {"fp32": 1.0, "fp32+packed": 2.0})
    seg = Segmenter(_model(), device="cpu", precision="fp32")
    assert seg.fastpath.source == "measured" and len(timed) == (2 if onednn.available() else 0)


def test_real_measurement_explains_the_timings(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNET_RESNET_CACHE", str(tmp_path))
    seg = Segmenter(_model(), device="cpu", explain=True)
    out = capsys.readouterr().out
    assert out.startswith("fast path:")
    if seg.fastpath.source == "measured":
        assert min(seg.fastpath.timings, key=seg.fastpath.timings.get) == (
            f"{seg.precision}{'+packed' if seg.packed else ''}"
        )
        assert "ms per 256px image" in out


# Device-neutral preparation -----------------------------------------------------------------
def test_the_inference_copy_is_on_its_device_before_any_pass(monkeypatch):
    """The CUDA crash of #29: the folding check ran the CPU copy on an input made on the
    device. Every forward pass prepare_model makes must find the model where its input is."""
    from unet_resnet.accel import fastpath

    devices = []
    model = _model()

    def record(module, args):
        devices.append((args[0].device, next(module.parameters()).device))

    model.register_forward_pre_hook(record)
    made = []
    real_copy = fastpath._inference_copy
    monkeypatch.setattr(fastpath, "_inference_copy", lambda m, d: made.append(d) or real_copy(m, d))
    fastpath.prepare_model(
        model, device=torch.device("cpu"), precision="fp32", in_channels=3, pack_weights=False
    )
    assert made == [torch.device("cpu")]  # one place moves the copy to the device
    assert devices and all(x == p for x, p in devices)


def test_fp16_keeps_batchnorm_unfolded_where_folding_leaves_its_range(caplog):
    """A BatchNorm with a tiny running variance folds into weights beyond 65504: in fp16
    they would be inf and every pixel NaN. Such a model is prepared unfolded."""
    from unet_resnet.accel import fastpath

    model = _model()
    bn = next(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var.fill_(1e-12)
    bn.eps = 1e-12
    folded = fastpath.fold_batchnorm(copy.deepcopy(model).eval())
    assert not fastpath._fits_fp16(folded)
    with caplog.at_level("WARNING", logger="unet_resnet.fastpath"):
        prepared, _ = fastpath.prepare_model(
            model, device=torch.device("cpu"), precision="fp16", in_channels=3,
            pack_weights=False, channels_last=False,
        )  # fmt: skip
    assert "exceed fp16's range" in caplog.text
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.modules())
    assert all(torch.isfinite(p).all() for p in prepared.parameters())


def test_a_choice_made_once_is_applied_as_it_is_elsewhere(checkpoint):
    """A Ray run's driver decides the fast path once; every worker applies that decision
    (precision, packing, the layers left plain) without timing anything itself."""
    import numpy as np

    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.scale import decided_once

    options = decided_once([str(checkpoint)], {"precision": "auto", "tile_size": 64})
    decided = options["fastpath"]
    assert decided["timings"]  # the driver timed the candidates
    worker = Segmenter.from_checkpoint(checkpoint, **options)
    assert (worker.fastpath.precision, worker.fastpath.packed) == (
        decided["precision"], decided["packed"],
    )  # fmt: skip
    assert worker.fastpath.source == "fixed" and "decided once" in worker.fastpath.reason
    assert worker.fastpath.plain_layers == (decided["plain_layers"] if decided["packed"] else [])
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    local = Segmenter.from_checkpoint(checkpoint, precision="auto", tile_size=64)
    assert local.fastpath.source == "cache"  # what the driver measured, read back here
    np.testing.assert_array_equal(worker.predict(image), local.predict(image))
    assert decided_once([str(checkpoint)], {"precision": "fp32"}, gpus_per_worker=1) == {
        "precision": "fp32"
    }
