"""Exceptions raised for problems a user can fix.

Every error the toolkit raises on bad input derives from :class:`UnetResnetError`, so the
command line can print the message alone (no traceback wall) and exit with a non-zero code.
The subclasses say *what kind* of problem it is, so the boundaries (the CLI's exit codes, the
HTTP service's status codes) map types, never message text.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DataError",
    "ExportError",
    "ImageReadError",
    "ImageTooLargeError",
    "InputShapeError",
    "NotAnImageError",
    "OutputExistsError",
    "UnetResnetError",
    "WeightsFileError",
    "WeightsUnavailableError",
]


class UnetResnetError(Exception):
    """Base class: the message says what went wrong and how to fix it."""


class ConfigError(UnetResnetError, ValueError):
    """An option, flag or config file value is invalid (names the option and the choices)."""


class DataError(UnetResnetError, ValueError):
    """A dataset file or layout problem; the message names the file and the fix."""


class ExportError(UnetResnetError):
    """An export failed, or its output does not match the eager model (or, for int8, lost
    more accuracy than allowed)."""


class OutputExistsError(UnetResnetError, FileExistsError):
    """An output would replace an input or an earlier result that the user did not ask to
    replace (the message names the path and the flag that allows it)."""


class WeightsUnavailableError(UnetResnetError, OSError):
    """Pretrained weights are neither cached nor downloadable (for example: offline)."""


class WeightsFileError(UnetResnetError, ValueError):
    """A weights or checkpoint file exists but cannot be used."""


class InputShapeError(UnetResnetError, ValueError):
    """A tensor given to the model does not have the shape the model expects."""


class ImageReadError(UnetResnetError, OSError):
    """An image or mask file is missing, unreadable, truncated or of an unsupported kind."""


class NotAnImageError(ImageReadError):
    """The bytes are not in any image format the toolkit reads."""


class ImageTooLargeError(ImageReadError):
    """The image is over a size limit (pixels or decoded bytes), known before decoding."""
