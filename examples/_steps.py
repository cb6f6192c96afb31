"""The recipes' one helper: run ``unet-resnet`` commands in order, as a user would type them."""

from __future__ import annotations

from collections.abc import Sequence

from unet_resnet.cli import main
from unet_resnet.errors import UnetResnetError


def run_steps(steps: Sequence[Sequence[str]]) -> None:
    """Run each ``unet-resnet`` command, echoing it; stop at the first that fails."""
    for argv in steps:
        print("$ unet-resnet", " ".join(argv), flush=True)
        code = main(list(argv))
        if code != 0:
            raise UnetResnetError(
                f"step failed with exit code {code}: unet-resnet {' '.join(argv)}"
            )
