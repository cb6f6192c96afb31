"""Export: ONNX and TorchScript round trips at odd sizes, metadata, parity check, ORT backend."""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from unet_resnet import Segmenter
from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
from unet_resnet.cli import main
from unet_resnet.data import ClassInfo
from unet_resnet.export import ExportError, export_model, read_export_metadata
from unet_resnet.models import UNetWithResnet50Encoder


def _checkpoint(tmp_path, encoder: str, name: str = "model.pt", in_channels: int = 3):
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(
        3, encoder=encoder, in_channels=in_channels, encoder_weights=None
    )
    model.train()
    with torch.no_grad():
        model(torch.randn(2, in_channels, 64, 64))  # non-trivial BatchNorm statistics
    meta = CheckpointMeta(
        model.config,
        ClassInfo(["a", "b", "c"]),
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        image_size=64,
        image_dtype="uint8",
    )
    path = tmp_path / name
    save_checkpoint(path, model.eval(), meta)
    return path, model.eval()


@pytest.mark.parametrize(
    ("encoder", "output"),
    [
        pytest.param("resnet50", "probabilities", marks=pytest.mark.slow),  # the guide's model
        ("resnet18", "probabilities"),
        ("resnet18", "logits"),
    ],
)
def test_onnx_round_trip_at_odd_sizes(tmp_path, encoder, output):
    ckpt, model = _checkpoint(tmp_path, encoder)
    report = export_model(ckpt, tmp_path / "m.onnx", format="onnx", output=output)
    assert report.max_abs_diff <= 1e-3
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 33, 47), (3, 3, 100, 64), (2, 3, 65, 129)]:
        x = torch.randn(*shape)
        got = session.run(None, {"image": x.numpy()})[0]
        with torch.no_grad():
            expected = model(x)
        if output == "probabilities":
            expected = expected.softmax(1)
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected.numpy(), atol=2e-3, rtol=1e-3)
    meta = read_export_metadata(tmp_path / "m.onnx")
    assert meta["output_kind"] == output
    assert meta["classes"]["names"] == ["a", "b", "c"] and meta["mean"] == [0.5] * 3
    inside = {
        p.key for p in onnx.load(str(tmp_path / "m.onnx"), load_external_data=False).metadata_props
    }
    assert "unet_resnet" in inside


def test_torchscript_round_trip(tmp_path):
    ckpt, model = _checkpoint(tmp_path, "resnet18", in_channels=4)
    report = export_model(ckpt, tmp_path / "m.ts", format="torchscript")
    loaded = torch.jit.load(str(tmp_path / "m.ts"))
    x = torch.randn(2, 4, 45, 70)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), atol=1e-3, rtol=1e-3)
    assert report.metadata_path.is_file()


