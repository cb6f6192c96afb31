"""OpenVINO: the IR export round trip, int8 with its report and its guard, the backend
registry choosing and refusing, and the backends agreeing with each other."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("openvino")
pytest.importorskip("nncf")

from unet_resnet.cli import main
from unet_resnet.errors import ConfigError
from unet_resnet.inference import Segmenter
from unet_resnet.inference.backends import choose_backend
from unet_resnet.io import read_image


def _images(demo_data, n=2):
    return [read_image(p) for p in sorted((demo_data / "val" / "images").glob("*.png"))[:n]]


@pytest.fixture(scope="module")
def float_ir(checkpoint, tmp_path_factory):
    from unet_resnet.quantize import export_openvino

    out = tmp_path_factory.mktemp("ov") / "float"
    folder, report = export_openvino(checkpoint, out)
    assert report is None
    return folder


def _export_elsewhere(mode, checkpoint, data, out, size=8) -> dict:
    """``export_openvino`` in a fresh process (see tests/inference/ov_run.py for why)."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-m", "tests.inference.ov_run", mode, str(checkpoint), str(data),
         str(out), str(size)],
        cwd=root, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def int8_ir(checkpoint, demo_data, tmp_path_factory):
    from pathlib import Path

    out = tmp_path_factory.mktemp("ov") / "int8"
    result = _export_elsewhere("int8", checkpoint, demo_data, out)
    return Path(result["folder"]), result["report"], result["signal_stack_kept"]


def test_a_float_ir_folder_loads_like_a_checkpoint_and_agrees_with_torch(
    float_ir, checkpoint, demo_data
):
    assert {p.name for p in float_ir.iterdir()} == {"model.xml", "model.bin", "unet_resnet.json"}
    ov = Segmenter.from_checkpoint(float_ir, precision="fp32")
    torch_ = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert ov.fastpath.precision == "fp32" and "openvino" in ov.fastpath.reason
    assert ov.classes.names == torch_.classes.names
    for image in _images(demo_data):
        np.testing.assert_allclose(ov.predict_proba(image), torch_.predict_proba(image), atol=1e-4)
    # a checkpoint converted in memory is the same model
    converted = Segmenter.from_checkpoint(checkpoint, backend="openvino", precision="fp32")
    image = _images(demo_data, 1)[0]
    np.testing.assert_allclose(converted.predict_proba(image), ov.predict_proba(image), atol=1e-5)


def test_int8_is_scored_against_float_and_the_report_travels_with_it(int8_ir, demo_data):
    folder, report, kept = int8_ir
    assert kept  # NNCF's OpenVINO Cores left the thread's signal stack as it was
    saved = json.loads((folder / "report.json").read_text())
    assert saved == report
    assert report["calibration"]["images"] == 8 and report["validation"]["images"] == 4
    assert len(report["float_layers"]) >= 2  # the first convolution and the head
    assert report["pixel_agreement"] > 0.9
    drop = 100 * (report["float_miou"] - report["int8_miou"])
    assert report["drop_points"] == pytest.approx(drop)
    assert set(report["per_class"]) == set(
        json.loads((folder / "unet_resnet.json").read_text())["classes"]["names"]
    )
    # predicted with like a checkpoint (in a fresh process, as the CLI runs: see ov_run.py)
    import subprocess
    import sys

    out = folder.parent / "masks"
    code = (
        "import sys; from unet_resnet.inference import Segmenter; "
        "from unet_resnet.io import read_image; s = Segmenter.from_checkpoint(sys.argv[1]); "
        "print(s.precision, s.predict(read_image(sys.argv[2])).shape)"
    )
    image = sorted((demo_data / "val" / "images").glob("*.png"))[0]
    done = subprocess.run(
        [sys.executable, "-c", code, str(folder), str(image)],
        capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["int8", "(64,", "64)"]
    assert not out.exists()
    with pytest.raises(ConfigError, match="int8 model"):
        Segmenter.from_checkpoint(folder, precision="bf16")


@pytest.mark.slow  # an NNCF int8 export: make test-slow
def test_the_guard_stops_past_the_budget_and_writes_nothing(checkpoint, demo_data, tmp_path):
    out = tmp_path / "int8"
    result = _export_elsewhere("guard-stop", checkpoint, demo_data, out, 2)
    assert result["error"] == "ExportError"
    assert "lost 3.00 mIoU points" in result["message"] and "--max-drop 0.5" in result["message"]
    assert "Nothing was written" in result["message"]
    assert result["scored"] == 2  # scored, accuracy control tried, scored again
    assert list(tmp_path.iterdir()) == []  # no folder, no partial


@pytest.mark.slow  # NNCF's accuracy-control search: make test-slow
def test_accuracy_control_that_recovers_the_budget_is_reported(checkpoint, demo_data, tmp_path):
    result = _export_elsewhere("guard-recover", checkpoint, demo_data, tmp_path / "int8", 2)
    report = result["report"]
    assert report["accuracy_control"] and report["drop_points"] == pytest.approx(0.1)
    saved = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert saved["accuracy_control"] is True


def test_the_cli_exports_and_predicts_with_an_ir_folder(
    float_ir, demo_data, tmp_path, capsys, checkpoint
):
    out = tmp_path / "pred"
    argv = ["predict", str(demo_data / "val" / "images"), "--checkpoint", str(float_ir)]
    assert main([*argv, "--out", str(out)]) == 0
    assert len(list(out.glob("*.png"))) == 4
    # int8 without calibration data, and an existing folder, are one clear error each
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out",
                 str(tmp_path / "x"), "--precision", "int8"]) == 2  # fmt: skip
    assert "--calibration DATA" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "openvino", "--out",
                 str(float_ir)]) == 2  # fmt: skip
    assert "already exists" in capsys.readouterr().err


