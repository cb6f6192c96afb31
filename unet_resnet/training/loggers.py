"""Experiment loggers by name: ``train --logger tensorboard,mlflow,wandb`` (several allowed).

Each is Lightning's own logger; this table only says how to build it for a run folder and how
to attach a file (the best checkpoint) to the run. TensorBoard stays the default. mlflow and
wandb are optional (``unet-resnet[tracking]``): naming one without its package is a
:class:`~unet_resnet.errors.ConfigError` saying what to install.

- ``tensorboard``: ``RUN/tensorboard`` (curves, validation image grids, hyperparameters).
- ``csv``: ``RUN/csv_logs/metrics.csv`` and ``hparams.yaml``.
- ``mlflow``: tracking URI from ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else a
  local file store in ``RUN/mlruns`` (MLflow keeps file stores in maintenance mode; that
  default sets ``MLFLOW_ALLOW_FILE_STORE=true`` for this process). Experiment =
  ``--experiment-name``, run name = the run folder's name.
- ``wandb``: project = ``--experiment-name``, files under ``RUN/wandb``; ``WANDB_MODE=offline``
  logs without an account (``wandb sync`` uploads later).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from unet_resnet.errors import ConfigError

__all__ = [
    "LoggerKind",
    "build_loggers",
    "check_logger_names",
    "logger_names",
    "register_logger",
]


@dataclass(frozen=True)
class LoggerKind:
    name: str
    package: str | None
    build: Callable[..., Logger]
    attach_file: Callable[[Logger, Path], None] | None = None


_KINDS: dict[str, LoggerKind] = {}


def register_logger(
    name: str,
    *,
    package: str | None = None,
    attach_file: Callable[[Logger, Path], None] | None = None,
):
    """Register ``build(run_dir, experiment_name=..., tracking_uri=...) -> Logger``."""

    def decorate(build: Callable[..., Logger]) -> Callable[..., Logger]:
        _KINDS[name] = LoggerKind(name, package, build, attach_file)
        return build

    return decorate


def logger_names() -> tuple[str, ...]:
    return tuple(_KINDS)


def check_logger_names(names: list[str]) -> None:
    """Unknown names, and known ones whose package is not installed, are a ConfigError."""
    for name in names:
        kind = _KINDS.get(name)
        if kind is None:
            raise ConfigError(
                f"Invalid --logger {name!r}. Choose from: {', '.join(_KINDS)}, or none "
                "(several separated by commas)."
            )
        if kind.package and importlib.util.find_spec(kind.package) is None:
            raise ConfigError(
                f"--logger {name} needs the {kind.package} package: "
                "pip install 'unet-resnet[tracking]'."
            )


def build_loggers(
    names: list[str], run_dir: Path, *, experiment_name: str, tracking_uri: str | None
) -> list[tuple[LoggerKind, Logger]]:
    check_logger_names(names)
    return [
        (
            _KINDS[name],
            _KINDS[name].build(run_dir, experiment_name=experiment_name, tracking_uri=tracking_uri),
        )
        for name in names
    ]


@register_logger("tensorboard")
def _tensorboard(run_dir: Path, **_) -> Logger:
    return TensorBoardLogger(run_dir, name="tensorboard", version="", default_hp_metric=False)


@register_logger("csv")
def _csv(run_dir: Path, **_) -> Logger:
    return CSVLogger(run_dir, name="csv_logs", version="")


def _mlflow_attach(logger: Logger, path: Path) -> None:
    logger.experiment.log_artifact(logger.run_id, str(path))


@register_logger("mlflow", package="mlflow", attach_file=_mlflow_attach)
def _mlflow(run_dir: Path, *, experiment_name: str, tracking_uri: str | None) -> Logger:
    from lightning.pytorch.loggers import MLFlowLogger
    from mlflow.exceptions import MlflowException

    source = "--tracking-uri" if tracking_uri else "$MLFLOW_TRACKING_URI"
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        uri = (Path(run_dir) / "mlruns").resolve().as_uri()
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    try:
        logger = MLFlowLogger(
            experiment_name=experiment_name, tracking_uri=uri, run_name=Path(run_dir).name
        )
        logger.experiment  # noqa: B018 - opened now: a refused store fails before training
    except MlflowException as exc:
        first = str(exc).split(". ")[0].rstrip(".")
        hint = (
            "Set MLFLOW_ALLOW_FILE_STORE=true to keep using it, or give a database "
            "(sqlite:///mlflow.db) or a server (http://HOST:5000) instead"
            if "file" in str(exc).lower()
            else "Check the URI and that its server is reachable"
        )
        raise ConfigError(
            f"--logger mlflow: MLflow refused the tracking URI {uri} (from {source}): "
            f"{first}. {hint}."
        ) from None
    return logger


def _wandb_attach(logger: Logger, path: Path) -> None:
    import wandb

    run = logger.experiment
    artifact = wandb.Artifact(name=f"model-{run.id}", type="model")
    artifact.add_file(str(path))
    run.log_artifact(artifact)


@register_logger("wandb", package="wandb", attach_file=_wandb_attach)
def _wandb(run_dir: Path, *, experiment_name: str, **_) -> Logger:
    from lightning.pytorch.loggers import WandbLogger

    return WandbLogger(project=experiment_name, name=Path(run_dir).name, save_dir=str(run_dir))
