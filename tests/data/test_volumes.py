"""Volumes: canonical orientation before slicing and predictions written back in the input's
orientation; DICOM series read into a volume with spacing and affine, and their errors."""

from __future__ import annotations

import numpy as np
import pytest

nib = pytest.importorskip("nibabel")
pydicom = pytest.importorskip("pydicom")

from unet_resnet.cli import main  # noqa: E402
from unet_resnet.data.classes import ClassInfo, DataError  # noqa: E402
from unet_resnet.data.layouts.nifti import NiftiSliceDataset  # noqa: E402
from unet_resnet.inference.files import predict_nifti  # noqa: E402
from unet_resnet.volumes import read_dicom_series, read_volume  # noqa: E402


class TopRowSegmenter:
    """Labels the first row of every slice: position-dependent, so orientation matters."""

    def predict(self, image):
        labels = np.zeros(image.shape[:2], dtype=np.uint8)
        labels[0, :] = 1
        labels[image[..., 0] > 100] = 2  # slices come as H x W x channels
        return labels


def _pair(tmp_path):
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, (12, 10, 6)).astype(np.int16)
    affine = np.diag([1.5, 1.2, 3.0, 1.0])
    affine[:3, 3] = [-10, 20, 5]
    straight = nib.Nifti1Image(data, affine)
    # The same scan stored with the first two axes swapped and the new first axis flipped.
    turned = straight.as_reoriented(np.array([[1, -1], [0, 1], [2, 1]]))
    assert turned.shape == (10, 12, 6)
    nib.save(straight, tmp_path / "straight.nii.gz")
    nib.save(turned, tmp_path / "turned.nii.gz")
    return tmp_path / "straight.nii.gz", tmp_path / "turned.nii.gz"


def test_two_orientations_of_one_scan_read_and_slice_the_same(tmp_path):
    straight, turned = _pair(tmp_path)
    a, b = read_volume(straight), read_volume(turned)
    np.testing.assert_array_equal(a.data, b.data)
    assert a.spacing == b.spacing == pytest.approx((1.5, 1.2, 3.0))
    classes = ClassInfo.generic(3)
    sa = NiftiSliceDataset([(straight, None)], classes)
    sb = NiftiSliceDataset([(turned, None)], classes)
    assert len(sa) == len(sb) == 6 and sa.spacings == sb.spacings
    for k in range(6):
        np.testing.assert_array_equal(sa.load(k)[0], sb.load(k)[0])


def test_predictions_go_back_to_the_inputs_orientation(tmp_path):
    straight, turned = _pair(tmp_path)
    outputs = []
    for source in (straight, turned):
        out = tmp_path / f"pred_{source.name}"
        predict_nifti(TopRowSegmenter(), source, out)
        written, original = nib.load(out), nib.load(source)
        assert written.shape == original.shape
        np.testing.assert_allclose(written.affine, original.affine)
        outputs.append(read_volume(out).data)
    # In physical space both predictions are the same.
    np.testing.assert_array_equal(outputs[0], outputs[1])


def _dicom_series(folder, *, n=5, series=None, skip=(), compressed=False, shuffle=True):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 3000, (n, 8, 6)).astype(np.uint16)  # slices, rows, columns
    series = series or generate_uid()
    order = rng.permutation(n) if shuffle else np.arange(n)
    for k in order:
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series if not isinstance(series, list) else series[k]
        ds.Modality = "CT"
        ds.Rows, ds.Columns = 8, 6
        ds.PixelSpacing = [0.8, 0.6]  # between rows, between columns
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [-50.0, -40.0, 10.0 + 2.5 * int(k)]
        ds.SliceThickness = 2.5
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.RescaleSlope, ds.RescaleIntercept = 2, -1024
        ds.PixelData = stored[k].tobytes()
        if compressed:  # a JPEG frame this installation has no decoder for
            from pydicom.encaps import encapsulate

            ds.PixelData = encapsulate([b"\xff\xd8\xff\xe0" + bytes(64) + b"\xff\xd9"])
            ds["PixelData"].VR = "OB"
        ds.save_as(folder / f"IM{int(k):04d}.dcm", enforce_file_format=True)
    return stored


