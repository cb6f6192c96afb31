"""Prediction at scale: ``predict --engine ray`` spreads inputs over Ray actors.

Each worker is a Ray actor that builds one :class:`~unet_resnet.inference.Segmenter` and runs
:func:`~unet_resnet.inference.files.predict_one` per input, exactly what the local engine runs,
so outputs are identical. Inputs go out largest first, at most two in flight per worker; an
actor whose process dies is restarted by Ray and its in-flight inputs retried
(``max_restarts`` / ``max_task_retries``). Outputs are written atomically by the worker.

A run record (``OUT/.unet-resnet-run.jsonl``, one line per finished input with the model's
hash) makes a rerun skip the inputs already done by the same model; ``--overwrite`` redoes
everything. The job ends with a report (``OUT/predict_report.json``): inputs done, skipped and
failed (with reasons), seconds, and throughput per worker.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unet_resnet.accel.memory import keep_freed_memory
from unet_resnet.errors import ConfigError, UnetResnetError
from unet_resnet.hardware import device_class
from unet_resnet.inference.files import OutputPaths, PredictPlan, PredictReport
from unet_resnet.inference.review import write_report
from unet_resnet.io import remove_partials

__all__ = ["RunRecord", "decided_once", "model_hash", "predict_with_ray", "read_manifest"]

RECORD_FILE = ".unet-resnet-run.jsonl"


def read_manifest(path: str | os.PathLike) -> list[str]:
    """Inputs listed one per line (blank lines and ``#`` comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise ConfigError(f"Cannot read --manifest {path}: {exc.strerror or exc}") from None
    items = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    remote = [item for item in items if "://" in item]
    if remote:
        raise ConfigError(
            f"--manifest {path} lists URIs ({remote[0]}, ...): inputs must be paths every "
            "worker can read (local disk or shared storage mounted on each node)."
        )
    return items


def model_hash(checkpoints: Sequence[str | os.PathLike]) -> str:
    """A hash of the model files (a folder: its files), so that outputs of another model never
    count as done."""
    digest = hashlib.sha256()
    for checkpoint in checkpoints:
        path = Path(checkpoint)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if not file.exists():
                digest.update(str(file).encode())  # a Hub repo id: its name
                continue
            with open(file, "rb") as f:
                for block in iter(lambda f=f: f.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()[:16]


@dataclass
class RunRecord:
    """The finished inputs of an output folder, per model hash (append-only JSON lines)."""

    out: Path
    done: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, out: Path) -> RunRecord:
        record = cls(out)
        path = out / RECORD_FILE
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    record.done[entry["input"]] = entry["model"]
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut by a crash: that input is simply redone
        return record

    def is_done(self, path: Path, outputs: OutputPaths, model: str) -> bool:
        return self.done.get(str(path)) == model and all(p.is_file() for p in outputs.paths())

    def add(self, path: Path, model: str) -> None:
        self.done[str(path)] = model
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / RECORD_FILE, "a") as f:
            f.write(json.dumps({"input": str(path), "model": model}) + "\n")
            f.flush()
            os.fsync(f.fileno())


class _Worker:
    """A Ray actor's state: one Segmenter, built once."""

    def __init__(self, checkpoints: list[str], options: dict[str, Any], threads: int) -> None:
        import torch

        from unet_resnet.inference import Segmenter

        torch.set_num_threads(max(1, threads))
        source = checkpoints if len(checkpoints) > 1 else checkpoints[0]
        self.segmenter = Segmenter.from_checkpoint(source, **options)
        # The actor's process only predicts: freed activations are kept for the next file.
        self._memory = contextlib.ExitStack()
        # (a CPU trick: off where the model runs on a GPU)
        self.kept_memory = self._memory.enter_context(
            keep_freed_memory(device_class(self.segmenter.device).cpu_memory_reuse)
        )

    def predict(
        self,
        path: str,
        outputs: dict,
        fmt: str | None,
        slice_axis: int | None,
        simplify: float | None,
    ):
        from unet_resnet.inference.files import predict_one

        start = time.perf_counter()
        paths = OutputPaths(**{k: None if v is None else Path(v) for k, v in outputs.items()})
        try:
            quality = predict_one(
                self.segmenter,
                Path(path),
                paths,
                fmt=fmt,
                slice_axis=slice_axis,
                simplify=simplify,
            )
            error = None
        except UnetResnetError as exc:
            error, quality = str(exc), None
        return {
            "input": path,
            "error": error,
            "quality": quality,
            "seconds": time.perf_counter() - start,
            "worker": os.getpid(),
        }


def decided_once(
    checkpoints: Sequence[str], options: dict[str, Any], gpus_per_worker: float = 0
) -> dict[str, Any]:
    """The Segmenter options with the run's backend and fast-path choice made here, once:
    CPU workers then apply them instead of each timing the candidates with its own thread
    count (and perhaps choosing differently: their masks would differ from the local
    engine's). GPU workers have nothing timed to decide."""
    from dataclasses import asdict

    from unet_resnet.inference import Segmenter

    if gpus_per_worker or options.get("fastpath") is not None:
        return options
    source = checkpoints if len(checkpoints) > 1 else checkpoints[0]
    local = {k: v for k, v in options.items() if k not in ("device", "progress")}
    segmenter = Segmenter.from_checkpoint(source, device="cpu", **local)
    decided = dict(options)
    if segmenter.backend.source != "fixed":  # backends were timed: every worker runs this one
        decided["backend"] = segmenter.backend.name
    if segmenter.backend.name == "torch" and (
        segmenter.fastpath.source != "fixed" or segmenter.fastpath.timings
    ):
        decided["fastpath"] = asdict(segmenter.fastpath)
    return decided


