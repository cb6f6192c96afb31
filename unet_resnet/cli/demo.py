"""``demo``: the main job, end to end on the built-in dataset."""

from __future__ import annotations

import argparse

from unet_resnet.cli.registry import command


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="demo_run", help="run folder (default: demo_run)")
    parser.add_argument("--encoder", default="resnet50", help="the guide's resnet50 by default")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--n-train", type=int, default=192)
    parser.add_argument("--max-minutes", type=float, default=8.0, help="training time cap")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


@command(
    "demo",
    "the main job: make the demo dataset, train, evaluate, predict, summarise",
    _demo_arguments,
)
def demo(args: argparse.Namespace) -> int:
    from unet_resnet.demo import run_demo
    from unet_resnet.inference.evaluate import format_scores

    result = run_demo(
        args.out,
        encoder=args.encoder,
        epochs=args.epochs,
        image_size=args.image_size,
        n_train=args.n_train,
        max_minutes=args.max_minutes,
        workers=args.workers,
        progress=not args.quiet,
    )
    run = result.run_dir
    print()
    print(format_scores(result.scores))
    print()
    print(
        f"Demo finished in {result.seconds / 60:.1f} min "
        f"({'ImageNet' if result.pretrained else 'random'} encoder init): "
        f"validation mIoU {100 * result.scores['miou']:.1f}%."
    )
    print(f"  checkpoint:        {result.checkpoint}")
    print(f"  metrics & curves:  {run / 'run' / 'metrics.csv'}, {run / 'run' / 'curves.png'}")
    print(f"  evaluation:        {run / 'evaluation'} (scores.json, confusion_matrix.png)")
    print(f"  overlays:          {run / 'predictions'} ({len(result.overlays)} images)")
    print(f"  TensorBoard:       tensorboard --logdir {run / 'run' / 'tensorboard'}")
    return 0
