"""``serve``: the HTTP service and web page for a checkpoint."""

from __future__ import annotations

import argparse
import shlex
from pathlib import Path

from unet_resnet.cli.common import build_segmenter, segmenter_arguments
from unet_resnet.cli.registry import command
from unet_resnet.errors import UnetResnetError
from unet_resnet.integrations.label_studio import TASK_SCORES


def _serve_arguments(parser: argparse.ArgumentParser) -> None:
    segmenter_arguments(parser)  # the server's defaults for every request
    parser.add_argument("--host", default="127.0.0.1", help="default loopback only")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--workers", type=int, default=1, help="inference threads")
    parser.add_argument("--queue-size", type=int, default=8, help="waiting requests before 503")
    parser.add_argument("--max-upload-mb", type=float, default=20.0, help="request body limit")
    parser.add_argument("--max-pixels", type=int, default=40_000_000, help="decoded image limit")
    parser.add_argument(
        "--max-decoded-mb",
        type=float,
        default=None,
        help="decoded array limit (default: 16 bytes per allowed pixel)",
    )
    parser.add_argument(
        "--body-timeout", type=float, default=30.0, help="seconds for a request body to arrive"
    )
    parser.add_argument(
        "--max-connections", type=int, default=64, help="open connections before 503"
    )
    parser.add_argument(
        "--model-name",
        default="unet-resnet",
        help="the model's name in the Open Inference Protocol routes (/v2/models/NAME)",
    )
    parser.add_argument(
        "--label-studio-root",
        default=None,
        metavar="DIR",
        help="Label Studio backend: task images may be files under DIR (never outside it)",
    )
    parser.add_argument(
        "--label-studio-train",
        action="store_true",
        help="Label Studio backend: on annotation webhooks, fine-tune the checkpoint on the "
        "project's finished annotations in the background (new checkpoint, serving unchanged)",
    )
    parser.add_argument(
        "--label-studio-train-dir",
        default="label-studio-runs",
        metavar="DIR",
        help="where fine-tuning runs go (one folder per project and run)",
    )
    parser.add_argument(
        "--label-studio-train-args",
        default="--epochs 10",
        metavar="FLAGS",
        help="extra `unet-resnet train` flags for fine-tuning, in quotes",
    )
    parser.add_argument(
        "--label-studio-max-tasks",
        type=int,
        default=64,
        help="Label Studio backend: tasks in one predict call",
    )
    parser.add_argument(
        "--label-studio-score",
        choices=tuple(TASK_SCORES),
        default="check",
        help="Label Studio backend: each task's prediction score (sort ascending): check = "
        "the mask's expected mIoU, the masks to check first; label = the share of its pixels "
        "expected right, the tasks to label first (predict --review-for label's order for "
        "images of one size)",
    )


@command(
    "serve",
    "HTTP service and web page for a checkpoint (FastAPI + uvicorn)",
    _serve_arguments,
    keeps_freed_memory=True,
)
def serve_command(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from unet_resnet.integrations.label_studio import LabelStudioSettings
        from unet_resnet.serve import create_app
    except ImportError:
        raise UnetResnetError(
            "Serving needs the serve extra: pip install 'unet-resnet[serve]'."
        ) from None
    if args.label_studio_root is not None and not Path(args.label_studio_root).is_dir():
        raise UnetResnetError(
            f"--label-studio-root {args.label_studio_root}: no such folder; name the folder "
            "that holds the task images."
        )
    finetune = {}
    if args.label_studio_train:
        source = Path(args.checkpoint[0])
        if len(args.checkpoint) != 1 or source.suffix != ".pt" or not source.is_file():
            raise UnetResnetError(
                "--label-studio-train fine-tunes one checkpoint from `unet-resnet train` (a .pt "
                f"file); got {' '.join(args.checkpoint)}."
            )
        try:
            train_args = tuple(shlex.split(args.label_studio_train_args))
        except ValueError as exc:
            raise UnetResnetError(f"--label-studio-train-args: {exc}.") from None
        finetune = dict(
            finetune_checkpoint=str(source),
            finetune_dir=args.label_studio_train_dir,
            finetune_args=train_args,
        )
    segmenter = build_segmenter(args)
    label_studio = LabelStudioSettings.from_env(
        **finetune,
        root=args.label_studio_root,
        max_tasks=args.label_studio_max_tasks,
        score=args.label_studio_score,
        model_version="unet-resnet-" + "+".join(Path(c).stem for c in args.checkpoint),
    )
    app = create_app(
        segmenter,
        max_upload_mb=args.max_upload_mb,
        max_pixels=args.max_pixels,
        workers=args.workers,
        queue_size=args.queue_size,
        max_decoded_mb=args.max_decoded_mb,
        body_timeout_s=args.body_timeout,
        model_name=args.model_name,
        label_studio_settings=label_studio,
    )
    url = f"http://{args.host}:{args.port}"
    print(f"serving {' + '.join(args.checkpoint)} on {url}/")
    print(f"  Open Inference Protocol: {url}/v2/models/{args.model_name}")
    print(f"  Label Studio ML backend: {url}/label-studio")
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        limit_concurrency=args.max_connections,  # bounds bodies held in memory at once
        timeout_keep_alive=5,
    )
    return 0