def test_backends_are_chosen_by_what_they_load_and_refuse_what_they_cannot(
    float_ir, checkpoint, tmp_path
):
    assert choose_backend(float_ir).name == "openvino"
    assert choose_backend(checkpoint).name == "torch"
    assert choose_backend(checkpoint, "openvino").name == "openvino"  # converts
    assert choose_backend(checkpoint, "onnxruntime").name == "onnxruntime"  # converts too
    with pytest.raises(ConfigError, match="--backend onnxruntime cannot load"):
        choose_backend(float_ir, "onnxruntime")
    with pytest.raises(ConfigError, match="--backend torch cannot load"):
        choose_backend(float_ir, "torch")
    with pytest.raises(ConfigError, match="Unknown backend 'tensorrt'"):
        choose_backend(checkpoint, "tensorrt")
    with pytest.raises(ConfigError, match="openvino backend runs in fp32, bf16, int8"):
        Segmenter.from_checkpoint(float_ir, precision="fp16")


def test_an_ir_folder_on_a_gpu_machine_runs_on_the_cpu(float_ir, monkeypatch, demo_data):
    """OpenVINO runs on the CPU: --device auto (the CLI's default) on a machine with a GPU
    takes the CPU instead of refusing; an explicit --device cuda is one clear error."""
    from unet_resnet import hardware

    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 1)
    segmenter = Segmenter.from_checkpoint(float_ir, device="auto")
    assert segmenter.device.type == "cpu"
    assert segmenter.predict(_images(demo_data, 1)[0]).shape == (64, 64)
    with pytest.raises(ConfigError, match="runs on the CPU, not --device cuda"):
        Segmenter.from_checkpoint(float_ir, device="cuda")


def test_auto_times_openvino_against_torch_and_keeps_the_faster(checkpoint, demo_data, monkeypatch):
    """For real: on this CPU ``auto`` times OpenVINO (converted in memory) against the torch
    fast path, keeps the faster (past the margin), caches the choice, and predicts what torch
    predicts."""
    from unet_resnet.inference.backends import AUTO_MARGIN

    monkeypatch.setenv("UNET_RESNET_AUTO_BACKENDS", "openvino")  # the session's cache
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")  # the fast path: cached
    timings = seg.backend.timings
    assert seg.backend.source == "measured" and set(timings) == {"torch", "openvino"}
    faster = timings["openvino"] < (1 - AUTO_MARGIN) * timings["torch"]
    assert seg.backend.name == ("openvino" if faster else "torch")
    assert getattr(seg.model, "backend", "torch") == seg.backend.name
    again = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    assert again.backend.source == "cache" and again.backend.name == seg.backend.name
    reference = Segmenter.from_checkpoint(checkpoint, backend="torch", precision="fp32")
    for image in _images(demo_data):
        agree = (seg.predict(image) == reference.predict(image)).mean()
        assert agree > 0.99


def _mapped(address: int) -> bool:
    for line in Path("/proc/self/maps").read_text().splitlines():
        low, high = (int(part, 16) for part in line.split()[0].split("-"))
        if low <= address < high:
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="Linux only")
def test_models_freed_in_any_order_leave_a_signal_stack_that_signals_can_use(float_ir, checkpoint):
    """OpenVINO's CPU plugin swaps the thread's signal stack per Core and, unloaded out of
    order, left it pointing at unmapped memory: the next handled signal (Ctrl-C, SIGCHLD)
    killed the process with SIGSEGV. Models share one Core now; signals still work after
    models come and go in any order."""
    import gc
    import os
    import signal

    from unet_resnet.inference.openvino import signal_stack

    before = signal_stack()
    models = [Segmenter.from_checkpoint(float_ir, precision="fp32") for _ in range(2)]
    models.append(Segmenter.from_checkpoint(checkpoint, backend="openvino"))
    del models[0]  # the first made goes first: out of order
    gc.collect()
    models.clear()
    gc.collect()
    address, size = signal_stack()
    assert (address, size) == before
    assert address == 0 or _mapped(address)
    handled = []
    previous = signal.signal(signal.SIGUSR1, lambda *_: handled.append(True))
    try:
        os.kill(os.getpid(), signal.SIGUSR1)  # on that signal stack; a dangling one: SIGSEGV
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert handled == [True]
