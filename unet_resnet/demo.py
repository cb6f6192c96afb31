"""``unet-resnet demo``: the whole workflow on the built-in dataset, in a few minutes on a CPU.

Makes the synthetic dataset, trains the guide's model (U-Net on ResNet-50, Adam lr 1e-3,
cross-entropy), evaluates it, predicts held-out images with coloured overlays, and prints
where everything is.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_resnet.data import make_demo_dataset
from unet_resnet.errors import WeightsUnavailableError
from unet_resnet.models.encoders import build_encoder
from unet_resnet.models.weights import warn_random_init

__all__ = ["DemoResult", "run_demo"]


@dataclass
class DemoResult:
    run_dir: Path
    checkpoint: Path
    scores: dict[str, Any]
    overlays: list[Path]
    seconds: float
    pretrained: bool


def _imagenet_available(encoder: str) -> bool:
    try:
        build_encoder(encoder, weights="imagenet")  # any family: torchvision or tu-NAME
        return True
    except WeightsUnavailableError as exc:
        warn_random_init(encoder, exc)
        return False


def run_demo(
    out: str | Path = "demo_run",
    *,
    encoder: str = "resnet50",
    epochs: int = 8,
    image_size: int = 96,
    n_train: int = 192,
    n_val: int = 32,
    n_test: int = 6,
    batch_size: int = 8,
    max_minutes: float | None = 8.0,
    seed: int = 0,
    workers: int = 2,
    progress: bool = True,
) -> DemoResult:
    """Run the demo; every default is chosen to finish within 10 minutes on 2 CPU cores."""
    from unet_resnet.inference import Segmenter
    from unet_resnet.inference.evaluate import evaluate, plot_confusion_matrix, write_scores_json
    from unet_resnet.training import TrainConfig, train

    start = time.perf_counter()
    out = Path(out)
    data = out / "data"
    if not (data / "classes.json").is_file():
        make_demo_dataset(data, n_train, n_val, image_size, seed, n_test=n_test)
    pretrained = _imagenet_available(encoder)
    config = TrainConfig(
        data=str(data),
        out=str(out / "run"),
        encoder=encoder,
        encoder_weights="imagenet" if pretrained else None,
        image_size=image_size,
        batch_size=batch_size,
        epochs=epochs,
        workers=workers,
        seed=seed,
        max_minutes=max_minutes,
        overwrite=True,  # the demo replaces its own earlier run
        log_images_every=2,
        progress=progress,
    )
    result = train(config)
    segmenter = Segmenter.from_checkpoint(result.best_checkpoint)
    from unet_resnet.data import SegmentationFolder

    scores = evaluate(segmenter, SegmentationFolder(data, "val"), progress=progress)
    write_scores_json(scores, out / "evaluation" / "scores.json")
    plot_confusion_matrix(scores, out / "evaluation" / "confusion_matrix.png")
    overlays = []
    predictions = out / "predictions"
    for image in sorted((data / "test" / "images").glob("*.png")):
        overlay = predictions / f"{image.stem}_overlay.png"
        segmenter.predict_file(image, predictions / f"{image.stem}.png", overlay=overlay)
        overlays.append(overlay)
    return DemoResult(
        run_dir=out,
        checkpoint=result.best_checkpoint,
        scores=scores,
        overlays=overlays,
        seconds=time.perf_counter() - start,
        pretrained=pretrained,
    )
