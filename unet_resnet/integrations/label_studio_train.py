"""Fine-tuning from a Label Studio project's finished annotations, in the background.

When Label Studio's webhook says annotations changed (``serve --label-studio-train``), the
project's annotated tasks are exported from Label Studio, written as our folder layout, and
``unet-resnet train --init-from CHECKPOINT`` runs in a separate process: serving goes on with
the current model meanwhile, and the new checkpoint is reported (``GET
/label-studio/train``), never swapped in unasked. One job per project at a time; events during
a job start one more job after it (they are coalesced), so the newest annotations are always
trained on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from unet_resnet.errors import UnetResnetError
from unet_resnet.integrations.label_studio import (
    ImageFetcher,
    LabelStudioError,
    LabelStudioSettings,
    export_dataset,
    parse_config,
)

__all__ = ["FineTuneJob", "FineTuner"]

#: Largest project export read from Label Studio (its JSON, not the images).
MAX_EXPORT_BYTES = 256 * 2**20


@dataclass
class FineTuneJob:
    project: str
    state: str = "queued"  # queued | exporting | training | done | failed
    started: float | None = None
    finished: float | None = None
    folder: str | None = None
    images: dict[str, int] | None = None
    checkpoint: str | None = None
    error: str | None = None

    def describe(self) -> dict[str, Any]:
        return asdict(self)


class FineTuner:
    """Starts and tracks fine-tuning jobs (one thread each, training in a subprocess)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike,
        settings: LabelStudioSettings,
        class_names: list[str],
        work_dir: str | os.PathLike,
        *,
        train_args: list[str] | tuple[str, ...] = (),
        max_bytes: int = 20 * 2**20,
        max_pixels: int | None = None,
    ):
        self.checkpoint = Path(checkpoint)
        self.settings, self.class_names = settings, list(class_names)
        self.work_dir, self.train_args = Path(work_dir), list(train_args)
        self.images = ImageFetcher(settings, max_bytes, max_pixels)
        self.exports = ImageFetcher(settings, MAX_EXPORT_BYTES)
        self.jobs: list[FineTuneJob] = []
        self._lock = threading.Lock()
        self._pending: dict[str, str | None] = {}
        self._threads: list[threading.Thread] = []

    def request(self, project: Any, label_config: str | None) -> FineTuneJob:
        """A job for the project: started now, or (while one runs) one more after it."""
        project = str(project)
        with self._lock:
            running = next(
                (
                    j
                    for j in self.jobs
                    if j.project == project and j.state not in ("done", "failed")
                ),
                None,
            )
            if running is not None:
                self._pending[project] = label_config
                return running
            job = FineTuneJob(project)
            self.jobs.append(job)
        self._start(job, label_config)
        return job

    def describe(self) -> list[dict[str, Any]]:
        with self._lock:
            return [job.describe() for job in self.jobs]

    def wait(self, timeout: float | None = None) -> None:
        """Until every job started so far has ended (tests, shutdown)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                alive = [t for t in self._threads if t.is_alive()]
            if not alive:
                return
            alive[0].join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            if deadline is not None and time.monotonic() >= deadline:
                return

    # -- a job ---------------------------------------------------------------------------------
    def _start(self, job: FineTuneJob, label_config: str | None) -> None:
        thread = threading.Thread(
            target=self._run, args=(job, label_config), name=f"finetune-{job.project}", daemon=True
        )
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def _run(self, job: FineTuneJob, label_config: str | None) -> None:
        job.started, job.state = time.time(), "exporting"
        try:
            if not label_config:
                project = json.loads(
                    self.exports.from_label_studio(f"/api/projects/{int(job.project)}", job.project)
                )
                label_config = project.get("label_config")
            config = parse_config(label_config)
            tasks = json.loads(
                self.exports.from_label_studio(
                    f"/api/projects/{int(job.project)}/export?exportType=JSON"
                    "&download_all_tasks=false",
                    job.project,
                )
            )
            if not isinstance(tasks, list):
                raise LabelStudioError("Label Studio's export is not a list of tasks.")
            stamp = time.strftime("%Y%m%d-%H%M%S") + f"-{len(self.jobs)}"
            folder = self.work_dir / f"project-{job.project}" / stamp
            job.folder = str(folder)
            job.images = export_dataset(
                tasks, config, self.class_names, self.images, folder / "data"
            )
            job.state = "training"
            run = folder / "run"
            command = [sys.executable, "-m", "unet_resnet.cli", "train"]
            command += ["--data", str(folder / "data"), "--out", str(run)]
            command += ["--init-from", str(self.checkpoint), *self.train_args]
            with open(folder / "train.log", "w") as log:
                done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
            if done.returncode != 0:
                tail = (folder / "train.log").read_text().strip().splitlines()[-3:]
                raise UnetResnetError(
                    f"training exited with {done.returncode}: {' / '.join(tail)} "
                    f"(log: {folder / 'train.log'})"
                )
            best = run / "checkpoints" / "best.pt"
            job.checkpoint = str(best if best.is_file() else run / "checkpoints" / "last.pt")
            job.state = "done"
        except (UnetResnetError, ValueError, OSError) as exc:
            job.state, job.error = "failed", str(exc)
        finally:
            job.finished = time.time()
            with self._lock:
                pending = self._pending.pop(job.project, False)
                again = None
                if pending is not False:
                    again = FineTuneJob(job.project)
                    self.jobs.append(again)
            if again is not None:
                self._start(again, pending)