def test_failed_parity_check_leaves_no_file(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    with pytest.raises(ExportError, match="parity check failed"):
        export_model(ckpt, tmp_path / "m.onnx", tolerance=-1.0)
    assert not (tmp_path / "m.onnx").exists()
    assert not list(tmp_path.glob(".partial.*"))  # no temporary file left behind


def test_onnxruntime_backend_matches_pytorch_with_tiling_and_tta(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    export_model(ckpt, tmp_path / "m.onnx")
    options = dict(tile_size=48, overlap=0.25, tta=True)
    onnx_seg = Segmenter.from_onnx(tmp_path / "m.onnx", **options)
    torch_seg = Segmenter.from_checkpoint(ckpt, precision="fp32", **options)
    assert onnx_seg.classes.names == ["a", "b", "c"]
    for shape in [(100, 75, 3), (20, 30, 3)]:
        image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        np.testing.assert_allclose(
            onnx_seg.predict_proba(image), torch_seg.predict_proba(image), atol=1e-4
        )


def test_export_cli(tmp_path, capsys):
    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    assert (
        main(
            [
                "export",
                "--checkpoint",
                str(ckpt),
                "--format",
                "onnx",
                "--out",
                str(tmp_path / "cli.onnx"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "parity check" in out and "max abs difference" in out
    assert (tmp_path / "cli.onnx").is_file() and (tmp_path / "cli.onnx.json").is_file()


def test_onnx_runtime_providers_follow_the_device(monkeypatch):
    """CPU by default; CUDA's provider (with the CPU's for what it lacks) on a CUDA device;
    a CUDA device without onnxruntime-gpu is one error naming the package."""
    import onnxruntime as ort

    from unet_resnet.errors import ConfigError
    from unet_resnet.inference.onnx import providers_for

    assert providers_for("cpu") == ["CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        providers_for("cuda")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert providers_for("cuda:1") == [
        ("CUDAExecutionProvider", {"device_id": 1}),
        "CPUExecutionProvider",
    ]


def test_an_onnx_file_on_a_gpu_machine_without_onnxruntime_gpu_runs_on_the_cpu(
    tmp_path, monkeypatch
):
    """--device auto (the CLI's default) on a machine with a GPU but plain onnxruntime: the
    CPU, not an error; an explicit --device cuda still says which package it needs."""
    import onnxruntime as ort

    from unet_resnet import hardware
    from unet_resnet.errors import ConfigError
    from unet_resnet.inference.onnx import onnx_device

    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    export_model(ckpt, tmp_path / "m.onnx")
    monkeypatch.setattr(hardware, "cuda_device_count", lambda: 1)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    segmenter = Segmenter.from_checkpoint(tmp_path / "m.onnx", device="auto")
    assert segmenter.device.type == "cpu" and segmenter.model.device.type == "cpu"
    assert segmenter.predict(np.zeros((40, 40, 3), np.uint8)).shape == (40, 40)
    with pytest.raises(ConfigError, match="onnxruntime-gpu"):
        Segmenter.from_checkpoint(tmp_path / "m.onnx", device="cuda")
    monkeypatch.setattr(
        ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )
    assert onnx_device("auto").type == "cuda"


def test_onnx_carries_what_qgis_deepness_reads(checkpoint, tmp_path):
    """The keys Deepness reads (JSON values), and one tile pre-processed the way its docs
    describe (8-bit RGB / 255, then its standardisation, NHWC -> NCHW; values under seg_thresh
    zeroed, arg-max) gives our prediction; our own ONNX backend still predicts the same."""
    from unet_resnet import Segmenter

    path = tmp_path / "qgis.onnx"
    export_model(checkpoint, path, format="onnx", resolution_cm=30)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = {k: json.loads(v) for k, v in props.items() if k != "unet_resnet"}
    assert meta["model_type"] == "Segmentor"
    assert meta["class_names"] == {"0": "background", "1": "disk", "2": "square", "3": "triangle"}
    assert meta["resolution"] == 30 and meta["tiles_size"] == 512 and meta["seg_thresh"] == 0
    assert 0 < meta["tiles_overlap"] < 100
    segmenter = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    rng = np.random.default_rng(0)
    tile = rng.integers(0, 256, (1, 96, 96, 3), dtype=np.uint8)
    x = np.float32(tile * 1.0 / 255.0)
    x = (x - np.asarray(meta["standardization_mean"])) / np.asarray(meta["standardization_std"])
    x = np.transpose(x, (0, 3, 1, 2)).astype(np.float32)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (result,) = session.run(None, {session.get_inputs()[0].name: x})
    result[result < meta["seg_thresh"]] = 0.0
    labels = np.argmax(result, axis=1)[0]
    expected = segmenter.predict(tile[0])
    assert (labels == expected).mean() > 0.999
    ours = Segmenter.from_checkpoint(path).predict(tile[0])
    assert (ours == expected).mean() > 0.999


def test_a_calibrated_onnx_graph_gives_calibrated_probabilities(checkpoint, tmp_path):
    """The temperature is inside the probabilities graph (what Deepness shows is
    calibrated), and our ONNX backend neither applies it twice nor loses --temperature."""
    from unet_resnet import Segmenter
    from unet_resnet.checkpoint import load_checkpoint, save_checkpoint

    model, meta = load_checkpoint(checkpoint)
    meta.temperature = 0.5
    calibrated = tmp_path / "calibrated.pt"
    save_checkpoint(calibrated, model, meta)
    path = tmp_path / "calibrated.onnx"
    export_model(calibrated, path, format="onnx")
    torch_side = Segmenter.from_checkpoint(calibrated, precision="fp32")
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    x = (np.float32(image / 255.0) - np.asarray(meta.mean)) / np.asarray(meta.std)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.transpose(x, (2, 0, 1))[None].astype(np.float32)
    (graph,) = session.run(None, {session.get_inputs()[0].name: x})
    expected = torch_side.predict_proba(image)
    np.testing.assert_allclose(graph[0], expected, atol=2e-4)
    ours = Segmenter.from_checkpoint(path)
    np.testing.assert_allclose(ours.predict_proba(image), expected, atol=2e-4)
    other = Segmenter.from_checkpoint(path, temperature=2.0).predict_proba(image)
    raw = Segmenter.from_checkpoint(calibrated, precision="fp32", temperature=2.0)
    np.testing.assert_allclose(other, raw.predict_proba(image), atol=2e-4)


def test_export_options_are_checked(tmp_path):
    ckpt, _ = _checkpoint(tmp_path, "resnet18")
    with pytest.raises(ExportError, match="--resolution"):
        export_model(ckpt, tmp_path / "m.onnx", resolution_cm=-1)
    with pytest.raises(ExportError, match="--output goes with --format onnx"):
        export_model(ckpt, tmp_path / "m.ts", format="torchscript", output="logits")
    assert not list(tmp_path.glob("m.*"))