def test_dicom_series_reads_to_volume_spacing_and_affine(tmp_path):
    stored = _dicom_series(tmp_path / "series")
    data, affine = read_dicom_series(tmp_path / "series")
    assert data.shape == (6, 8, 5) and data.dtype == np.int16
    expected = stored.astype(np.int32) * 2 - 1024
    np.testing.assert_array_equal(data, np.transpose(expected, (2, 1, 0)))
    # Voxel (i=col 2, j=row 3, k=slice 4) sits at LPS (-50 + 2*0.6, -40 + 3*0.8, 10 + 4*2.5).
    lps = np.array([-50 + 2 * 0.6, -40 + 3 * 0.8, 10 + 4 * 2.5])
    ras = affine @ np.array([2, 3, 4, 1.0])
    np.testing.assert_allclose(ras[:3], lps * np.array([-1, -1, 1]))
    volume = read_volume(tmp_path / "series")
    assert sorted(volume.spacing) == pytest.approx([0.6, 0.8, 2.5])


def test_dicom_errors_name_the_problem(tmp_path):
    from pydicom.uid import generate_uid

    _dicom_series(tmp_path / "gap", skip=(2,))
    with pytest.raises(DataError, match="not evenly spaced.*IM0001.dcm and IM0003.dcm"):
        read_dicom_series(tmp_path / "gap")
    _dicom_series(
        tmp_path / "mixed", series=[generate_uid() if k == 3 else "1.2.3" for k in range(5)]
    )
    with pytest.raises(DataError, match="mixes 2 DICOM series"):
        read_dicom_series(tmp_path / "mixed")
    _dicom_series(tmp_path / "jpeg", compressed=True)
    with pytest.raises(DataError, match=r"Cannot decode the pixel data of .*IM000\d\.dcm.*JPEG"):
        read_dicom_series(tmp_path / "jpeg")


def test_predict_a_dicom_series_to_nifti(tmp_path, capsys):
    # A one-channel model is needed for CT: train-free, a 1-channel checkpoint of random weights.
    import torch

    from unet_resnet.checkpoint import CheckpointMeta, save_checkpoint
    from unet_resnet.models import UNetWithResnet50Encoder

    torch.manual_seed(0)
    model = UNetWithResnet50Encoder(2, in_channels=1, encoder="resnet18", encoder_weights=None)
    meta = CheckpointMeta(model.config, ClassInfo.generic(2), mean=[0.0], std=[1.0])
    save_checkpoint(tmp_path / "ct.pt", model.eval(), meta)
    _dicom_series(tmp_path / "scans" / "patient7")
    out = tmp_path / "pred"
    argv = [
        "predict",
        str(tmp_path / "scans" / "patient7"),
        "--checkpoint",
        str(tmp_path / "ct.pt"),
    ]
    assert main([*argv, "--out", str(out)]) == 0, capsys.readouterr().err
    written = nib.load(out / "patient7.nii.gz")
    _, affine = read_dicom_series(tmp_path / "scans" / "patient7")
    assert written.shape == (6, 8, 5)
    np.testing.assert_allclose(written.affine, affine, atol=1e-5)


# Intensity rules and 2.5D context --------------------------------------------------------
from unet_resnet.volumes import IntensityRule, context_stack  # noqa: E402


def test_context_stack_repeats_the_edge_slices():
    volume = np.arange(4)[None, None, :] * np.ones((2, 3, 4))
    stacked = context_stack(volume, 0, axis=2, context=1)
    assert stacked.shape == (2, 3, 3)
    assert [float(stacked[0, 0, c]) for c in range(3)] == [0.0, 0.0, 1.0]
    assert [float(v) for v in context_stack(volume, 3, 2, 2)[0, 0]] == [1, 2, 3, 3, 3]


