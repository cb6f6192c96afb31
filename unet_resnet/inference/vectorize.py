"""Polygons from a predicted GeoTIFF mask: building footprints and land-cover parcels as GeoJSON."""

from __future__ import annotations

import json
import os

import numpy as np

from unet_resnet.data.classes import ClassInfo
from unet_resnet.io import atomic_path

__all__ = ["vectorize_mask"]


def vectorize_mask(
    mask_path: str | os.PathLike,
    out_path: str | os.PathLike,
    classes: ClassInfo,
    *,
    skip_background: bool = True,
    min_pixels: int = 4,
) -> int:
    """Write one polygon per connected region of each class (rasterio.features.shapes).

    Coordinates are reprojected to WGS84 longitude/latitude as GeoJSON (RFC 7946) requires;
    each feature carries ``class`` (index), ``name`` and ``pixels``. Regions smaller than
    ``min_pixels`` (speckle) and nodata are left out. Returns the number of polygons.
    """
    import rasterio
    from rasterio import features
    from rasterio.warp import transform_geom

    with rasterio.open(mask_path) as src:
        labels = src.read(1)
        transform, crs, nodata = src.transform, src.crs, src.nodata
    keep = np.ones(labels.shape, dtype=bool)
    if nodata is not None:
        keep &= labels != nodata
    if skip_background:
        keep &= labels != 0
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d)
    items = []
    for geometry, value in features.shapes(labels, mask=keep, transform=transform):
        shape_pixels = _pixels(geometry, pixel_area)
        if shape_pixels < min_pixels:
            continue
        if crs is not None:
            geometry = transform_geom(crs, "EPSG:4326", geometry)
        index = int(value)
        items.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "class": index,
                    "name": classes.names[index] if index < len(classes) else str(index),
                    "pixels": round(shape_pixels),
                },
            }
        )
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    return len(items)


def _pixels(geometry: dict, pixel_area: float) -> float:
    """Polygon area (outer ring minus holes, shoelace formula) in pixels."""

    def ring_area(ring) -> float:
        xs, ys = np.asarray(ring).T
        return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))

    rings = geometry["coordinates"]
    area = ring_area(rings[0]) - sum(ring_area(r) for r in rings[1:])
    return area / pixel_area if pixel_area else area
