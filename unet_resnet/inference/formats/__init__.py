"""Input file formats for prediction, one module each, in one ordered registry.

A format declares how it is recognised, which outputs it writes under which names, and how a
file is predicted into them (:class:`~unet_resnet.inference.formats.base.FileFormat`). An
input's format is decided once, when predictions are planned
(:func:`unet_resnet.inference.files.plan_predictions`), and carried with the plan to every
engine and worker. Adding a format is one module and one :func:`register_format` call; a new
per-input output is one field of ``OutputPaths``/``OutputRequest`` named by the formats that
write it.
"""

from __future__ import annotations

from pathlib import Path

from unet_resnet.errors import ConfigError
from unet_resnet.inference.formats.base import FileFormat, OutputPaths, OutputRequest
from unet_resnet.inference.formats.geotiff import GEOTIFF
from unet_resnet.inference.formats.image import IMAGE
from unet_resnet.inference.formats.volume import VOLUME

__all__ = [
    "FORMATS",
    "FileFormat",
    "OutputPaths",
    "OutputRequest",
    "detect_format",
    "get_format",
    "register_format",
]

#: Most specific first: the first format that recognises a file is its format.
FORMATS: dict[str, FileFormat] = {f.name: f for f in (VOLUME, GEOTIFF, IMAGE)}


def register_format(fmt: FileFormat, *, before: str | None = "image") -> FileFormat:
    """Add ``fmt`` to the registry, asked before the format named ``before`` (default: before
    the ``image`` fallback; None: last)."""
    items = [(name, f) for name, f in FORMATS.items() if name != fmt.name]
    at = next((i for i, (name, _) in enumerate(items) if name == before), len(items))
    items.insert(at, (fmt.name, fmt))
    FORMATS.clear()
    FORMATS.update(items)
    return fmt


def detect_format(path: str | Path) -> FileFormat:
    """The format of the file (or DICOM folder) at ``path``: the first that recognises it."""
    path = Path(path)
    for fmt in FORMATS.values():
        if fmt.recognises(path):
            return fmt
    raise ConfigError(f"{path}: no file format recognises it ({', '.join(FORMATS)}).")


def get_format(name: str) -> FileFormat:
    try:
        return FORMATS[name]
    except KeyError:
        raise ConfigError(f"Unknown file format {name!r}. Known: {', '.join(FORMATS)}.") from None
