"""predict --engine ray: the local engine's outputs, a worker killed mid-run, resumed runs,
a different model, a corrupt input, and a manifest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
rasterio = pytest.importorskip("rasterio")

from rasterio.transform import from_origin  # noqa: E402

from tests.inference.ray_faults import KILL_ENV  # noqa: E402
from unet_resnet.cli import main  # noqa: E402
from unet_resnet.inference.review import REPORT_FILE  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def local_ray(isolated_fastpath_cache):
    import os

    os.environ["UNET_RESNET_OFFLINE"] = "1"
    # One fake GPU (a resource Ray counts; nothing runs on it): GPU workers are placed by it.
    # The workers import the tests' fault hook from this checkout.
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))
    ray.init(
        num_cpus=2, num_gpus=1, include_dashboard=False, log_to_driver=False,
        configure_logging=False,
        runtime_env={
            "env_vars": {"PYTHONPATH": path},
            "worker_process_setup_hook": "tests.inference.ray_faults.install",
        },
    )  # fmt: skip
    yield
    ray.shutdown()


@pytest.fixture
def inputs(tmp_path, demo_data):
    folder = tmp_path / "inputs"
    folder.mkdir()
    for image in sorted((demo_data / "val" / "images").glob("*.png"))[:4]:
        shutil.copy(image, folder / image.name)
    data = np.random.default_rng(0).integers(0, 255, (3, 80, 96), dtype=np.uint8)
    profile = dict(driver="GTiff", width=96, height=80, count=3, dtype="uint8",
                   crs="EPSG:32633", transform=from_origin(500000, 5000000, 10, 10))  # fmt: skip
    with rasterio.open(folder / "scene.tif", "w", **profile) as dst:
        dst.write(data)
    return folder


def _predict(inputs, out, checkpoint, *extra):
    argv = ["predict", str(inputs), "--checkpoint", str(checkpoint), "--out", str(out)]
    return main([*argv, "--precision", "fp32", "--tile-size", "64", *extra])


def test_ray_outputs_equal_the_local_engines(inputs, tmp_path, checkpoint, capsys):
    assert _predict(inputs, tmp_path / "local", checkpoint) == 0
    ray_out = tmp_path / "ray"
    assert _predict(inputs, ray_out, checkpoint, "--engine", "ray", "--workers", "2") == 0
    local_files = sorted(p.name for p in (tmp_path / "local").iterdir())
    written = {p.name for p in ray_out.iterdir() if not p.name.startswith(".")}
    assert local_files == sorted(written)  # the report too: both engines write one
    for name in local_files:
        if name.endswith(".png"):
            assert (ray_out / name).read_bytes() == (tmp_path / "local" / name).read_bytes()
    with (
        rasterio.open(tmp_path / "local" / "scene.tif") as a,
        rasterio.open(ray_out / "scene.tif") as b,
    ):
        assert a.crs == b.crs and a.transform == b.transform
        np.testing.assert_array_equal(a.read(), b.read())
    report = json.loads((ray_out / REPORT_FILE).read_text())
    assert report["done"] == 5 and report["workers"] == 2 and not report["failed"]
    # each input's quality estimate and the review order are the local engine's
    local = json.loads((tmp_path / "local" / REPORT_FILE).read_text())
    assert set(report["quality"]) == set(local["quality"]) and len(local["quality"]) == 5
    for name, entry in local["quality"].items():
        assert report["quality"][name]["quality"] == pytest.approx(entry["quality"], abs=1e-6)
    assert report["review_order"] == local["review_order"]
    assert sum(w["inputs"] for w in report["per_worker"].values()) == 5


def test_a_killed_worker_loses_nothing(inputs, tmp_path, checkpoint, monkeypatch):
    victim = sorted(p.name for p in inputs.glob("*.png"))[1]
    monkeypatch.setenv(KILL_ENV, victim)
    out = tmp_path / "out"
    assert _predict(inputs, out, checkpoint, "--engine", "ray", "--workers", "2") == 0
    assert (out / f".killed-{victim}").exists()  # the worker did die on it
    for image in inputs.glob("*.png"):
        written = Image.open(out / image.name)
        written.load()  # complete, not truncated
        assert written.size == Image.open(image).size
    assert not list(out.glob("*.partial*"))
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["done"] == 5 and not report["failed"]


@pytest.mark.slow  # three Ray runs: make test-slow
def test_rerun_skips_finished_inputs_of_the_same_model_only(inputs, tmp_path, checkpoint, capsys):
    out = tmp_path / "out"
    assert _predict(inputs, out, checkpoint, "--engine", "ray") == 0
    first = sorted(inputs.glob("*.png"))[0]
    (out / first.name).unlink()  # as if the job had been interrupted before this one
    capsys.readouterr()
    assert _predict(inputs, out, checkpoint, "--engine", "ray") == 0
    printed = capsys.readouterr().out
    assert "skipped 4 input(s)" in printed and "wrote 1 prediction(s)" in printed
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["done"] == 1 and len(report["skipped"]) == 4

    other = tmp_path / "other.pt"
    shutil.copy(checkpoint, other)
    with open(other, "ab") as f:
        f.write(b"\0")  # another file: another model hash
    assert _predict(inputs, out, other, "--engine", "ray") == 2  # nothing counts as done
    assert "already exist" in capsys.readouterr().err
    assert _predict(inputs, out, other, "--engine", "ray", "--overwrite") == 0
    assert json.loads((out / REPORT_FILE).read_text())["done"] == 5


def test_corrupt_input_is_reported_and_the_rest_written(inputs, tmp_path, checkpoint, capsys):
    (inputs / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    manifest = tmp_path / "inputs.txt"
    manifest.write_text("\n".join(str(p) for p in sorted(inputs.iterdir())) + "\n# done\n")
    out = tmp_path / "out"
    argv = ["predict", "--manifest", str(manifest), "--checkpoint", str(checkpoint)]
    assert main([*argv, "--out", str(out), "--engine", "ray", "--tile-size", "64"]) == 1
    report = json.loads((out / REPORT_FILE).read_text())
    assert [f["input"] for f in report["failed"]] == [str(inputs / "broken.png")]
    assert report["done"] == 5
    assert "broken.png" in capsys.readouterr().err


def test_gpu_workers_without_a_worker_count_finish(inputs, tmp_path, checkpoint):
    """--gpus-per-worker 1 without --workers started one actor per CPU: those beyond the GPU
    count never started and the inputs handed to them waited for ever."""
    out = tmp_path / "gpu"
    assert _predict(inputs, out, checkpoint, "--engine", "ray", "--gpus-per-worker", "1") == 0
    report = json.loads((out / REPORT_FILE).read_text())
    assert report["workers"] == 1 and report["done"] == 5 and not report["failed"]


def test_worker_count_fits_the_cluster():
    from unet_resnet.errors import ConfigError
    from unet_resnet.inference.scale import worker_count

    cluster = {"CPU": 16.0, "GPU": 2.0}
    count = dict(inputs=100, workers=None, cpus_per_worker=1)
    assert worker_count(cluster, **count, gpus_per_worker=0) == 16
    assert worker_count(cluster, **count, gpus_per_worker=1) == 2
    assert worker_count(cluster, **count, gpus_per_worker=0.5) == 4
    assert worker_count(cluster, **{**count, "inputs": 3}, gpus_per_worker=0) == 3
    with pytest.raises(ConfigError, match="has 0 GPU"):
        worker_count({"CPU": 4.0}, **count, gpus_per_worker=1)
    with pytest.raises(ConfigError, match="--workers 3 cannot all start"):
        worker_count(cluster, **{**count, "workers": 3}, gpus_per_worker=1)


def test_ray_workers_apply_the_runs_one_fastpath_choice(inputs, tmp_path, checkpoint):
    """Each worker timed the candidates with its own thread count and could choose another
    precision or packing than the local engine: masks differed. The driver decides once."""
    assert _predict(inputs, tmp_path / "local", checkpoint, "--precision", "auto") == 0
    ray_out = tmp_path / "ray"
    argv = ("--precision", "auto", "--engine", "ray", "--workers", "2")
    assert _predict(inputs, ray_out, checkpoint, *argv) == 0
    for image in inputs.glob("*.png"):
        assert (ray_out / image.name).read_bytes() == (tmp_path / "local" / image.name).read_bytes()
