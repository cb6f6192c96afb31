"""Segmenter: checkpoint loading, input checks, precision, TTA, BN folding, files."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tests.data.fixtures import make_geotiff
from unet_resnet import Segmenter
from unet_resnet.accel.fastpath import fold_batchnorm
from unet_resnet.cli import main
from unet_resnet.errors import InputShapeError
from unet_resnet.inference.labels import labels_from_probs
from unet_resnet.io import to_float_image
from unet_resnet.models import UNetWithResnet50Encoder


@pytest.fixture(scope="module")
def segmenter(checkpoint):
    return Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)


def _image(h=64, w=80, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_from_checkpoint_carries_metadata(segmenter):
    assert segmenter.classes.names == ["background", "disk", "square", "triangle"]
    assert segmenter.in_channels == 3 and segmenter.image_dtype == "uint8"
    probs = segmenter.predict_proba(_image())
    assert probs.shape == (4, 64, 80) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1, atol=1e-4)
    mask = segmenter.predict(_image(130, 70))  # tiled: larger than tile_size
    assert mask.shape == (130, 70) and mask.dtype == np.uint8 and mask.max() < 4
    masks = segmenter.predict([_image(), _image(20, 30)])
    assert [m.shape for m in masks] == [(64, 80), (20, 30)]


def test_trained_model_predicts_the_demo_shapes(segmenter, demo_data):
    image = np.asarray(Image.open(demo_data / "val/images/0000.png"))
    truth = np.asarray(Image.open(demo_data / "val/masks/0000.png"))
    assert (segmenter.predict(image) == truth).mean() > 0.6


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((32, 32, 4), np.uint8), "takes 3-channel images, got 4"),
        (np.zeros((32, 32), np.uint8), "takes 3-channel images, got 1"),
        (np.zeros((0, 32, 3), np.uint8), "empty image"),
        (np.zeros((8, 8, 3), np.complex64), "Unsupported image dtype complex64"),
        (np.zeros((2, 8, 8, 3), np.uint8), "H x W or H x W x C"),
    ],
)
def test_bad_arrays_get_clear_errors(segmenter, image, message):
    with pytest.raises(InputShapeError, match=message):
        segmenter.predict(image)


def test_bf16_agrees_with_fp32(checkpoint, demo_data):
    fp32 = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    bf16 = Segmenter.from_checkpoint(checkpoint, precision="bf16")
    agree = []
    for path in sorted((demo_data / "val/images").glob("*.png")):
        image = np.asarray(Image.open(path))
        agree.append((fp32.predict(image) == bf16.predict(image)).mean())
    assert np.mean(agree) >= 0.995  # the accuracy guard


def test_tta_averages_inverted_views(checkpoint):
    plain = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    tta = Segmenter.from_checkpoint(checkpoint, precision="fp32", tta=True, tta_rotations=True)
    image = _image(64, 64)
    views = [image, image[:, ::-1], image[::-1], *(np.rot90(image, k) for k in (1, 2, 3))]
    undo = [
        lambda p: p,
        lambda p: p[:, :, ::-1],
        lambda p: p[:, ::-1],
        *(lambda p, k=k: np.rot90(p, -k, axes=(1, 2)) for k in (1, 2, 3)),
    ]
    expected = np.mean(
        [u(plain.predict_proba(v.copy())) for v, u in zip(views, undo, strict=True)], axis=0
    )
    np.testing.assert_allclose(tta.predict_proba(image), expected, atol=1e-4)


@pytest.mark.parametrize(
    ("dtype", "high"),
    [("uint8", 255), ("uint16", 65535), (">i2", 32767), ("bool", 1), ("float64", 1)],
)
def test_any_dtype_is_normalised_like_training(dtype, high):
    """Tiles are normalised batch by batch from the raw array; the result must equal the
    model applied to the image scaled the way the training data was (to_float_image, then
    mean/std), for every dtype torch cannot hold as it is, too."""
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None).eval()
    mean, std = (0.2, 0.3, 0.4), (0.5, 0.6, 0.7)
    seg = Segmenter(model, mean=mean, std=std, precision="fp32", fold_bn=False, tile_size=128)
    rng = np.random.default_rng(0)
    raw = rng.random((96, 72, 3)) * high
    image = (raw > 0.5) if dtype == "bool" else raw.astype(dtype)
    image = image[::-1]  # a view with a negative stride
    x = (to_float_image(np.ascontiguousarray(image)) - np.array(mean)) / np.array(std)
    x = torch.from_numpy(x.astype(np.float32)).permute(2, 0, 1)
    with torch.no_grad():
        expected = model(x[None]).softmax(1)[0]
    np.testing.assert_allclose(seg.predict_proba(image), expected.numpy(), atol=1e-5)


def test_labels_from_probs_is_argmax_with_first_of_ties():
    rng = np.random.default_rng(0)
    for classes in (1, 2, 7, 300):
        probs = rng.random((classes, 20, 30)).astype(np.float32)
        probs[:, :5, :5] = 0.5  # ties: the first class wins, as with argmax
        labels = labels_from_probs(torch.from_numpy(probs))
        np.testing.assert_array_equal(labels, probs.argmax(0))
        assert labels.dtype == (np.uint8 if classes <= 256 else np.int32)


def test_fold_batchnorm_keeps_outputs():
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="resnet18", encoder_weights=None)
    model.train()
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))  # non-trivial running statistics
    model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(model)
        got = folded(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_fold_batchnorm_follows_the_forward_pass_whatever_the_names():
    """timm's EfficientNet blocks pair conv_pw with bn1 and conv_dw with bn2: names alone
    miss them; given an example input, folding finds every pair from the forward pass."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(3, encoder="tu-mobilenetv3_small_050", encoder_weights=None)
    with torch.no_grad():
        model.train()(torch.randn(2, 3, 64, 64))
    model.eval()
    x = torch.randn(1, 3, 64, 64)

    def batchnorms(m):
        return sum(isinstance(b, torch.nn.BatchNorm2d) for b in m.modules())

    assert batchnorms(fold_batchnorm(copy.deepcopy(model))) > batchnorms(model) / 2
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm(copy.deepcopy(model), x)
        got = folded(x)
    assert batchnorms(folded) == 0
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_conv_readers_sees_through_identities_not_in_place_results():
    from unet_resnet.accel.trace import conv_readers

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = (torch.nn.Conv2d(4, 4, 1) for _ in range(3))
            self.skip = torch.nn.Identity()
            self.bn = torch.nn.BatchNorm2d(4)
            self.relu = torch.nn.ReLU(inplace=True)
            self.act = torch.nn.SiLU()

        def forward(self, x):
            x = self.relu(self.a(x))  # a -> relu, whose result b then reads: b is not a's
            y = self.bn(self.skip(self.b(x)))  # b -> Identity -> bn
            z = self.c(y)
            return self.act(z) + torch.sigmoid(z)  # c read by act (and a function)

    pairs = conv_readers(Net().eval(), torch.randn(1, 4, 8, 8))
    assert sorted(pairs) == [("a", "relu"), ("b", "bn"), ("c", "act")]