def predict_with_ray(
    plan: PredictPlan,
    checkpoints: Sequence[str],
    options: dict[str, Any],
    *,
    model: str,
    address: str | None = None,
    workers: int | None = None,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    slice_axis: int | None = None,
    simplify: float | None = None,
    progress: bool = True,
) -> PredictReport:
    """Predict the inputs of ``plan`` on Ray actors (see the module docstring)."""
    try:
        import ray
    except ImportError:
        raise ConfigError(
            "--engine ray needs Ray: pip install 'unet-resnet[ray]' (or use --engine local)."
        ) from None
    from tqdm.auto import tqdm

    start = time.perf_counter()
    plan.out.mkdir(parents=True, exist_ok=True)
    remove_partials(plan.out)
    report = PredictReport(
        failed=[(m, "no such file, folder or matching glob") for m in plan.missing]
    )
    record = RunRecord.read(plan.out)
    formats = plan.formats or [None] * len(plan.files)
    todo = sorted(
        zip(plan.files, plan.outputs, formats, strict=True), key=lambda item: -_size(item[0])
    )
    if not ray.is_initialized():
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    options = decided_once(checkpoints, options, gpus_per_worker)
    count = worker_count(
        ray.cluster_resources(),
        inputs=len(todo),
        workers=workers,
        cpus_per_worker=cpus_per_worker,
        gpus_per_worker=gpus_per_worker,
    )
    # Our own settings (offline mode, cache folder) reach the workers as they are here.
    env = {k: v for k, v in os.environ.items() if k.startswith("UNET_RESNET_")}
    actor = ray.remote(
        num_cpus=cpus_per_worker,
        num_gpus=gpus_per_worker,
        max_restarts=-1,
        max_task_retries=3,
        runtime_env={"env_vars": env} if env else None,
    )(_Worker)
    threads = max(1, int(cpus_per_worker))
    pool = [actor.remote(list(checkpoints), options, threads) for _ in range(count)]
    pending: dict[Any, tuple[int, Path, OutputPaths]] = {}
    queue = list(todo)
    per_worker: dict[int, list[float]] = {}
    bar = tqdm(total=len(todo), desc="predict (ray)", unit="file", disable=not progress)

    def submit(index: int) -> None:
        path, paths, fmt = queue.pop(0)
        outputs = {k: None if v is None else str(v) for k, v in paths.__dict__.items()}
        # the format the plan decided travels with the input: the worker does not re-detect
        ref = pool[index].predict.remote(str(path), outputs, fmt, slice_axis, simplify)
        pending[ref] = (index, path, paths)

    for index in range(count):
        for _ in range(2):  # two in flight per worker: no idle gap between inputs
            if queue:
                submit(index)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        index, path, paths = pending.pop(ready[0])
        try:
            result = ray.get(ready[0])
        except Exception as exc:  # the actor died more often than it may be restarted
            result = {"input": str(path), "error": f"worker failed: {exc}", "seconds": 0.0}
        if result["error"] is None:
            record.add(path, model)
            report.written.append(paths.mask)
            if result.get("quality") is not None:
                report.quality[str(path)] = result["quality"]
            per_worker.setdefault(result["worker"], []).append(result["seconds"])
        else:
            report.failed.append((str(path), result["error"]))
        bar.update()
        bar.set_postfix(failed=len(report.failed))
        if queue:
            submit(index)
    bar.close()
    seconds = time.perf_counter() - start
    summary = {
        "engine": "ray",
        "workers": count,
        "inputs": len(plan.files) + len(plan.skipped),
        "done": len(report.written),
        "skipped": [str(p) for p in plan.skipped],
        "failed": [{"input": name, "reason": reason} for name, reason in report.failed],
        "seconds": round(seconds, 3),
        "inputs_per_second": round(len(report.written) / seconds, 4) if seconds else None,
        "per_worker": {
            str(pid): {"inputs": len(times), "busy_seconds": round(sum(times), 3)}
            for pid, times in per_worker.items()
        },
        "model": model,
    }
    write_report(plan.out, report.quality, summary)
    return report


def worker_count(
    resources: dict[str, float],
    *,
    inputs: int,
    workers: int | None,
    cpus_per_worker: float,
    gpus_per_worker: float,
) -> int:
    """How many actors to start: ``workers`` when given, else as many as the cluster's CPUs
    and GPUs can hold at once (an actor that cannot be placed never starts, and the inputs
    handed to it would wait for ever), at most one per input. Asking for GPUs the cluster
    does not have, or for more workers than it can place, is an error that says so."""
    cpus = float(resources.get("CPU", 1))
    gpus = float(resources.get("GPU", 0))
    if gpus_per_worker > 0 and gpus < gpus_per_worker:
        raise ConfigError(
            f"--gpus-per-worker {gpus_per_worker:g}, but the Ray cluster has {gpus:g} GPU(s). "
            "Start Ray on GPU machines, lower --gpus-per-worker, or leave it at 0 for CPUs."
        )
    fits = int(cpus // max(cpus_per_worker, 1e-3))
    if gpus_per_worker > 0:
        fits = min(fits, int(gpus // gpus_per_worker))
    if workers is not None:
        if workers > max(fits, 1):
            raise ConfigError(
                f"--workers {workers} cannot all start: the Ray cluster holds {fits} worker(s) "
                f"of --cpus-per-worker {cpus_per_worker:g} and --gpus-per-worker "
                f"{gpus_per_worker:g} ({cpus:g} CPUs, {gpus:g} GPUs). Ask for fewer, or leave "
                "--workers out to use as many as fit."
            )
        return workers
    return max(1, min(inputs, fits))


def _size(path: Path) -> int:
    try:
        if path.is_dir():
            return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
        return path.stat().st_size
    except OSError:
        return 0
