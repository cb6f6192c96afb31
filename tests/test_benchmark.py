"""The benchmark suite runs (tiny sizes) and reports what the README's tables show."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.loadtest import run_load
from benchmarks.run import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_quick_benchmark_run(tmp_path, capsys):
    """Every section of `make bench` (2.5 min on 2 cores: in `make test-slow`; the fast suite
    runs the sections that report speed-ups, test_quick_speedup_sections)."""
    out = tmp_path / "bench.json"
    code = main(
        [
            "--quick",
            "--only",
            "peak",
            "inference",
            "encoders",
            "profile",
            "epoch",
            "data",
            "tiling",
            "serve",
            "scale",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    for heading in ("CPU:", "Peak", "Inference", "Data loader", "Tiled GeoTIFF", "HTTP service"):
        assert heading in text
    results = json.loads(out.read_text())
    assert results["peak"]["bf16_matmul_tflops"] > 0
    variants = {r["variant"] for r in results["inference"]}
    from unet_resnet.hardware import cpu_has_fast_bf16

    assert {"eager_fp32", "default"} <= variants
    assert ("autocast_bf16_cl" in variants) == cpu_has_fast_bf16()
    assert {r["model"] for r in results["inference"]} == {"guide", "light_decoder"}
    for row in results["inference"]:
        assert row["images_per_s"] > 0 and row["speedup_vs_eager_fp32"] > 0
        assert row["speedup_vs_best_plain"] > 0
    default = [r for r in results["inference"] if r["variant"] == "default"]
    assert all(r["chosen"] in ("bf16", "fp32", "bf16+packed", "fp32+packed") for r in default)
    assert results["machine"]["cpu"]["model"]
    assert results["data"]["images_per_s"] > 0
    epoch = results["epoch"]
    assert epoch["epoch_s"] > 0 and epoch["epoch_throughput_vs_step"] > 0
    assert epoch["run_epoch_s"] > 0 and epoch["final_writes_s"] >= 0
    assert "Whole training epoch" in text
    profile = results["profile"]
    parts = {r["category"]: r for r in profile["categories"]}
    assert {"convolution", "batch norm", "activation", "optimizer"} <= set(parts)
    assert sum(r["share"] for r in parts.values()) == pytest.approx(1.0)
    assert 0 < profile["matrix_share"] < 1 and profile["matrix_fraction_of_bf16_peak"] > 0
    assert parts["batch norm"]["gbps"] > 0 and profile["copy_gbps_out_of_cache"] > 0
    assert "Where the default training step goes" in text
    engines = {(r["engine"], r["workers"]) for r in results["scale"]}
    assert engines == {("local", 1), ("ray", 1), ("ray", 2)} and "Prediction engines" in text
    assert all(r["inputs_per_s"] > 0 and r["vs_local"] > 0 for r in results["scale"])
    encoders = {r["encoder"]: r for r in results["encoders"]}
    assert set(encoders) == {"resnet18", "tu-mobilenetv3_small_050"}
    assert "Encoders in the guide's U-Net" in text
    for row in encoders.values():
        assert row["params_m"] > 0 and row["gflop_per_image"] > 0
        assert row["images_per_s"] > 0 and row["speedup_vs_eager_fp32"] > 0
        assert row["speedup_vs_best_plain"] > 0 and row["copy_gbps"] > 0
        assert row["fraction_of_roofline"] > 0 and row["roofline_s"] > 0
    assert results["tiling"][0]["tiles"] >= 1 and results["tiling"][0]["peak_rss_mb"] > 0
    within, over = results["serve"]
    assert within["errors"] == 0 and over["errors"] == 0
    assert within["ok"] + within["shed_503"] == within["requests"]


@pytest.mark.slow  # half a minute: make test-slow (the backends section stays in make test)
def test_quick_yardstick_and_service_sections(tmp_path, capsys):
    """`make bench`'s yardstick and the HTTP service under load (smoke run)."""
    out = tmp_path / "bench.json"
    assert main(["--quick", "--only", "peak", "serve", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    for heading in ("CPU:", "Peak", "HTTP service"):
        assert heading in text
    results = json.loads(out.read_text())
    assert results["peak"]["bf16_matmul_tflops"] > 0 and results["machine"]["cpu"]["model"]
    within, over = results["serve"]
    assert within["errors"] == 0 and over["errors"] == 0
    assert within["ok"] + within["shed_503"] == within["requests"]


@pytest.mark.slow  # the fast path's candidates timed on the guide's model (about a minute)
def test_quick_inference_section_against_plain_pytorch(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["--quick", "--only", "inference", "--json", str(out)]) == 0
    assert "Inference" in capsys.readouterr().out
    default = [r for r in json.loads(out.read_text())["inference"] if r["variant"] == "default"]
    assert default and all(r["speedup_vs_best_plain"] > 0 for r in default)


@pytest.mark.slow
def test_cpu_classes_each_run_under_their_own_isa_cap(tmp_path, capsys):
    from benchmarks.common import cpu_info
    from benchmarks.isa import CLASSES, classes_below

    out = tmp_path / "bench.json"
    assert main(["--quick", "--only", "isa", "--json", str(out)]) == 0
    assert "CPU classes" in capsys.readouterr().out
    rows = json.loads(out.read_text())["isa"]
    expected = classes_below(cpu_info()["flags"])
    assert [r["cpu_class"] for r in rows if r["variant"] == "default"] == expected
    for row in rows:
        assert row["onednn_max_cpu_isa"] == CLASSES[row["cpu_class"]]
        assert row["images_per_s"] > 0 and row["speedup_vs_best_plain"] > 0
        if row["variant"] == "default":
            assert row["build_s"] > 0 and row["choice_source"] == "measured"  # empty cache
    # A cap below native bf16 reached the worker's oneDNN: no bf16 anywhere in that process.
    for row in rows:
        if row["cpu_class"] in ("avx512 (no bf16)", "avx2"):
            assert row["variant"] != "autocast_bf16_cl" and row["peak_dtype"] == "fp32"
            if row["variant"] == "default":
                assert row["chosen"].startswith("fp32")


def test_classes_below_a_cpu_are_those_its_flags_reach():
    from benchmarks.isa import classes_below

    amx = ["avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"]
    assert classes_below(amx) == ["native", "avx512_bf16 (no AMX)", "avx512 (no bf16)", "avx2"]
    assert classes_below(["avx2", "avx512f", "avx512_bf16"]) == [
        "native",
        "avx512 (no bf16)",
        "avx2",
    ]
    assert classes_below(["avx2"]) == ["native"]


def test_load_test_only_targets_loopback():
    with pytest.raises(ValueError, match="loopback"):
        run_load("http://10.0.0.1:8000", b"")


def test_roofline_takes_flops_or_bytes_whichever_binds():
    from torch import nn

    from benchmarks.common import roofline_seconds

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(64, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU())
    model.in_channels = 64
    flops = 2 * 32 * 64 * 9 * 16 * 16  # multiply-adds of a 3x3 conv on a 16x16 map
    # input, weight, bias and output once, 2 bytes each; BatchNorm folded, ReLU fused
    moved = 2 * (64 * 16 * 16 + 32 * 64 * 9 + 32 + 32 * 16 * 16)
    compute_bound = roofline_seconds(model, 16, tflops=1.0, gbps=1e9)
    memory_bound = roofline_seconds(model, 16, tflops=1e9, gbps=1.0)
    assert compute_bound == pytest.approx(flops / 1e12)
    assert memory_bound == pytest.approx(moved / 1e9)
    # a separate pass (the activation not right after a convolution) moves its bytes
    model.append(nn.Tanh())
    extra = roofline_seconds(model, 16, tflops=1e9, gbps=1.0) - memory_bound
    assert extra == pytest.approx(2 * 2 * 32 * 16 * 16 / 1e9)


def test_training_fractions_use_the_peak_measured_beside_each_variant(monkeypatch):
    from benchmarks import training

    rows = {
        "guide_plain_fp32": {"step_s": 4.0, "gflop_per_step": 100.0, "bf16_peak_tflops": 0.5},
        "default_bf16_mixed": {"step_s": 1.0, "gflop_per_step": 90.0},  # no peak of its own
    }

    def fake(worker, variant, size, batch, steps):
        return {"variant": variant, "images_per_s": batch / rows[variant]["step_s"]} | rows[variant]

    monkeypatch.setattr(training, "in_subprocess", fake)
    out = training.bench_training(
        size=64, batch=2, peak=0.2, variants=("guide_plain_fp32", "default_bf16_mixed")
    )
    guide, default = out
    # one FLOP count (the guide's model as written) for every row
    assert guide["fraction_of_bf16_peak"] == pytest.approx(100 / 4.0 / 500)
    assert default["fraction_of_bf16_peak"] == pytest.approx(100 / 1.0 / 200)
    assert default["speedup_vs_guide_loop"] == pytest.approx(4.0)


def test_step_profile_splits_time_into_matrix_and_memory_parts():
    from benchmarks.step_profile import OpTime, breakdown, tensor_bytes

    bf16 = "c10::BFloat16"
    x = [8, 64, 32, 32]  # 524,288 values, 1 MiB in bf16
    ops = [
        OpTime("aten::convolution_backward", 0.030, [x, x, [64, 64, 3, 3]], [bf16] * 3),
        OpTime("aten::mm", 0.010, [[64, 64], [64, 64]], [bf16, bf16]),
        OpTime("aten::add_", 0.002, [x, x, []], [bf16, bf16, "Scalar"]),
        OpTime("aten::threshold_backward", 0.003, [x, x, []], [bf16, bf16, "Scalar"]),
        OpTime("aten::cat", 0.001, [[], []], ["TensorList", "Scalar"]),  # no sizes recorded
        OpTime("aten::nll_loss2d_forward", 0.004, [[8, 4, 32, 32]], ["float"]),
    ]
    # arguments read once, a result the size of the first written: add_ reads 2, writes 1
    assert tensor_bytes(ops[2]) == 3 * 2 * 524_288
    rows, matrix_fraction = breakdown(ops, step_s=0.050, gflop=20.0, peak_tflops=1.0)
    parts = {r["category"]: r for r in rows}
    assert [r["category"] for r in rows][:2] == ["convolution", "matrix product"]
    assert parts["convolution"]["share"] == pytest.approx(0.6)
    assert parts["other"]["ms"] == pytest.approx(4.0) and parts["other"]["kind"] == "other"
    # 20 GFLOP over the 40 ms of matrix operators against a 1 TFLOP/s peak
    assert matrix_fraction == pytest.approx(20e9 / 0.040 / 1e12)
    adds = parts["gradient and residual adds"]
    assert adds["kind"] == "memory" and adds["gbps"] == pytest.approx(3 * 2 * 524_288 / 0.002 / 1e9)
    assert parts["copies and casts"]["gbps"] is None  # time without sizes: no bandwidth
    assert "gbps" not in parts["convolution"]


def test_gpu_check_writes_a_section_at_a_time(tmp_path):
    """The prepared device check runs as one command; each section lands in the JSON as it
    finishes (here the environment alone, on the CPU)."""
    out = tmp_path / "check.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--device", "cpu",
         "--only", "A_environment", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert list(report) == ["A_environment"]
    env = report["A_environment"]
    assert env["ok"] and env["device_class"] in ("cpu", "cpu-bf16")
    assert env["bf16_peak_tflops"] > 0 and env["seconds"] >= 0


@pytest.mark.slow
def test_gpu_check_dry_run_on_the_cpu(tmp_path):
    """Every section of the device check on the CPU at tiny sizes: the correctness sections
    pass (speed targets are for GPUs, so only their figures are checked)."""
    out = tmp_path / "check.json"
    result = subprocess.run(
        [sys.executable, "benchmarks/gpu_check.py", "--quick", "--device", "cpu", "--out",
         str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    report = json.loads(out.read_text())
    assert list(report) == ["A_environment", "C_training", "B_inference", "D_speed", "E_suite"]
    for name in ("A_environment", "C_training", "B_inference"):
        assert report[name]["ok"], (name, report[name], result.stderr[-2000:])
    assert report["C_training"]["resume"]["bitwise"]
    assert report["D_speed"]["training"]["2"]["ours_vs_plain"] > 0


@pytest.mark.slow
def test_quick_backends_benchmark(tmp_path, capsys, checkpoint, demo_data):
    """Every backend and precision timed against the default path, and scored on a trained
    model (mIoU, agreement with torch fp32, the int8 export's report)."""
    pytest.importorskip("openvino")
    out = tmp_path / "bench.json"
    argv = ["--quick", "--only", "backends", "--checkpoint", str(checkpoint)]
    assert main([*argv, "--data", str(demo_data), "--json", str(out)]) == 0
    assert "Backends" in capsys.readouterr().out
    results = json.loads(out.read_text())["backends"]
    speed = {r["variant"] for r in results["speed"]}
    assert {"default", "auto", "openvino_fp32", "openvino_int8", "onnxruntime_int8"} <= speed
    # the session lets `auto` time no other backend (conftest): it is the torch path, untimed
    assert results["auto_choice"]["backend"] == "torch"
    assert results["auto_choice"]["source"] == "fixed"
    scored = [r for r in results["accuracy"] if "miou" in r]
    assert {r["variant"] for r in scored} >= {"torch_fp32", "openvino_int8"}
    fp32 = next(r for r in scored if r["variant"] == "torch_fp32")
    assert fp32["agreement_with_fp32"] == 1.0
