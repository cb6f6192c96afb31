"""Polygons from a predicted GeoTIFF mask: building footprints and land-cover parcels as GeoJSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from unet_resnet.data.classes import ClassInfo
from unet_resnet.io import atomic_path

__all__ = ["VECTOR_FORMATS", "vectorize_mask"]


#: GIS-native vector outputs by ``--vector-format``: (file suffix, GDAL driver).
VECTOR_FORMATS = {"gpkg": (".gpkg", "GPKG"), "fgb": (".fgb", "FlatGeobuf")}


def vectorize_mask(
    mask_path: str | os.PathLike,
    out_path: str | os.PathLike,
    classes: ClassInfo,
    *,
    gis_path: str | os.PathLike | None = None,
    simplify: float | None = None,
    skip_background: bool = True,
    min_pixels: int = 4,
) -> int:
    """Write one polygon per connected region of each class (rasterio.features.shapes).

    ``out_path``: GeoJSON in WGS84 longitude/latitude, as RFC 7946 requires. ``gis_path``
    (``.gpkg`` or ``.fgb``): the same polygons in the scene's own CRS, for GIS work. Each
    feature carries ``class`` (index), ``name``, ``pixels`` and (GIS file) ``area`` in CRS
    units, computed by shapely. ``simplify``: Douglas-Peucker tolerance in CRS units (applied
    to both files, topology kept per polygon). Regions smaller than ``min_pixels`` (speckle) and
    nodata are left out. Returns the number of polygons.
    """
    import rasterio
    import shapely
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
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d) or 1.0
    polygons, values = [], []
    for geometry, value in features.shapes(labels, mask=keep, transform=transform):
        polygon = shapely.geometry.shape(geometry)
        if polygon.area / pixel_area < min_pixels:
            continue
        if simplify:
            polygon = polygon.simplify(simplify, preserve_topology=True)
        polygons.append(polygon)
        values.append(int(value))

    def name(index: int) -> str:
        return classes.names[index] if index < len(classes) else str(index)

    items = []
    for polygon, index in zip(polygons, values, strict=True):
        geometry = shapely.geometry.mapping(polygon)
        if crs is not None:
            geometry = transform_geom(crs, "EPSG:4326", geometry)
        items.append(
            {
                "type": "Feature",
                "geometry": geometry,
                "properties": {
                    "class": index,
                    "name": name(index),
                    "pixels": round(polygon.area / pixel_area),
                },
            }
        )
    with atomic_path(out_path) as tmp:
        tmp.write_text(json.dumps({"type": "FeatureCollection", "features": items}))
    if gis_path is not None:
        _write_gis(Path(gis_path), polygons, values, name, crs, pixel_area)
    return len(items)


def _write_gis(path: Path, polygons, values, name, crs, pixel_area: float) -> None:
    import pyogrio.raw
    import shapely

    driver = next(d for suffix, d in VECTOR_FORMATS.values() if path.name.endswith(suffix))
    fields = ["class", "name", "area", "pixels"]
    areas = np.array([p.area for p in polygons], dtype=np.float64)
    data = [
        np.array(values, dtype=np.int32),
        np.array([name(v) for v in values], dtype=object),
        areas,
        np.round(areas / pixel_area).astype(np.int64),
    ]
    multi = [shapely.MultiPolygon([p]) if p.geom_type == "Polygon" else p for p in polygons]
    with atomic_path(path) as tmp:
        pyogrio.raw.write(
            str(tmp),
            np.array(shapely.to_wkb(multi), dtype=object) if multi else np.array([], object),
            data,
            fields,
            geometry_type="MultiPolygon",
            crs=None if crs is None else crs.to_wkt(),
            driver=driver,
            layer=path.stem,
        )
