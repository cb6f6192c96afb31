"""What the real-image benchmarks share: their common flags, the loop over datasets (each
built in a temporary folder that is removed afterwards: the runs' checkpoints are GBs), one
``unet-resnet train`` run with the defaults, and the results file."""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchmarks.common import machine_info
from benchmarks.quality.datasets import DATASETS, prepare

#: dataset -> (crop, batch)
SETTINGS = {"nuclei": (128, 4), "brain": (128, 8), "textures": (128, 8)}


def common_arguments(parser: argparse.ArgumentParser, json_default: str) -> None:
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--cache", default=str(Path.home() / ".cache" / "unet-resnet" / "wheels"))
    parser.add_argument("--json", dest="json_out", default=json_default)


def over_datasets(
    args: argparse.Namespace, prefix: str, run_one: Callable[[str, Path, Path], dict]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``run_one(name, root, work)`` for each of ``args.datasets``: the machine and the rows."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    info = machine_info()
    print(f"CPU: {info['cpu']['model']}; flags: {' '.join(info['cpu']['flags'])}", flush=True)
    rows = []
    try:
        for name in args.datasets:
            root = prepare(name, work / "data" / name, Path(args.cache))
            rows.append(run_one(name, root, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return info, rows


def train_defaults(name: str, root: Path, out: Path, *, epochs: int, encoder: str, **overrides):
    """One ``unet-resnet train`` run with the defaults at the dataset's crop and batch."""
    from unet_resnet.training import TrainConfig, train

    crop, batch = SETTINGS[name]
    values = dict(
        data=str(root),
        out=str(out),
        encoder=encoder,
        encoder_weights=None,
        epochs=epochs,
        image_size=crop,
        batch_size=batch,
        progress=False,
    )
    return train(TrainConfig(**{**values, **overrides}))


def write_results(path: str | Path, info: dict[str, Any], rows: list, **extra) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, **extra, "rows": rows}, indent=2) + "\n")
    return path


def main_over_datasets(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str | None,
    name: str,
    run_dataset: Callable[[str, Path, int, Path, str], dict[str, Any]],
    format_rows: Callable[[list[dict[str, Any]]], str],
    epochs: dict[str, int] | None = None,
    **extra: Any,
) -> int:
    """The command of a benchmark that trains each dataset once with the defaults
    (``--epochs``, ``--encoder``) and makes one row of it: each row's line as it comes, the
    table, and ``benchmarks/results/NAME.json`` (with ``extra``). ``epochs``: dataset ->
    its epochs where ``--epochs`` is not given (otherwise 5)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    common_arguments(parser, f"benchmarks/results/{name}.json")
    own = "".join(f", {k} {v}" for k, v in (epochs or {}).items())
    parser.add_argument("--epochs", type=int, help=f"training epochs (default: 5{own})")
    parser.add_argument("--encoder", default="resnet50")
    args = parser.parse_args(argv)

    def one(dataset: str, root: Path, work: Path) -> dict[str, Any]:
        count = args.epochs or (epochs or {}).get(dataset, 5)
        row = run_dataset(dataset, root, count, work, args.encoder)
        print(format_rows([row]).splitlines()[-1], flush=True)
        return row

    info, rows = over_datasets(args, f"bench-{name}-", one)
    print()
    print(format_rows(rows))
    path = write_results(args.json_out, info, rows, **extra)
    print(f"\nresults written to {path}")
    return 0
