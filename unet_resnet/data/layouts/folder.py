"""The folder layout: ``DATA/{train,val,test}/{images,masks}`` (+ ``classes.json``), or
per-class masks for ``--task multilabel``."""

from __future__ import annotations

from pathlib import Path

from unet_resnet.data.datasets import SegmentationFolder
from unet_resnet.data.layouts.base import SplitOptions, register_layout

__all__: list[str] = []


def _check(root: Path, options: SplitOptions, progress: bool):
    from unet_resnet.data.checks import check_dataset, check_multilabel

    return (check_multilabel if options.multilabel else check_dataset)(
        root, num_classes=options.num_classes, classes=options.classes, progress=progress
    )


@register_layout(
    "folder",
    "DATA/{train,val,test}/{images,masks} (+ classes.json); multilabel: "
    "masks/CLASSNAME/NAME.png or masks/NAME.tif with a band per class",
    check=_check,
    multilabel=True,
)
def _open(root: Path, split: str, options: SplitOptions):
    if not (root / split / "images").is_dir():
        return None
    if options.multilabel:
        from unet_resnet.data.multilabel import MultiLabelFolder

        return MultiLabelFolder(root, split, classes=options.resolve_classes(root))
    return SegmentationFolder(root, split, num_classes=options.num_classes, classes=options.classes)
