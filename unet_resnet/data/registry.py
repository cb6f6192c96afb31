"""Dataset layouts: one table from a layout name to how a split is opened and checked.

The training data module, ``evaluate``, ``check-data``, the config's allowed values and the
command-line choices all read :data:`LAYOUTS`; adding a layout is one :func:`register_layout`
call here (or in a module imported here).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unet_resnet.data.classes import ClassInfo, DataError, resolve_classes
from unet_resnet.data.datasets import (
    Cityscapes,
    OxfordIIITPet,
    RasterWindowDataset,
    SegmentationFolder,
    VOCSegmentation,
    folder_pairs,
)

__all__ = [
    "LAYOUTS",
    "LAYOUT_OPTIONS",
    "Layout",
    "LayoutOption",
    "SplitOptions",
    "check_layout",
    "checkable_layouts",
    "get_layout",
    "layout_names",
    "open_split",
    "register_layout",
    "volume_layouts",
]


@dataclass(frozen=True)
class LayoutOption:
    """An option a dataset layout reads, declared once: the commands that read a split
    (``evaluate``, ``check-data``, ``predict`` for volume input) generate their flags from
    it, and ``saved`` options go into the checkpoint (``CheckpointMeta.split``) so that
    every later command reads the split as it was trained unless its flag says otherwise."""

    name: str  # the SplitOptions field (and TrainConfig field) it sets
    type: Callable[[str], Any]
    help: str
    choices: tuple[str, ...] | None = None
    saved: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


#: Every layout option; each layout lists the ones it reads (``Layout.options``).
LAYOUT_OPTIONS: dict[str, LayoutOption] = {
    o.name: o
    for o in (
        LayoutOption("slice_axis", int, "nifti: axis the 2D slices are taken along", saved=True),
        LayoutOption(
            "annotations", str, "coco: annotation file ({split} is replaced by the split name)"
        ),
        LayoutOption(
            "crowd",
            str,
            "coco: crowd regions become ignore_index, or their class",
            choices=("ignore", "class"),
            saved=True,
        ),
        LayoutOption("labels", str, "raster: vector label file for every split"),
        LayoutOption(
            "label_field",
            str,
            "raster: the --labels attribute with class names or codes",
            saved=True,
        ),
    )
}


@dataclass(frozen=True)
class SplitOptions:
    """Everything a layout may need to open a split; each layout reads what applies to it.

    Args:
        num_classes: for layouts whose root may lack a classes file.
        classes: use these classes instead of the root's (e.g. a checkpoint's).
        image_size: raster layouts: window side (or ``(h, w)``).
        slice_axis: volume layouts: the axis 2D slices are taken along.
        samples_per_epoch: raster layouts: random windows per training epoch.
        annotations: coco: the annotation file (``{split}`` is replaced by the split name).
        crowd: coco: crowd regions become ``ignore`` (default) or their ``class``.
        labels, label_field: raster: one vector label file for every split (GeoJSON,
            GeoPackage, Shapefile, FlatGeobuf) and the attribute holding the class.
        context_slices, intensity: nifti: 2.5D neighbours per side and the
            :class:`~unet_resnet.data.medical.IntensityRule` (or None).
        task: ``multiclass`` (one class per pixel) or ``multilabel`` (a binary mask per
            class, :mod:`unet_resnet.data.multilabel`); only layouts registered with
            ``multilabel=True`` read the latter.
    """

    num_classes: int | None = None
    classes: ClassInfo | None = None
    image_size: int | tuple[int, int] | list[int] = 512
    slice_axis: int = 2
    samples_per_epoch: int = 1000
    annotations: str | None = None
    crowd: str = "ignore"
    labels: str | None = None
    label_field: str | None = None
    context_slices: int = 0
    intensity: Any = None
    target_spacing: float | None = None
    task: str = "multiclass"

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def for_checkpoint(
        self,
        classes: ClassInfo,
        volume: dict | None,
        task: str = "multiclass",
        split: dict | None = None,
        given: Mapping[str, Any] | None = None,
    ) -> SplitOptions:
        """These options read the way a checkpoint was trained: its classes and task, for
        volumes its slice axis, 2.5D context, intensity rule and target spacing
        (``CheckpointMeta.volume``), and the saved layout options (``CheckpointMeta.split``:
        crowd rule, label field, ...); then the options the user ``given`` (flags that were
        set), which win."""
        from dataclasses import replace

        from unet_resnet.data.medical import IntensityRule

        volume = volume or {}
        saved = {
            name: value
            for name, value in (split or {}).items()
            if name in LAYOUT_OPTIONS and LAYOUT_OPTIONS[name].saved and value is not None
        }
        if volume.get("slice_axis") is not None:
            saved.setdefault("slice_axis", int(volume["slice_axis"]))
        return replace(
            self,
            classes=classes,
            task=task,
            context_slices=int(volume.get("context_slices") or 0),
            intensity=IntensityRule.from_dict(volume.get("intensity")),
            target_spacing=volume.get("target_spacing"),
            **saved,
        ).overridden(given or {})

    def overridden(self, values: Mapping[str, Any]) -> SplitOptions:
        """These options with every layout option in ``values`` that is set (not None)."""
        from dataclasses import replace

        set_ = {k: v for k, v in values.items() if k in LAYOUT_OPTIONS and v is not None}
        return replace(self, **set_) if set_ else self

    def to_save(self, layout: str) -> dict[str, Any]:
        """What the checkpoint keeps to read ``layout``'s splits again: the layout's name and
        its saved options."""
        entry = get_layout(layout)
        return {
            "layout": layout,
            **{name: getattr(self, name) for name in entry.options if LAYOUT_OPTIONS[name].saved},
        }

    def vector_labels(self, classes: ClassInfo):
        """raster layouts: the ``labels`` file as :class:`VectorLabels`, or None."""
        if not self.labels:
            return None
        from unet_resnet.data.vector import VectorLabels

        return VectorLabels(self.labels, self.label_field, classes)

    def resolve_classes(self, root: Path) -> ClassInfo:
        if self.classes is not None:
            return self.classes
        if self.multilabel:
            from unet_resnet.data.multilabel import multilabel_classes

            return multilabel_classes(root, self.num_classes)
        return resolve_classes(root, self.num_classes)


# open(root, split, options) -> a dataset with .load(i) and .classes, or None when the split
# is absent; check(root, options, progress) -> a DataReport.
Opener = Callable[[Path, str, SplitOptions], Any]
Checker = Callable[[Path, SplitOptions, bool], Any]


@dataclass(frozen=True)
class Layout:
    name: str
    description: str
    open: Opener
    check: Checker | None = None
    #: reads per-class binary masks for ``task="multilabel"``
    multilabel: bool = False
    #: its images have an up and a down (photos); False for overhead imagery and scan
    #: slices, which ``orientation="auto"`` then also flips top-bottom
    upright: bool = True
    #: the :data:`LAYOUT_OPTIONS` it reads
    options: tuple[str, ...] = ()
    #: reads volumes as 2D slices: takes the volume options (2.5D context, intensity rule,
    #: resampling, foreground oversampling) and saves them with the checkpoint
    volumes: bool = False


LAYOUTS: dict[str, Layout] = {}


def register_layout(
    name: str,
    description: str,
    *,
    check: Checker | None = None,
    multilabel: bool = False,
    upright: bool = True,
    options: tuple[str, ...] = (),
    volumes: bool = False,
) -> Callable[[Opener], Opener]:
    """Register ``open`` as the opener of layout ``name`` (and ``check`` as its checker);
    ``multilabel``: it also reads per-class masks (``SplitOptions.task == "multilabel"``);
    ``upright=False``: its images have no up and down (overhead imagery, scan slices);
    ``options``: the :data:`LAYOUT_OPTIONS` it reads (their flags and saving follow);
    ``volumes``: it reads volumes as 2D slices (the volume options apply)."""
    unknown = set(options) - set(LAYOUT_OPTIONS)
    if unknown:
        raise ValueError(f"Layout {name!r}: unknown options {sorted(unknown)}")

    def register(opener: Opener) -> Opener:
        LAYOUTS[name] = Layout(
            name, description, opener, check, multilabel, upright, options, volumes
        )
        return opener

    return register


def layout_names() -> tuple[str, ...]:
    return tuple(LAYOUTS)


def volume_layouts() -> tuple[str, ...]:
    """Layouts that read volumes (the volume options apply to them)."""
    return tuple(name for name, layout in LAYOUTS.items() if layout.volumes)


def checkable_layouts() -> tuple[str, ...]:
    """Layouts that ``check-data`` can check."""
    return tuple(name for name, layout in LAYOUTS.items() if layout.check is not None)


def get_layout(name: str, options: SplitOptions | None = None) -> Layout:
    """The layout ``name``; with ``options``, also checked to read their task."""
    try:
        layout = LAYOUTS[name]
    except KeyError:
        raise DataError(
            f"Unknown dataset layout {name!r}. Choose one of: {', '.join(LAYOUTS)}."
        ) from None
    if options is not None and options.multilabel and not layout.multilabel:
        able = [n for n, entry in LAYOUTS.items() if entry.multilabel]
        raise DataError(
            f"The {name!r} layout has one class per pixel; --task multilabel reads "
            f"{', '.join(able)} (per-class masks, see docs/data.md)."
        )
    return layout


def open_split(
    root: str | os.PathLike, split: str, layout: str, options: SplitOptions | None = None
):
    """The labelled dataset of ``split`` in ``layout``, or None when the root has no such
    split."""
    options = options or SplitOptions()
    return get_layout(layout, options).open(Path(root), split, options)


def check_layout(
    root: str | os.PathLike,
    layout: str,
    options: SplitOptions | None = None,
    *,
    progress: bool = True,
):
    """Check a dataset for every problem that would break training; None when the layout has
    no checker (the public datasets' adapters validate while opening)."""
    options = options or SplitOptions()
    entry = get_layout(layout, options)
    if entry.check is None:
        return None
    return entry.check(Path(root), options, progress)


# The layouts ----------------------------------------------------------------------------------
def _check_folder(root: Path, options: SplitOptions, progress: bool):
    from unet_resnet.data.checks import check_dataset, check_multilabel

    return (check_multilabel if options.multilabel else check_dataset)(
        root, num_classes=options.num_classes, classes=options.classes, progress=progress
    )


def _check_nifti(root: Path, options: SplitOptions, progress: bool):
    from unet_resnet.data.checks import check_volumes

    return check_volumes(
        root, num_classes=options.num_classes, slice_axis=options.slice_axis, progress=progress
    )


def _check_raster(root: Path, options: SplitOptions, progress: bool):
    from unet_resnet.data.checks import check_rasters

    size = options.image_size
    side = size if isinstance(size, int) else max(size)
    return check_rasters(
        root,
        num_classes=options.num_classes,
        window=side,
        progress=progress,
        labels=options.labels,
        label_field=options.label_field,
    )


@register_layout(
    "folder",
    "DATA/{train,val,test}/{images,masks} (+ classes.json); multilabel: "
    "masks/CLASSNAME/NAME.png or masks/NAME.tif with a band per class",
    check=_check_folder,
    multilabel=True,
)
def _open_folder(root: Path, split: str, options: SplitOptions):
    if not (root / split / "images").is_dir():
        return None
    if options.multilabel:
        from unet_resnet.data.multilabel import MultiLabelFolder

        return MultiLabelFolder(root, split, classes=options.resolve_classes(root))
    return SegmentationFolder(root, split, num_classes=options.num_classes, classes=options.classes)


@register_layout("voc", "Pascal VOC 2012 (train, and val for every other split)")
def _open_voc(root: Path, split: str, options: SplitOptions):
    return VOCSegmentation(root, "train" if split == "train" else "val")


@register_layout("pet", "Oxford-IIIT Pet (trainval, and test for every other split)")
def _open_pet(root: Path, split: str, options: SplitOptions):
    return OxfordIIITPet(root, "train" if split == "train" else "test")


@register_layout("cityscapes", "Cityscapes leftImg8bit/ + gtFine/ (labelIds)")
def _open_cityscapes(root: Path, split: str, options: SplitOptions):
    if not (root / "leftImg8bit" / split).is_dir():
        return None
    return Cityscapes(root, split)


@register_layout(
    "nifti",
    "DATA/{split}/{images,labels}/CASE.nii.gz volumes, read as 2D slices",
    check=_check_nifti,
    upright=False,
    options=("slice_axis",),
    volumes=True,
)
def _open_nifti(root: Path, split: str, options: SplitOptions):
    from unet_resnet.data.medical import NiftiSliceDataset, find_nifti_pairs

    pairs = find_nifti_pairs(root, split) if (root / split).is_dir() else []
    if not pairs:
        return None
    return NiftiSliceDataset(
        pairs,
        options.resolve_classes(root),
        axis=options.slice_axis,
        context=options.context_slices,
        intensity=options.intensity,
        target_spacing=options.target_spacing,
    )


@register_layout(
    "raster",
    "DATA/{split}/{images,masks}/SCENE.tif large rasters, read in windows (or vector "
    "labels: --labels FILE --label-field NAME)",
    check=_check_raster,
    upright=False,
    options=("labels", "label_field"),
)
def _open_raster(root: Path, split: str, options: SplitOptions):
    if not (root / split / "images").is_dir():
        return None
    pairs, _ = folder_pairs(root, split)
    classes = options.resolve_classes(root)
    return RasterWindowDataset(
        pairs,
        window=options.image_size,
        mode="random" if split == "train" else "grid",
        samples_per_epoch=options.samples_per_epoch,
        classes=classes,
        vector_labels=options.vector_labels(classes),
    )


def _check_coco(root: Path, options: SplitOptions, progress: bool):
    from unet_resnet.data.coco import check_coco

    return check_coco(
        root,
        annotations=options.annotations,
        crowd=options.crowd,
        progress=progress,
        multilabel=options.multilabel,
    )


@register_layout(
    "coco",
    "COCO JSON (polygons, RLE): DATA/SPLIT/_annotations.coco.json (Roboflow) or "
    "DATA/annotations/instances_SPLIT*.json (COCO, CVAT); --annotations FILE overrides",
    check=_check_coco,
    multilabel=True,
    options=("annotations", "crowd"),
)
def _open_coco(root: Path, split: str, options: SplitOptions):
    from unet_resnet.data.coco import CocoSegmentation, find_coco

    found = find_coco(root, split, options.annotations)
    if found is None:
        return None
    return CocoSegmentation(
        *found, classes=options.classes, crowd=options.crowd, multilabel=options.multilabel
    )
