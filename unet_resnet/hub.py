"""Share a trained model the way the ecosystem does: a Hugging Face Hub-style folder or repo.

``export_hf(checkpoint, out)`` writes ``config.json`` + ``model.safetensors`` + a ``README.md``
model card built from the run folder the checkpoint came from (``summary.json``,
``config.yaml``, ``evaluation/scores.json`` when present), and can upload it with
``push_to_hub``. Loading is ``Segmenter.from_pretrained`` / ``UNetWithResnet50Encoder
.from_pretrained`` / ``--checkpoint DIR_OR_REPO``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from unet_resnet.checkpoint import load_checkpoint
from unet_resnet.errors import OutputExistsError, UnetResnetError
from unet_resnet.models.card import build_model_card
from unet_resnet.models.weights import hub_offline_reason

__all__ = ["HubExport", "HubPushError", "export_hf", "find_run_dir", "push_folder"]


class HubPushError(UnetResnetError):
    """Uploading to the Hugging Face Hub failed (offline, no token, no permission)."""


@dataclass
class HubExport:
    path: Path
    run_dir: Path | None
    scores_from: str | None
    url: str | None = None


def find_run_dir(checkpoint: Path) -> Path | None:
    """The run folder of ``RUN/checkpoints/best.pt`` (it holds ``summary.json`` or
    ``config.yaml``), or ``None``."""
    for candidate in (checkpoint.parent.parent, checkpoint.parent):
        if (candidate / "summary.json").is_file() or (candidate / "config.yaml").is_file():
            return candidate
    return None


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_yaml(path: Path) -> dict[str, Any] | None:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data if isinstance(data, dict) else None


def export_hf(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    run_dir: str | os.PathLike | None = None,
    scores: str | os.PathLike | None = None,
    repo_id: str | None = None,
    overwrite: bool = False,
) -> HubExport:
    """Write the shared-model folder ``out`` for ``checkpoint``.

    Args:
        run_dir: the training run folder (default: found from the checkpoint's path).
        scores: an ``evaluate`` ``scores.json`` for the card (default:
            ``RUN/evaluation/scores.json`` if present, else the best validation scores kept in
            the checkpoint).
        repo_id: the Hub repo name shown in the card's usage lines.
        overwrite: replace an existing ``out`` (never the checkpoint's own folder).
    """
    checkpoint = Path(checkpoint)
    out = Path(out)
    if out.exists():
        if checkpoint.resolve().is_relative_to(out.resolve()):
            raise OutputExistsError(
                f"--out {out} holds the checkpoint {checkpoint} it is exported from; choose "
                "another folder."
            )
        if not overwrite:
            raise OutputExistsError(
                f"{out} already exists; pass --overwrite to replace it, or choose another --out."
            )
    model, meta = load_checkpoint(checkpoint)
    run = Path(run_dir) if run_dir is not None else find_run_dir(checkpoint)
    summary = _read_json(run / "summary.json") if run else None
    train_config = _read_yaml(run / "config.yaml") if run else None
    scores_path = Path(scores) if scores else (run / "evaluation" / "scores.json" if run else None)
    card_scores, split, scores_from = None, "validation", None
    if scores_path is not None and scores_path.is_file():
        card_scores, split, scores_from = _read_json(scores_path), "test", str(scores_path)
    elif isinstance(meta.extra.get("val"), dict):
        card_scores, scores_from = meta.extra["val"], f"{checkpoint} (best validation epoch)"
    card = build_model_card(
        {**model.hub_metadata, **model.config},
        repo_id=repo_id or out.name,
        scores=card_scores,
        scores_split=split,
        summary=summary,
        train_config=train_config,
        parameters=sum(p.numel() for p in model.parameters()),
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial.", dir=out.parent))
    try:
        card.save(str(staging / "README.md"))  # save_pretrained keeps an existing card
        model.save_pretrained(staging)
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return HubExport(out, run, scores_from)


def push_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None) -> str:
    """Upload a shared-model folder to the Hub repo ``repo_id`` (created if needed); returns the
    commit URL. Offline or failing, one :class:`HubPushError` naming the repo."""
    reason = hub_offline_reason()
    if reason is None:
        try:
            from huggingface_hub import HfApi

            api = HfApi()
            repo = api.create_repo(repo_id=repo_id, private=private, exist_ok=True).repo_id
            commit = api.upload_folder(
                repo_id=repo,
                folder_path=str(folder),
                commit_message="Upload unet-resnet model",
            )
            return str(getattr(commit, "commit_url", commit))
        except Exception as exc:  # network, auth, permissions: one line
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise HubPushError(
        f"Could not push {folder} to the Hugging Face Hub repo {repo_id} ({reason}). The folder "
        "is complete: upload it later with `huggingface-cli upload "
        f"{repo_id} {folder}` after `huggingface-cli login` on a machine with internet."
    )
