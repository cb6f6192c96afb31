"""Dataset layouts: one module per layout, each holding its dataset, its checks, its opener
and the options it declares (:mod:`~unet_resnet.data.layouts.base` is the registry they
register in). Importing this package registers every built-in layout; a new layout is one
module here and its name in :data:`BUILT_IN`."""

from importlib import import_module

from unet_resnet.data.layouts.base import (
    LAYOUT_OPTIONS,
    LAYOUTS,
    Layout,
    LayoutOption,
    SplitOptions,
    check_layout,
    checkable_layouts,
    get_layout,
    layout_names,
    open_split,
    register_layout,
    volume_layouts,
)

#: The built-in layout modules, registered in this order (the order ``--dataset`` lists them).
BUILT_IN = ("folder", "public", "nifti", "raster", "coco")
for _module in BUILT_IN:
    import_module(f"{__name__}.{_module}")

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
