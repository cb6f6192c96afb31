"""Exceptions raised for problems a user can fix.

Every error the toolkit raises on bad input derives from :class:`UnetResnetError`, so the
command line can print the message alone (no traceback wall) and exit with a non-zero code.
"""

from __future__ import annotations


class UnetResnetError(Exception):
    """Base class: the message says what went wrong and how to fix it."""


class WeightsUnavailableError(UnetResnetError, OSError):
    """Pretrained weights are neither cached nor downloadable (for example: offline)."""


class WeightsFileError(UnetResnetError, ValueError):
    """A weights or checkpoint file exists but cannot be used."""


class InputShapeError(UnetResnetError, ValueError):
    """A tensor given to the model does not have the shape the model expects."""
