"""Vector labels for rasters: GeoJSON, GeoPackage, Shapefile, FlatGeobuf polygons rasterised
per window, in each scene's CRS.

A label file is read per scene, only the features whose bounding box meets the scene (a
``bbox`` filter in the file's own CRS, through ``pyogrio``), reprojected to the scene's CRS and
indexed (``shapely.STRtree``); each training window then rasterises only the features that
meet it (``rasterio.features.rasterize``). So neither a continent-size label file nor a large
scene ever becomes a full-scene mask in memory: memory grows with the features of one scene.

Class values come from an attribute (``--label-field``): class names (as in ``classes.json``)
or integer codes (class indices). Pixels covered by no feature are class 0 (background);
overlaps are painted largest first, so smaller features stay on top.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from unet_resnet.data.classes import ClassInfo, DataError

__all__ = ["SceneLabels", "VectorLabels", "check_vector_labels"]


def _modules():
    try:
        import pyogrio
        import shapely
    except ImportError:
        raise DataError(
            "Vector labels need pyogrio and shapely: pip install 'unet-resnet[geo]'."
        ) from None
    return pyogrio, shapely


@dataclass
class SceneLabels:
    """The features of one scene, in its CRS, with their class indices."""

    geometries: np.ndarray  # shapely geometries
    classes: np.ndarray  # int64 class index per geometry
    fids: np.ndarray

    def __post_init__(self) -> None:
        import shapely

        order = np.argsort(-shapely.area(self.geometries), kind="stable")  # largest first
        self.geometries, self.classes = self.geometries[order], self.classes[order]
        self.fids = self.fids[order]
        self.tree = shapely.STRtree(self.geometries)

    def __len__(self) -> int:
        return len(self.geometries)

    def rasterize(self, transform, shape: tuple[int, int]) -> np.ndarray:
        """The class-index mask of a window with affine ``transform`` and ``shape``."""
        import shapely
        from rasterio import features
        from rasterio.transform import array_bounds

        mask = np.zeros(shape, dtype=np.int64)
        west, south, east, north = array_bounds(shape[0], shape[1], transform)
        hits = np.sort(self.tree.query(shapely.box(west, south, east, north)))
        if hits.size:
            shapes = [
                (shapely.geometry.mapping(g), int(c))
                for g, c in zip(self.geometries[hits], self.classes[hits], strict=True)
            ]
            mask = features.rasterize(
                shapes, out_shape=shape, transform=transform, fill=0, dtype="int32"
            ).astype(np.int64)
        return mask


class VectorLabels:
    """A vector label file (see the module docstring).

    Args:
        path: GeoJSON / GeoPackage / Shapefile / FlatGeobuf (anything GDAL's OGR reads).
        field: the attribute holding class names or integer codes.
        classes: the classes the names or codes map to.
        layer: the layer of a multi-layer file (default: the first).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        field: str | None,
        classes: ClassInfo,
        *,
        layer: str | int | None = None,
    ) -> None:
        pyogrio, _ = _modules()
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"Label file not found: {self.path} (--labels).")
        try:
            info = pyogrio.read_info(self.path, layer=layer)
        except Exception as exc:
            raise DataError(f"Cannot read vector labels {self.path}: {exc}") from None
        fields = list(info["fields"])
        if not field:
            raise DataError(
                f"--label-field is needed with --labels: the attribute of {self.path.name} "
                f"holding the class ({', '.join(fields) or 'it has no attributes'})."
            )
        if field not in fields:
            raise DataError(
                f"{self.path} has no attribute {field!r} (--label-field); it has: "
                f"{', '.join(fields) or 'none'}."
            )
        self.field, self.layer, self.classes = field, layer, classes
        self.crs = info["crs"]
        self.features = int(info["features"])
        self._names = {name: i for i, name in enumerate(classes.names)}

    def class_index(self, value: Any) -> int | None:
        """The class of an attribute value, or None when it names no class."""
        if isinstance(value, str):
            if value in self._names:
                return self._names[value]
            value = value.strip()
            if not value.lstrip("-").isdigit():
                return None
        try:
            code = int(value)
        except (TypeError, ValueError):
            return None
        return code if 0 <= code < self.classes.num_classes else None

    def read(self, bbox: tuple[float, float, float, float] | None = None):
        """``(fids, geometries, values)`` of the features meeting ``bbox`` (file CRS)."""
        pyogrio, shapely = _modules()
        _, fids, wkb, values = pyogrio.raw.read(
            self.path, layer=self.layer, columns=[self.field], bbox=bbox, return_fids=True
        )
        return np.asarray(fids), shapely.from_wkb(wkb), values[0]

    def for_scene(self, crs, bounds) -> SceneLabels:
        """The features of a scene with ``crs`` and ``bounds`` (left, bottom, right, top)."""
        from rasterio.crs import CRS
        from rasterio.warp import transform_bounds, transform_geom

        _, shapely = _modules()
        own = CRS.from_user_input(self.crs) if self.crs else None
        bbox = tuple(bounds)
        if own is not None and crs is not None and own != crs:
            bbox = transform_bounds(crs, own, *bounds, densify_pts=21)
        fids, geometries, values = self.read(bbox)
        indices = np.array([self.class_index(v) for v in values], dtype=object)
        keep = np.array([i is not None for i in indices], dtype=bool) & ~shapely.is_empty(
            geometries
        )
        fids, geometries = fids[keep], geometries[keep]
        if own is not None and crs is not None and own != crs and len(geometries):
            mapped = transform_geom(own, crs, [shapely.geometry.mapping(g) for g in geometries])
            geometries = np.array([shapely.geometry.shape(g) for g in mapped], dtype=object)
        classes = indices[keep].astype(np.int64)
        return SceneLabels(np.asarray(geometries, dtype=object), classes, fids)


def check_vector_labels(labels: VectorLabels, scenes: list[Path], report) -> None:
    """Add to ``report``: invalid geometries, features outside every scene, unmapped values."""
    import rasterio
    from rasterio.warp import transform_bounds

    _, shapely = _modules()
    fids, geometries, values = labels.read()
    unmapped = sorted({str(v) for v in values if labels.class_index(v) is None})
    if unmapped:
        report.error(
            f"{labels.path}: {labels.field} values {unmapped[:8]} name no class "
            f"({', '.join(labels.classes.names)}); add them to classes.json or fix the file."
        )
    invalid = fids[~shapely.is_valid(geometries) & ~shapely.is_empty(geometries)]
    if invalid.size:
        report.warning(
            f"{labels.path}: {invalid.size} invalid geometries (e.g. self-intersecting), "
            f"feature ids {invalid[:8].tolist()}; they may rasterise wrongly (shapely.make_valid "
            "fixes them)."
        )
    inside = np.zeros(len(geometries), dtype=bool)
    for scene in scenes:
        with rasterio.open(scene) as src:
            bounds, crs = src.bounds, src.crs
        if labels.crs and crs is not None:
            bounds = transform_bounds(crs, labels.crs, *bounds, densify_pts=21)
        inside |= shapely.intersects(geometries, shapely.box(*bounds))
    outside = fids[~inside]
    if outside.size:
        report.warning(
            f"{labels.path}: {outside.size} of {len(fids)} features lie outside every scene "
            f"(feature ids {outside[:8].tolist()}); they are not used."
        )