@pytest.mark.slow  # the guide's ResNet-50 model; tests/models/test_original_compat.py is fast
def test_original_state_dict_works_as_checkpoint(tmp_path):
    from tests.reference_original import UNetWithResnet50Encoder as Original

    torch.save(Original(n_classes=3).state_dict(), tmp_path / "original.pth")
    seg = Segmenter.from_checkpoint(tmp_path / "original.pth", precision="fp32")
    assert seg.predict(_image(40, 40)).shape == (40, 40)
    assert seg.classes.num_classes == 3


def test_predict_cli_writes_masks_overlays_and_reports_failures(checkpoint, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.fromarray(_image()).save(inputs / "good.png")
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    Image.fromarray(_image()[..., 0]).save(inputs / "grey.png")
    out = tmp_path / "out"
    code = main(
        [
            "predict",
            "--checkpoint",
            str(checkpoint),
            str(inputs),
            "--out",
            str(out),
            "--overlay",
            "--probabilities",
            "--precision",
            "fp32",
        ]
    )
    err = capsys.readouterr().err
    assert code == 1
    assert "broken.png" in err and "grey.png" in err and "3-channel" in err
    mask = Image.open(out / "good.png")
    assert mask.mode == "P" and mask.size == (80, 64)
    assert mask.getpalette()[3:6] == [220, 20, 60]  # the checkpoint's colour for class 1
    overlay = Image.open(out / "good_overlay.png")
    assert overlay.width == 160 and overlay.height > 64  # the legend sits below the image
    probs = np.load(out / "good_proba.npy")
    assert probs.shape == (4, 64, 80)
    assert not (out / "broken.png").exists() and not list(out.glob(".*partial*"))


def test_missing_checkpoint_is_one_clear_error(tmp_path, capsys):
    code = main(
        [
            "predict",
            "--checkpoint",
            str(tmp_path / "nope.pt"),
            str(tmp_path),
            "--out",
            str(tmp_path),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Checkpoint not found" in err and "nope.pt" in err


def test_geotiff_in_geotiff_out(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(1, 255, (3, 150, 170), dtype=np.uint8)
    data[:, :10, :10] = 0  # nodata corner
    scene = make_geotiff(tmp_path / "scene.tif", data, nodata=0)
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64, overlap=0.25)
    out = seg.predict_file(
        scene, tmp_path / "pred.tif", chunk_size=64, probabilities=tmp_path / "proba.tif"
    )

    import rasterio

    with rasterio.open(scene) as src, rasterio.open(out) as dst:
        assert dst.crs == src.crs and dst.transform == src.transform
        assert (dst.width, dst.height, dst.count, dst.dtypes[0]) == (170, 150, 1, "uint8")
        labels = dst.read(1)
        assert dst.nodata == 255
    assert (labels[:10, :10] == 255).all()
    whole = seg.predict(np.moveaxis(data, 0, -1))
    valid = labels != 255
    assert (labels[valid] == whole[valid]).mean() > 0.97  # chunked ~ whole-image tiling
    with rasterio.open(tmp_path / "proba.tif") as p:
        assert p.count == 4 and p.crs == src.crs


def test_raster_streaming_never_holds_the_scene(checkpoint, tmp_path, monkeypatch):
    """Memory bound: every model call sees at most one chunk plus its margin."""
    data = np.random.default_rng(1).integers(0, 255, (3, 300, 260), dtype=np.uint8)
    scene = make_geotiff(tmp_path / "big.tif", data)
    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)
    seen = []
    original = Segmenter.image_probabilities

    def spy(self, image, **kwargs):
        seen.append(image.shape[:2])
        return original(self, image, **kwargs)

    monkeypatch.setattr(Segmenter, "image_probabilities", spy)
    seg.predict_file(scene, tmp_path / "out.tif", chunk_size=100)
    assert len(seen) == 9
    assert max(h * w for h, w in seen) <= (100 + 2 * 64) ** 2


def test_evaluate_cli_json_and_confusion_png(checkpoint, demo_data, tmp_path, capsys):
    out = tmp_path / "eval"
    code = main(
        [
            "evaluate",
            "--checkpoint",
            str(checkpoint),
            "--data",
            str(demo_data),
            "--split",
            "val",
            "--json",
            str(tmp_path / "s.json"),
            "--out",
            str(out),
            "--precision",
            "fp32",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "mIoU" in text and "triangle" in text
    scores = json.loads((tmp_path / "s.json").read_text())
    assert {"miou", "mean_dice", "pixel_accuracy", "per_class"} <= set(scores)
    assert set(scores["per_class"]) == {"background", "disk", "square", "triangle"}
    assert {"iou", "dice", "precision", "recall"} <= set(scores["per_class"]["disk"])
    assert 0 < scores["miou"] <= 1
    assert (out / "confusion_matrix.png").stat().st_size > 1000
    # The same numbers as the training metric code on the same predictions.
    from unet_resnet.data import SegmentationFolder
    from unet_resnet.metrics import SegmentationMetrics

    seg = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    ds = SegmentationFolder(demo_data, "val")
    metric = SegmentationMetrics(4, class_names=seg.classes.names)
    for i in range(len(ds)):
        image, mask = ds.load(i)
        metric.update(
            torch.from_numpy(seg.predict(image).astype(np.int64))[None],
            torch.from_numpy(mask)[None],
        )
    assert metric.compute()["miou"] == pytest.approx(scores["miou"])
    # Tiled mode and TTA run through the same path.
    assert (
        main(
            [
                "evaluate",
                "--checkpoint",
                str(checkpoint),
                "--data",
                str(demo_data),
                "--tta",
                "--tile-size",
                "32",
                "--out",
                str(out),
                "--precision",
                "fp32",
            ]
        )
        == 0
    )


def test_per_call_options_equal_a_segmenter_built_with_them(checkpoint):
    """``tta``/``tile_size`` per call (what the service uses per request) change nothing else."""
    plain = Segmenter.from_checkpoint(checkpoint, precision="fp32")
    with_tta = Segmenter.from_checkpoint(checkpoint, precision="fp32", tta=True)
    tiled = Segmenter.from_checkpoint(checkpoint, precision="fp32", tile_size=64)
    image = _image(80, 96)
    np.testing.assert_allclose(
        plain.predict_proba(image, tta=True), with_tta.predict_proba(image), atol=1e-6
    )
    np.testing.assert_allclose(
        plain.predict_proba(image, tile_size=64), tiled.predict_proba(image), atol=1e-6
    )
    assert plain.tta is False and plain.tile_size == 1024  # nothing was mutated
    assert not np.allclose(plain.predict_proba(image), plain.predict_proba(image, tta=True))


def test_probabilities_is_the_public_batch_method(segmenter):
    batch = torch.randn(2, 3, 32, 32)
    probs = segmenter.probabilities(batch)
    assert probs.shape == (2, segmenter.classes.num_classes, 32, 32)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 32, 32))


def test_the_users_model_is_never_modified(checkpoint):
    from unet_resnet.checkpoint import load_checkpoint

    model, _ = load_checkpoint(checkpoint)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for kwargs in ({}, {"fold_bn": False}, {"pack_weights": False}):
        Segmenter(model, precision="bf16", **kwargs)
    after = model.state_dict()
    assert all(after[k].dtype == v.dtype and torch.equal(after[k], v) for k, v in before.items())
    assert next(model.parameters()).is_contiguous()


def test_tiled_and_file_predictions_keep_freed_memory(monkeypatch, tmp_path):
    """Many tiles (or a file's chunks) reuse each other's memory; one tile has nothing to
    reuse and leaves the allocator alone."""
    from tests.conftest import spy_keep_freed_memory
    from unet_resnet.accel import memory
    from unet_resnet.inference import segmenter as segmenter_module

    depths = spy_keep_freed_memory(monkeypatch, segmenter_module)
    model = UNetWithResnet50Encoder(2, encoder="resnet18", encoder_weights=None).eval()
    seg = Segmenter(model, precision="fp32", tile_size=64, progress=False)
    image = (np.random.default_rng(0).random((64, 48, 3)) * 255).astype(np.uint8)
    seg.predict(image)
    assert depths == [False]
    seg.predict(np.concatenate([image, image], axis=0))  # 128 x 48: two tiles
    assert depths == [False, True]
    from PIL import Image

    Image.fromarray(image).save(tmp_path / "in.png")
    seg.predict_file(tmp_path / "in.png", tmp_path / "out.png")
    assert depths[2] is True  # the whole file, then its (one-tile) image
    assert (tmp_path / "out.png").is_file() and memory._kept_depth == 0


# Reduced precision that overflows, and TTA views in one batch (#29) ------------------------
class _OverflowsBelowFp32(torch.nn.Module):
    """A model whose output is NaN unless it runs in fp32 (as fp16 overflow gives)."""

    in_channels, n_classes = 3, 3

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 3, 3, padding=1)

    def forward(self, x):
        out = self.conv(x)
        return out if out.dtype == torch.float32 else out * float("nan")


def test_a_batch_that_overflows_in_reduced_precision_is_redone_in_fp32():
    image = _image(40, 48)
    reduced = Segmenter(_OverflowsBelowFp32(), device="cpu", precision="bf16", fold_bn=False)
    exact = Segmenter(_OverflowsBelowFp32(), device="cpu", precision="fp32", fold_bn=False)
    with pytest.warns(UserWarning, match="bf16 inference overflowed"):
        probs = reduced.predict_proba(image)
    assert np.isfinite(probs).all()  # before: NaN, which the arg-max made class 0
    np.testing.assert_allclose(probs, exact.predict_proba(image), atol=1e-6)


def test_a_model_that_is_not_finite_even_in_fp32_is_an_error():
    class AlwaysNaN(_OverflowsBelowFp32):
        def forward(self, x):
            return self.conv(x) * float("nan")

    seg = Segmenter(AlwaysNaN(), device="cpu", precision="fp32", fold_bn=False)
    with pytest.raises(InputShapeError, match="not finite .* even in fp32"):
        seg.predict(_image(32, 32))
    image = _image(32, 32).astype(np.float32)
    image[3, 4, 0] = np.nan  # a float image with a NaN pixel: the input's fault, said so
    finite = Segmenter(_OverflowsBelowFp32(), device="cpu", precision="fp32", fold_bn=False)
    with pytest.raises(InputShapeError, match="image holds NaN or infinite values"):
        finite.predict(image)


@pytest.mark.parametrize("shape", [(64, 64), (48, 80)])
def test_tta_views_in_one_batch_equal_one_after_another(segmenter, shape):
    """GPUs run the views of one shape as one batch; CPUs one by one: same probabilities."""
    seg = copy.copy(segmenter)
    seg.tta_rotations = True
    image = _image(*shape)
    seg._batch_views = False
    apart = seg.predict_proba(image, tta=True)
    seg._batch_views = True
    together = seg.predict_proba(image, tta=True)
    np.testing.assert_allclose(together, apart, atol=1e-5)
    np.testing.assert_allclose(together.sum(0), 1, atol=1e-4)


def test_tile_batch_auto_is_the_device_classes_or_what_memory_holds(segmenter, capsys):
    from unet_resnet.errors import ConfigError
    from unet_resnet.inference.segmenter import tiles_that_fit

    assert segmenter.batch_size == "auto" and segmenter.tile_batch(64) == 4  # the CPU class's
    fixed = Segmenter(_OverflowsBelowFp32(), device="cpu", precision="fp32", batch_size=2)
    assert fixed.tile_batch(64) == 2
    gib = 2**30
    assert tiles_that_fit(80 * gib, gib) == 32  # capped: the GPU is full well before
    assert tiles_that_fit(10 * gib, gib) == 5  # half of the free memory
    assert tiles_that_fit(gib, 4 * gib) == 1  # never zero
    with pytest.raises(ConfigError, match="at least 1, or auto"):
        Segmenter(_OverflowsBelowFp32(), device="cpu", batch_size=0)
    with pytest.raises(SystemExit):
        main(["predict", "x.png", "--checkpoint", "c.pt", "--out", "o", "--batch-size", "0"])
    assert "expected a number of tiles (>= 1) or auto, got '0'" in capsys.readouterr().err
