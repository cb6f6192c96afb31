"""Experiment loggers: CSV, MLflow (local file store) and wandb (offline) get the resolved
config, the final scores and the best checkpoint; bad names are one-line errors."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.conftest import tiny_config
from unet_resnet.cli import main
from unet_resnet.data import make_demo_dataset
from unet_resnet.errors import ConfigError
from unet_resnet.training import TrainConfig, train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_demo_dataset(tmp_path_factory.mktemp("data"), 8, 4, 32, seed=0)


def _config(data, out, **overrides) -> TrainConfig:
    return tiny_config(data, out, **{"epochs": 2, "val_every": 1, **overrides})


def test_csv_and_mlflow_get_config_scores_and_best_checkpoint(data, tmp_path, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    uri = (tmp_path / "mlruns").as_uri()
    run = tmp_path / "run"
    result = train(
        _config(data, run, logger="csv,mlflow", tracking_uri=uri, experiment_name="tests")
    )

    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tests")
    (mlrun,) = client.search_runs([experiment.experiment_id])
    assert mlrun.info.run_name == "run"
    assert mlrun.data.params["config/lr"] == "0.001"
    assert mlrun.data.params["config/encoder"] == "resnet18"
    assert mlrun.data.metrics["best/miou"] == pytest.approx(result.best_miou)
    summary = json.loads((run / "summary.json").read_text())
    assert mlrun.data.metrics["best/epoch"] == summary["best_epoch"]
    assert any(k.startswith("best/per_class/") for k in mlrun.data.metrics)
    assert "best.pt" in [a.path for a in client.list_artifacts(mlrun.info.run_id)]

    rows = (run / "csv_logs" / "metrics.csv").read_text().splitlines()
    assert "best/miou" in rows[0] and "val/miou" in rows[0]
    hparams = yaml.safe_load((run / "csv_logs" / "hparams.yaml").read_text())
    assert hparams["config"]["batch_size"] == 4
    assert not (run / "tensorboard").exists()  # only the loggers asked for


def test_wandb_offline(data, tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    run = tmp_path / "run"
    result = train(_config(data, run, logger="wandb", experiment_name="tests"))
    import wandb

    wandb.finish()
    (record_file,) = (run / "wandb").glob("offline-run-*/run-*.wandb")
    history, config, artifacts = {}, {}, []
    for record in _wandb_records(record_file):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            history.update({_key(i): json.loads(i.value_json) for i in record.history.item})
        elif kind == "config":
            config.update({_key(i): i.value_json for i in record.config.update})
        elif kind == "artifact":
            artifacts.append([m.path for m in record.artifact.manifest.contents])
    # (what was there, should this ever miss: it did once in a full run, never alone)
    assert "best/miou" in history, (sorted(history), result.best_miou, result.best_epoch)
    assert history["best/miou"] == pytest.approx(result.best_miou)
    assert any(k.startswith("best/per_class/") for k in history)
    logged = json.loads(config["config"])
    assert logged["encoder"] == "resnet18" and logged["lr"] == 0.001
    assert ["best.pt"] in artifacts


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


def _wandb_records(path):
    """The protobuf records of an offline run file (a LevelDB-style log of 32 KiB blocks, after
    a 7-byte W&B header), read here because wandb has no public reader for it."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, pending = 7, 32768, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7]) if left >= 7 else (0, 0, 0)
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            yield record


def test_no_logger_still_trains(data, tmp_path):
    run = tmp_path / "run"
    result = train(_config(data, run, logger="none", epochs=1))
    assert result.best_checkpoint.is_file() and not (run / "tensorboard").exists()


def test_bad_logger_names(data, tmp_path, capsys, monkeypatch):
    with pytest.raises(ConfigError, match="tensorboard"):
        _config(data, tmp_path / "r", logger="tensorbored")
    argv = ["train", "--data", str(data), "--out", str(tmp_path / "r"), "--logger", "nope"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--logger" in err and "Traceback" not in err
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a)
    )
    with pytest.raises(ConfigError, match=r"unet-resnet\[tracking\]"):
        _config(data, tmp_path / "r", logger="wandb")


def test_a_file_store_in_the_environment_is_one_line_saying_what_to_do(data, tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI=file:... already set by the user: MLflow refuses file stores (in
    maintenance mode) with its raw exception; we say which setting and what to do."""
    pytest.importorskip("mlflow")
    from unet_resnet.errors import ConfigError

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", (tmp_path / "store").as_uri())
    with pytest.raises(ConfigError) as info:
        train(_config(data, tmp_path / "run", logger="mlflow"))
    message = str(info.value)
    assert "$MLFLOW_TRACKING_URI" in message and "MLFLOW_ALLOW_FILE_STORE=true" in message
    assert "sqlite" in message and "\n" not in message
    assert not (tmp_path / "run" / "checkpoints").exists()  # stopped before training
