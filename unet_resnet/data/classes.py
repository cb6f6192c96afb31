"""Class names, colours and ``ignore_index``, and turning raw mask values into class indices."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from unet_resnet.errors import DataError

__all__ = ["DEFAULT_IGNORE_INDEX", "ClassInfo", "DataError", "default_palette", "load_classes"]

DEFAULT_IGNORE_INDEX = 255


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """Pascal VOC's colour map: distinct colours for any number of classes."""

    def bit(value: int, index: int) -> int:
        return (value >> index) & 1

    colors = []
    for i in range(n):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= bit(c, 0) << (7 - j)
            g |= bit(c, 1) << (7 - j)
            b |= bit(c, 2) << (7 - j)
            c >>= 3
        colors.append((r, g, b))
    return colors


@dataclass
class ClassInfo:
    """What the classes are called, how they are drawn, and which label value is ignored.

    Attributes:
        names: one name per class index.
        colors: one RGB colour per class; also how RGB colour masks are decoded.
        ignore_index: label value excluded from the loss and the metrics.
    """

    names: list[str]
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int = DEFAULT_IGNORE_INDEX

    def __post_init__(self) -> None:
        if isinstance(self.names, str) or not isinstance(self.names, list | tuple):
            raise DataError(
                f"classes: 'names' must be a list of class names, got {self.names!r}; "
                'e.g. "names": ["background", "road"].'
            )
        if not self.names:
            raise DataError("classes: 'names' is empty; give one name per class.")
        if not all(isinstance(n, str | int) and not isinstance(n, bool) for n in self.names):
            raise DataError(f"classes: 'names' must be strings, got {self.names!r}.")
        self.names = [str(n) for n in self.names]
        if len(set(self.names)) != len(self.names):
            raise DataError(f"classes: 'names' has duplicates: {self.names}.")
        if not self.colors:
            self.colors = default_palette(len(self.names))
        for c in self.colors:
            valid = isinstance(c, list | tuple) and len(c) == 3
            if not valid or not all(
                isinstance(v, int | np.integer) and not isinstance(v, bool) and 0 <= v <= 255
                for v in c
            ):
                raise DataError(
                    f"classes: colour {c!r} is not three integers 0-255; e.g. [128, 64, 128]."
                )
        self.colors = [tuple(int(v) for v in c) for c in self.colors]
        if isinstance(self.ignore_index, bool) or not isinstance(
            self.ignore_index, int | np.integer
        ):
            raise DataError(
                f"classes: 'ignore_index' must be an integer label value (e.g. 255), got "
                f"{self.ignore_index!r}."
            )
        self.ignore_index = int(self.ignore_index)
        if len(self.colors) != len(self.names):
            raise DataError(
                f"classes: {len(self.names)} names but {len(self.colors)} colors; give one "
                "colour per class."
            )
        if 0 <= self.ignore_index < len(self.names):
            raise DataError(
                f"ignore_index {self.ignore_index} is also a class index (0..{len(self) - 1}); "
                "pick a value outside that range, such as 255."
            )

    def __len__(self) -> int:
        return len(self.names)

    @property
    def num_classes(self) -> int:
        return len(self.names)

    @classmethod
    def generic(cls, num_classes: int, ignore_index: int = DEFAULT_IGNORE_INDEX) -> ClassInfo:
        return cls([f"class_{i}" for i in range(num_classes)], ignore_index=ignore_index)

    def to_dict(self) -> dict:
        return {
            "names": list(self.names),
            "colors": [list(c) for c in self.colors],
            "ignore_index": self.ignore_index,
        }

    @classmethod
    def from_dict(cls, data: dict, source: str = "classes") -> ClassInfo:
        if not isinstance(data, dict) or "names" not in data:
            raise DataError(
                f"{source}: expected a mapping with 'names' (and optional 'colors', "
                '\'ignore_index\'), e.g. {"names": ["background", "road"], '
                '"colors": [[0, 0, 0], [128, 64, 128]]}.'
            )
        colors = data.get("colors") or []
        if not isinstance(colors, list):
            raise DataError(f"{source}: 'colors' must be a list of [r, g, b], got {colors!r}.")
        try:
            return cls(
                names=data["names"],
                colors=list(colors),
                ignore_index=data.get("ignore_index", DEFAULT_IGNORE_INDEX),
            )
        except DataError as exc:
            raise DataError(f"{source}: {str(exc).removeprefix('classes: ')}") from None

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    # Mask decoding -------------------------------------------------------------------------
    def decode_mask(self, raw: np.ndarray, path: str | os.PathLike = "mask") -> np.ndarray:
        """Turn a raw mask into ``H x W`` int64 class indices (``ignore_index`` kept as is).

        - ``H x W x 3`` colour masks map each colour to its class through :attr:`colors`;
          a colour not in the list is an error naming the file and the colour.
        - Binary masks stored as 0/255 with two classes map 255 to 1 (when no pixel is 1,
          so a 0/1/255 mask keeps 255 as ignore).
        - Anything else is taken as indices.
        """
        if raw.ndim == 3:
            return self._decode_colors(raw, path)
        mask = raw.astype(np.int64, copy=False)
        if self.num_classes == 2 and self.ignore_index == 255:
            values = np.unique(mask)
            if 255 in values and set(values.tolist()) <= {0, 255}:
                mask = (mask == 255).astype(np.int64)
        return mask

    def _decode_colors(self, raw: np.ndarray, path) -> np.ndarray:
        rgb = raw[..., :3].astype(np.int64)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        lookup = {(r << 16) | (g << 8) | b: i for i, (r, g, b) in enumerate(self.colors)}
        mask = np.full(code.shape, -1, dtype=np.int64)
        for value, index in lookup.items():
            mask[code == value] = index
        unknown = np.unique(code[mask < 0])
        if unknown.size:
            shown = [((v >> 16) & 255, (v >> 8) & 255, v & 255) for v in unknown[:5].tolist()]
            raise DataError(
                f"Mask {path} has colours that match no class: {shown}"
                f"{' ...' if unknown.size > 5 else ''}. Known colours: "
                f"{dict(zip(self.names, self.colors, strict=True))}. Add them to "
                "classes.json 'colors', or save masks as class indices."
            )
        return mask

    def check_compatible(self, other: ClassInfo, *, mine: str, theirs: str) -> None:
        """Refuse to score ``other``'s labels with these classes when they are not the same
        classes: a different count, or different names where both name their classes."""

        def generic(info: ClassInfo) -> bool:
            return info.names == [f"class_{i}" for i in range(info.num_classes)]

        differ = self.num_classes != other.num_classes or (
            not generic(self) and not generic(other) and self.names != other.names
        )
        if differ:
            raise DataError(
                f"The {mine} has {self.num_classes} classes ({', '.join(self.names)}) but the "
                f"{theirs} has {other.num_classes} ({', '.join(other.names)}). Scores would "
                "count the wrong pixels: use data labelled with the same classes, or a "
                "checkpoint trained on them."
            )

    def check_values(self, mask: np.ndarray) -> np.ndarray:
        """Values in ``mask`` that are neither a class index nor ``ignore_index``."""
        values = np.unique(mask)
        bad = (values < 0) | ((values >= self.num_classes) & (values != self.ignore_index))
        return values[bad]


