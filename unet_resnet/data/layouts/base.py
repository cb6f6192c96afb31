"""The layout registry: a layout name to how a split is opened and checked, and the options
each layout declares for itself.

A layout module (``data/layouts/NAME.py``) registers its opener with :func:`register_layout`,
naming its checker, its capabilities and its :class:`LayoutOption` s; the training config,
the flags of ``train``, ``evaluate``, ``cross-validate``, ``check-data`` and ``predict``
(volumes), and what a checkpoint saves to read a split again all follow from those
declarations. Options travel as one mapping (:attr:`SplitOptions.layout`), never as one
keyword argument per option.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from unet_resnet.data.classes import ClassInfo, DataError, resolve_classes

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
    """An option a dataset layout reads, declared by the layout: ``train`` has a config field
    and a flag for it, the commands that read a split (``evaluate``, ``check-data``,
    ``cross-validate``, ``predict`` for volumes) generate their flags from it, and ``saved``
    options go into the checkpoint (``CheckpointMeta.split``) so that every later command
    reads the split as it was trained unless its flag says otherwise."""

    name: str
    type: Callable[[str], Any]
    help: str
    default: Any = None
    choices: tuple[str, ...] | None = None
    saved: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


#: Every option some registered layout declares, by name (filled by :func:`register_layout`).
LAYOUT_OPTIONS: dict[str, LayoutOption] = {}


@dataclass(frozen=True)
class SplitOptions:
    """Everything a layout may need to open a split; each layout reads what applies to it.

    Args:
        num_classes: for layouts whose root may lack a classes file.
        classes: use these classes instead of the root's (e.g. a checkpoint's).
        image_size: raster layouts: window side (or ``(h, w)``).
        samples_per_epoch: raster layouts: random windows per training epoch.
        context_slices, intensity, target_spacing: volume layouts: 2.5D neighbours per side,
            the :class:`~unet_resnet.volumes.IntensityRule` (or None) and in-plane resampling.
        task: ``multiclass`` (one class per pixel) or ``multilabel`` (a binary mask per
            class, :mod:`unet_resnet.data.multilabel`); only layouts registered with
            ``multilabel=True`` read the latter.
        layout: the values of the layouts' own options (:data:`LAYOUT_OPTIONS`) that were
            set; :meth:`option` gives an option's value or its declared default.
    """

    num_classes: int | None = None
    classes: ClassInfo | None = None
    image_size: int | tuple[int, int] | list[int] = 512
    samples_per_epoch: int = 1000
    context_slices: int = 0
    intensity: Any = None
    target_spacing: float | None = None
    task: str = "multiclass"
    layout: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = sorted(set(self.layout) - set(LAYOUT_OPTIONS))
        if unknown:
            raise DataError(
                f"Unknown layout option(s) {unknown}; the layouts declare: "
                f"{', '.join(sorted(LAYOUT_OPTIONS))}."
            )

    @property
    def multilabel(self) -> bool:
        return self.task == "multilabel"

    def option(self, name: str) -> Any:
        """The value of layout option ``name``: as set, else as its layout declares."""
        value = self.layout.get(name)
        return LAYOUT_OPTIONS[name].default if value is None else value

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
        from unet_resnet.volumes import IntensityRule

        volume = volume or {}
        saved = {
            name: value
            for name, value in (split or {}).items()
            if name in LAYOUT_OPTIONS and LAYOUT_OPTIONS[name].saved and value is not None
        }
        if volume.get("slice_axis") is not None and "slice_axis" in LAYOUT_OPTIONS:
            saved.setdefault("slice_axis", int(volume["slice_axis"]))
        return replace(
            self,
            classes=classes,
            task=task,
            context_slices=int(volume.get("context_slices") or 0),
            intensity=IntensityRule.from_dict(volume.get("intensity")),
            target_spacing=volume.get("target_spacing"),
            layout={**self.layout, **saved},
        ).overridden(given or {})

    def overridden(self, values: Mapping[str, Any]) -> SplitOptions:
        """These options with every layout option in ``values`` that is set (not None)."""
        set_ = {k: v for k, v in values.items() if k in LAYOUT_OPTIONS and v is not None}
        return replace(self, layout={**self.layout, **set_}) if set_ else self

    def to_save(self, layout: str) -> dict[str, Any]:
        """What the checkpoint keeps to read ``layout``'s splits again: the layout's name and
        its saved options."""
        entry = get_layout(layout)
        return {
            "layout": layout,
            **{name: self.option(name) for name in entry.options if LAYOUT_OPTIONS[name].saved},
        }

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
    #: the names of the :data:`LAYOUT_OPTIONS` it reads
    options: tuple[str, ...] = ()
    #: reads volumes as 2D slices: takes the volume options (2.5D context, intensity rule,
    #: resampling, foreground oversampling) and saves them with the checkpoint
    volumes: bool = False


LAYOUTS: dict[str, Layout] = {}


def _declare(layout: str, option: LayoutOption | str) -> str:
    if isinstance(option, str):  # an option another layout declared (shared)
        if option not in LAYOUT_OPTIONS:
            raise ValueError(f"Layout {layout!r}: unknown option {option!r}")
        return option
    known = LAYOUT_OPTIONS.setdefault(option.name, option)
    if known != option:
        raise ValueError(
            f"Layout {layout!r} declares option {option.name!r} unlike the layout that "
            "declared it first; share it by name instead."
        )
    return option.name


def register_layout(
    name: str,
    description: str,
    *,
    check: Checker | None = None,
    multilabel: bool = False,
    upright: bool = True,
    options: tuple[LayoutOption | str, ...] = (),
    volumes: bool = False,
) -> Callable[[Opener], Opener]:
    """Register ``open`` as the opener of layout ``name`` (and ``check`` as its checker);
    ``multilabel``: it also reads per-class masks (``SplitOptions.task == "multilabel"``);
    ``upright=False``: its images have no up and down (overhead imagery, scan slices);
    ``options``: the :class:`LayoutOption` s it reads (or the names of options another layout
    declared), whose flags and saving follow; ``volumes``: it reads volumes as 2D slices (the
    volume options apply)."""
    names = tuple(_declare(name, option) for option in options)

    def register(opener: Opener) -> Opener:
        LAYOUTS[name] = Layout(
            name, description, opener, check, multilabel, upright, names, volumes
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