def test_ct_rule_learns_the_foreground_window(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.normal(-800, 50, (20, 20, 10)).astype(np.int16)  # air around
    label = np.zeros(image.shape, np.uint8)
    label[5:15, 5:15, 2:8] = 1
    image[label == 1] = rng.normal(60, 10, int(label.sum())).astype(np.int16)
    nib.save(nib.Nifti1Image(image, np.eye(4)), tmp_path / "img.nii.gz")
    nib.save(nib.Nifti1Image(label, np.eye(4)), tmp_path / "lab.nii.gz")
    rule = IntensityRule.fit_ct([(tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz")])
    foreground = image[label == 1].astype(np.float64)
    low, high = np.percentile(foreground, [0.5, 99.5])
    assert rule.clip == pytest.approx((low, high))
    assert rule.mean == pytest.approx(np.clip(foreground, low, high).mean())
    normalised = rule.apply(image)
    assert normalised[label == 0].max() == pytest.approx((low - rule.mean) / rule.std)
    assert abs(float(normalised[label == 1].mean())) < 0.05
    assert IntensityRule.from_dict(rule.to_dict()) == rule


def test_mr_rule_is_a_per_case_z_score_over_nonzero_voxels():
    volume = np.zeros((10, 10, 4), np.float32)
    volume[2:8, 2:8] = np.random.default_rng(0).normal(300, 40, (6, 6, 4))
    out = IntensityRule("mr").apply(volume)
    inside = out[volume != 0]
    assert abs(inside.mean()) < 1e-5 and inside.std() == pytest.approx(1, rel=1e-4)


def test_ct_and_context_train_are_saved_and_reused_by_predict(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    from unet_resnet.checkpoint import load_checkpoint

    examples = Path(__file__).resolve().parents[2] / "examples"
    spec = importlib.util.spec_from_file_location("medical", examples / "medical" / "run.py")
    medical = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(medical)
    data = medical.make_dataset(tmp_path / "d", n_train=2, n_val=1, n_test=1, shape=(32, 32, 6))
    run = tmp_path / "run"
    argv = ["train", "--data", str(data), "--dataset", "nifti", "--out", str(run), "--modality",
            "ct", "--context-slices", "1", "--encoder", "resnet18", "--encoder-weights", "none",
            "--epochs", "1", "--image-size", "32", "--workers", "0",
            "--progress", "false"]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    model, meta = load_checkpoint(run / "checkpoints" / "best.pt")
    assert model.in_channels == 3 and meta.volume["context_slices"] == 1
    assert (
        meta.volume["intensity"]["modality"] == "ct" and len(meta.volume["intensity"]["clip"]) == 2
    )
    best = str(run / "checkpoints" / "best.pt")
    out = tmp_path / "pred"
    assert (
        main(["predict", str(data / "test" / "images"), "--checkpoint", best, "--out", str(out)])
        == 0
    )
    assert len(list(out.glob("*.nii.gz"))) == 1
    argv = ["evaluate", "--checkpoint", best, "--data", str(data), "--dataset", "nifti"]
    assert main([*argv, "--out", str(tmp_path / "ev")]) == 0
    assert (tmp_path / "ev" / "cases.csv").is_file()
    bad = ["train", "--data", str(data), "--out", str(tmp_path / "r2"), "--modality", "ct"]
    assert main(bad) == 2 and "--dataset nifti" in capsys.readouterr().err


def test_in_plane_resampling_round_trip(tmp_path):
    from unet_resnet.volumes import resample_in_plane

    labels = np.zeros((40, 36, 5), np.uint8)
    labels[8:30, 6:20] = 1
    labels[12:16, 24:32] = 2
    down, spacing = resample_in_plane(labels, (0.5, 0.5, 3.0), 1.0, axis=2, labels=True)
    assert down.shape == (20, 18, 5) and spacing == pytest.approx((1.0, 1.0, 3.0))
    assert set(np.unique(down)) == {0, 1, 2}  # nearest neighbour: no new values
    back, _ = resample_in_plane(down, spacing, None, axis=2, labels=True, shape=labels.shape)
    assert back.shape == labels.shape and (back == labels).mean() > 0.97

    nib.save(nib.Nifti1Image(labels.astype(np.int16) * 100, np.diag([0.5, 0.5, 3, 1])),
             tmp_path / "v.nii.gz")  # fmt: skip
    dataset = NiftiSliceDataset([(tmp_path / "v.nii.gz", None)], ClassInfo.generic(3),
                                target_spacing=1.0)  # fmt: skip
    assert dataset.spacings[0] == pytest.approx((1.0, 1.0, 3.0))
    assert dataset.load(0)[0].shape == (20, 18, 1)

    class Threshold:
        volume = {"target_spacing": 1.0}

        def predict(self, image):
            assert image.shape[:2] == (20, 18)  # predicted on the resampled grid
            return (image[..., 0] > 50).astype(np.uint8)

    predict_nifti(Threshold(), tmp_path / "v.nii.gz", tmp_path / "p.nii.gz")
    written = np.asarray(nib.load(tmp_path / "p.nii.gz").dataobj)
    assert written.shape == labels.shape and ((written > 0) == (labels > 0)).mean() > 0.97