def load_classes(path: str | os.PathLike) -> ClassInfo:
    """Read ``classes.json``/``.yaml``: ``names``, optional ``colors`` and ``ignore_index``."""
    path = Path(path)
    try:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as exc:
        raise DataError(f"Could not read {path}: {type(exc).__name__}: {exc}") from None
    return ClassInfo.from_dict(data, source=str(path))


def find_classes_file(root: str | os.PathLike) -> Path | None:
    for name in ("classes.json", "classes.yaml", "classes.yml"):
        candidate = Path(root) / name
        if candidate.is_file():
            return candidate
    return None


def resolve_classes(
    root: str | os.PathLike, num_classes: int | None, names: Sequence[str] | None = None
) -> ClassInfo:
    """Classes from ``root/classes.json`` if present, else generic names for ``num_classes``.

    A ``num_classes`` that disagrees with the file is an error rather than a silent choice.
    """
    found = find_classes_file(root)
    if found is not None:
        info = load_classes(found)
        if num_classes is not None and num_classes != info.num_classes:
            raise DataError(
                f"--num-classes {num_classes} disagrees with {found}, which lists "
                f"{info.num_classes} classes ({', '.join(info.names)}). Drop the flag or fix "
                "the file."
            )
        return info
    if names:
        return ClassInfo(list(names))
    if num_classes is None:
        raise DataError(
            f"No classes.json in {root} and no --num-classes given: say how many classes the "
            "masks hold (e.g. --num-classes 2), or add classes.json with their names."
        )
    return ClassInfo.generic(num_classes)
