"""The Hugging Face Hub model card (``README.md``) of a shared model.

Built from plain dictionaries (the saved ``config.json``, the run's summary and resolved
config, evaluation scores), so it can be written by ``model.save_pretrained`` (what the model
alone knows) and by ``unet-resnet export --format hf`` (which also reads the run folder). The
YAML header is the Hub's model-card metadata: ``library_name``, ``pipeline_tag``, ``tags``,
``metrics`` and a ``model-index`` with the evaluation results.
"""

from __future__ import annotations

import math
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

__all__ = ["LIBRARY_NAME", "build_model_card"]

LIBRARY_NAME = "unet-resnet"


def _pct(value: Any) -> str:
    if not isinstance(value, int | float) or math.isnan(value):
        return "-"
    return f"{100 * value:.1f}"


def _scores_section(scores: dict[str, Any], split: str) -> list[str]:
    lines = [
        f"## Evaluation ({split})",
        "",
        f"mIoU **{_pct(scores.get('miou'))}%**, mean Dice {_pct(scores.get('mean_dice'))}%, "
        f"pixel accuracy {_pct(scores.get('pixel_accuracy'))}%.",
        "",
    ]
    per_class = scores.get("per_class") or {}
    if per_class:
        lines += ["| class | IoU % | Dice % |", "|---|---|---|"]
        for name, row in per_class.items():
            lines.append(f"| {name} | {_pct(row.get('iou'))} | {_pct(row.get('dice'))} |")
        lines.append("")
    return lines


def build_model_card(
    config: dict[str, Any],
    *,
    repo_id: str | None = None,
    scores: dict[str, Any] | None = None,
    scores_split: str = "validation",
    summary: dict[str, Any] | None = None,
    train_config: dict[str, Any] | None = None,
    parameters: int | None = None,
) -> ModelCard:
    """A model card for a model whose ``config.json`` is ``config``.

    Args:
        config: architecture, classes, normalisation (what ``save_pretrained`` writes).
        repo_id: the Hub repo or folder name used in the usage lines.
        scores: ``scores.json`` of ``unet-resnet evaluate`` (or the best validation scores).
        scores_split: which split ``scores`` were measured on.
        summary: the run's ``summary.json``.
        train_config: the run's resolved ``config.yaml``.
        parameters: number of parameters.
    """
    where = repo_id or "MODEL_DIR_OR_REPO"
    classes = config.get("classes") or {}
    names = list(classes.get("names") or [f"class_{i}" for i in range(config["n_classes"])])
    colors = classes.get("colors") or []
    encoder = config.get("encoder", "resnet50")
    train = train_config or {}
    eval_results = []
    if scores:
        for metric, key in (("mean_iou", "miou"), ("dice", "mean_dice")):
            value = scores.get(key)
            if isinstance(value, int | float) and not math.isnan(value):
                eval_results.append(
                    EvalResult(
                        task_type="image-segmentation",
                        dataset_type="custom",
                        dataset_name=str(train.get("data") or "custom"),
                        dataset_split=scores_split,
                        metric_type=metric,
                        metric_value=round(float(value), 6),
                    )
                )
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag="image-segmentation",
        tags=["image-segmentation", "semantic-segmentation", "unet", "pytorch", encoder],
        metrics=["mean_iou", "dice"],
        model_name=repo_id or "unet-resnet model",
        eval_results=eval_results or None,
    )
    weights = train.get("encoder_weights")
    lines = [
        "---",
        data.to_yaml(),
        "---",
        "",
        f"# {repo_id or 'U-Net segmentation model'}",
        "",
        f"Semantic segmentation into {len(names)} classes with a U-Net on a `{encoder}` encoder "
        "(the U-Net of `unet-resnet`, after the guide's `UNetWithResnet50Encoder`).",
        "",
        *(
            [
                "Multilabel: classes may overlap; each has its own sigmoid output and a pixel "
                "has a class where its probability reaches the class's threshold "
                f"({config.get('thresholds') or 'default 0.5'}); predictions are one binary "
                "mask per class.",
                "",
            ]
            if config.get("task") == "multilabel"
            else []
        ),
        "## Classes",
        "",
        "| index | name | colour |",
        "|---|---|---|",
    ]
    for i, name in enumerate(names):
        colour = "#" + "".join(f"{int(v):02x}" for v in colors[i]) if i < len(colors) else "-"
        lines.append(f"| {i} | {name} | `{colour}` |")
    ignore = classes.get("ignore_index")
    lines.append("")
    if ignore is not None:
        lines += [f"Mask value {ignore} means unlabelled: ignored in training and scoring.", ""]
    start = {
        None: "random initialisation",
        "none": "random initialisation",
        "imagenet": "ImageNet weights",
    }.get(weights, f"`{weights}`")
    lines += [
        "## Model",
        "",
        f"- Encoder: `{encoder}`" + (f", trained from {start}" if train else ""),
        f"- Input channels: {config.get('in_channels')}; decoder widths "
        f"{config.get('decoder_channels')}; upsampling `{config.get('upsampling_method')}`",
    ]
    if parameters:
        lines.append(f"- Parameters: {parameters / 1e6:.1f} M")
    lines += [
        "",
        "## Input",
        "",
        f"- Normalisation: (pixel / scale - mean) / std with mean {config.get('mean')} and std "
        f"{config.get('std')} (scale: 255 for 8-bit images; `unet-resnet` applies it).",
        f"- Trained on {config.get('image_dtype') or 'unknown-type'} images, crops of "
        f"{config.get('image_size')} px; any height and width works (padded to a multiple of "
        "32 and cropped back); large images can be tiled (`--tile-size`).",
        "",
    ]
    if summary or train:
        lines += ["## Training", ""]
        if train.get("data"):
            lines.append(f"- Data: `{train['data']}` ({train.get('dataset', 'folder')} layout)")
        if summary and summary.get("train_images") is not None:
            lines.append(
                f"- Images: {summary['train_images']} training, "
                f"{summary.get('val_images', '?')} validation"
            )
        if summary:
            lines.append(
                f"- Epochs: {summary.get('epochs_completed')}, best epoch "
                f"{summary.get('best_epoch')}, {summary.get('seconds')} s, precision "
                f"{summary.get('precision')}"
            )
            if summary.get("command"):
                lines += ["", "```bash", summary["command"], "```"]
        if train:
            keys = ("epochs", "batch_size", "lr", "optimizer", "scheduler", "loss", "augment")
            lines.append("\n- Recipe: " + ", ".join(f"{k} {train[k]}" for k in keys if k in train))
        lines.append("")
    if scores:
        lines += _scores_section(scores, scores_split)
    lines += [
        "## Use it",
        "",
        "```bash",
        "pip install unet-resnet",
        f"unet-resnet predict IMAGES/ --checkpoint {where} --out predictions/",
        "```",
        "",
        "```python",
        "from unet_resnet import Segmenter, UNetWithResnet50Encoder",
        "",
        f'segmenter = Segmenter.from_pretrained("{where}")  # classes and normalisation included',
        'mask = segmenter.predict_file("image.png")',
        f'model = UNetWithResnet50Encoder.from_pretrained("{where}")  # the bare nn.Module',
        "```",
        "",
        "## Intended use and limitations",
        "",
        "Segmenting images like the training data (same sensor, resolution, classes). Scores "
        "above were measured on the split named, which may not represent your images: check on "
        "a labelled sample of your own before relying on it, and do not use it for clinical or "
        "safety-critical decisions without a validation of your own. Classes not in the table "
        "are predicted as one of those in it.",
        "",
    ]
    return ModelCard("\n".join(lines))
