"""A made-up dataset layout in one module, as a newcomer would add one: its dataset, its
opener and the option it declares. Every other piece (the commands' flags, reading a split
with the option, saving it with a checkpoint) follows from the registration."""

from __future__ import annotations

from pathlib import Path

from unet_resnet.data.datasets import SegmentationFolder
from unet_resnet.data.layouts.base import LayoutOption, SplitOptions, register_layout


class EveryNth(SegmentationFolder):
    """The folder layout's pairs, every ``step``-th one."""

    def __init__(self, root: Path, split: str, step: int) -> None:
        super().__init__(root, split)
        self.pairs = self.pairs[::step]


@register_layout(
    "every-nth",
    "a folder layout that reads every n-th image",
    options=(LayoutOption("step", int, "every-nth: read every n-th image", 1, saved=True),),
)
def _open(root: Path, split: str, options: SplitOptions):
    if not (root / split / "images").is_dir():
        return None
    return EveryNth(root, split, options.option("step"))
