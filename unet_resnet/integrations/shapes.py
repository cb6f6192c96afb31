"""Class masks as polygons for annotation tools (Label Studio's PolygonLabels, CVAT polygons):
one outer ring per connected region, in pixel-corner coordinates (x right, y down)."""

from __future__ import annotations

import numpy as np

from unet_resnet.errors import UnetResnetError

__all__ = ["region_polygons"]


def region_polygons(
    mask: np.ndarray, *, min_pixels: int = 4, tolerance: float = 0.5
) -> list[np.ndarray]:
    """Outer rings (``N x 2`` float arrays of x, y) of the connected regions of a boolean
    mask, traced by rasterio (``features.shapes``, 4-connected) and simplified by shapely
    (Douglas-Peucker, ``tolerance`` pixels). Regions under ``min_pixels`` are left out; holes
    are not kept (the tools' polygons have none)."""
    try:
        import shapely
        from rasterio import features
    except ImportError:
        raise UnetResnetError(
            "Polygons need rasterio and shapely: pip install 'unet-resnet[integrations]'."
        ) from None
    mask = np.asarray(mask, dtype=bool)
    rings = []
    for geometry, _ in features.shapes(mask.astype(np.uint8), mask=mask, connectivity=4):
        polygon = shapely.geometry.shape(geometry)
        if polygon.area < min_pixels:
            continue
        exterior = shapely.Polygon(polygon.exterior)
        if tolerance:
            exterior = exterior.simplify(tolerance, preserve_topology=True)
        coords = np.asarray(exterior.exterior.coords, dtype=np.float64)[:-1]
        if len(coords) >= 3:
            rings.append(coords)
    return rings
