"""Reading images and masks from the formats users have on disk, with errors that name the file.

Images come back as ``H x W x C`` numpy arrays in their stored dtype (uint8, uint16, float32,
...). Masks come back as ``H x W`` integer arrays of raw values; turning raw values into class
indices (palettes, colours, binary 0/255, dataset label ids) is :mod:`unet_resnet.data.classes`'
job.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

from unet_resnet.errors import ImageReadError, ImageTooLargeError, NotAnImageError

__all__ = [
    "IMAGE_SUFFIXES",
    "MAX_DECODED_BYTES",
    "PIL_FORMATS",
    "ImageReadError",
    "atomic_path",
    "check_decoded_size",
    "decode_image_bytes",
    "dtype_range",
    "is_geotiff",
    "read_image",
    "read_mask_raw",
    "remove_partials",
    "to_float_image",
    "write_mask_png",
    "write_planes_tiff",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".npy", ".webp")
#: The only Pillow decoders ever run: Pillow otherwise tries every plugin whose signature
#: matches, including EPS (which hands the file to Ghostscript). TIFF goes through tifffile.
PIL_FORMATS = ("PNG", "JPEG", "BMP", "WEBP", "TIFF")
#: Decoded size limit for image files read from disk (``read_image``): 4 GiB. Larger rasters
#: are read window by window (GeoTIFF streaming, RasterWindowDataset).
MAX_DECODED_BYTES = 4 << 30
# Bytes per band of Pillow's modes (all others: 1).
_MODE_BYTES = {"I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2, "I": 4, "F": 4}
_TIFF_SUFFIXES = (".tif", ".tiff")

# Pillow refuses images above this many pixels as decompression bombs; whole-slide and
# satellite images are legitimately larger, and those go through windowed raster reading.
Image.MAX_IMAGE_PIXELS = 1 << 30


def _fail(path: Path, reason: str) -> ImageReadError:
    return ImageReadError(
        f"Could not read {path}: {reason}. Expected an image ({', '.join(IMAGE_SUFFIXES)}); "
        "re-export or remove the file."
    )


def is_geotiff(path: str | os.PathLike) -> bool:
    """True for a TIFF carrying georeferencing tags."""
    path = Path(path)
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            return bool(tif.is_geotiff)
    except Exception:
        return False


def check_decoded_size(shape, itemsize: int, max_bytes: int | None, what: str) -> None:
    """Refuse an image whose decoded array would exceed ``max_bytes``, before decoding it."""
    if max_bytes is None:
        return
    size = int(np.prod([int(v) for v in shape], dtype=np.float64)) * itemsize
    if size > max_bytes:
        raise ImageTooLargeError(
            f"{what} would decode to {size / 2**20:.0f} MiB (shape {tuple(shape)}, "
            f"{itemsize} byte(s) per value), over the limit of {max_bytes / 2**20:.0f} MiB. "
            "Downscale or tile it, or read it window by window (GeoTIFF)."
        )


def _pil_decoded_bytes(img: Image.Image) -> tuple[tuple[int, ...], int]:
    bands = len(img.getbands())
    return (img.height, img.width, bands), _MODE_BYTES.get(img.mode, 1)


def _open_pil(source) -> Image.Image:
    try:
        return Image.open(source, formats=PIL_FORMATS)
    except Image.UnidentifiedImageError:
        raise NotAnImageError(
            f"not an image in an accepted format ({', '.join(PIL_FORMATS)}, or .npy)"
        ) from None


def _read_tiff(path: Path, max_bytes: int | None = MAX_DECODED_BYTES) -> np.ndarray:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        check_decoded_size(series.shape, series.dtype.itemsize, max_bytes, str(path))
        if tif.is_geotiff:
            try:
                import rasterio
            except ImportError:
                rasterio = None
            if rasterio is not None:
                with rasterio.open(path) as src:
                    return np.moveaxis(src.read(), 0, -1)
        array = series.asarray()
        axes = series.axes
    # Put the sample/channel axis last whatever the planar configuration.
    if array.ndim == 3:
        channel_axis = next((axes.index(a) for a in "SCI" if a in axes), None)
        if channel_axis is None:
            channel_axis = int(np.argmin(array.shape))
        array = np.moveaxis(array, channel_axis, -1)
    elif array.ndim > 3:
        raise ValueError(f"TIFF with {array.ndim} dimensions ({axes}); expected a 2D image")
    return array


def _read_pil(path: Path, *, keep_palette: bool) -> np.ndarray:
    with _open_pil(path) as img:
        shape, itemsize = _pil_decoded_bytes(img)
        check_decoded_size(shape, itemsize, MAX_DECODED_BYTES, str(path))
        img.load()  # decode now so truncated files fail here, inside the try
        if img.mode == "P" and not keep_palette:
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("RGBA", "LA") and not keep_palette:
            img = img.convert(img.mode[:-1])  # alpha is not an image channel here
        elif img.mode in ("CMYK", "YCbCr", "HSV"):
            img = img.convert("RGB")
        elif img.mode == "1":
            img = img.convert("L")
        return np.asarray(img)


def _read_any(path: Path, *, keep_palette: bool) -> np.ndarray:
    if not path.is_file():
        raise ImageReadError(f"File not found: {path}.")
    suffix = path.suffix.lower()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if suffix in _TIFF_SUFFIXES:
                array = _read_tiff(path)
            elif suffix == ".npy":
                array = np.load(path, allow_pickle=False)
            else:
                array = _read_pil(path, keep_palette=keep_palette)
    except NotAnImageError as exc:
        raise NotAnImageError(f"Could not read {path}: {exc}.") from None
    except ImageReadError:
        raise
    except Exception as exc:  # PIL, tifffile and numpy raise many types for broken files
        raise _fail(path, f"{type(exc).__name__}: {exc}") from None
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise _fail(path, f"got an array of shape {array.shape}, expected H x W or H x W x C")
    return array


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image as ``H x W x C`` in its stored dtype (8/16-bit, float, any band count)."""
    array = _read_any(Path(path), keep_palette=False)
    return array[..., None] if array.ndim == 2 else array


def read_mask_raw(path: str | os.PathLike) -> np.ndarray:
    """Read a mask's raw values: ``H x W`` (indices, palette indices) or ``H x W x 3`` (colours).

    Palette PNGs keep their palette indices, which is how VOC-style masks store classes.
    """
    path = Path(path)
    array = _read_any(path, keep_palette=True)
    if array.ndim == 3:
        if array.shape[-1] == 1:
            array = array[..., 0]
        elif array.shape[-1] == 4:
            array = array[..., :3]
        elif array.shape[-1] != 3:
            raise ImageReadError(
                f"Mask {path} has {array.shape[-1]} channels; expected one channel of class "
                "indices, a palette PNG, or an RGB colour mask."
            )
    is_integer = np.issubdtype(array.dtype, np.integer) or array.dtype == np.bool_
    if not is_integer and not np.all(np.equal(np.mod(array, 1), 0)):
        raise ImageReadError(
            f"Mask {path} holds non-integer values ({array.dtype}); expected class indices."
        )
    return array.astype(np.int64) if array.dtype != np.uint8 else array


def dtype_range(dtype: np.dtype) -> tuple[float, float]:
    """``(offset, span)`` mapping an image dtype to [0, 1]: ``(x - offset) / span``.

    Integers use their dtype's range (from 0 for signed types), booleans 0..1, floats are
    taken as they are (``(0, 1)``).
    """
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        low = max(info.min, 0)
        return float(low), float(info.max - low)
    return 0.0, 1.0


def to_float_image(array: np.ndarray) -> np.ndarray:
    """Integer images scaled to [0, 1] by their dtype's range; float images left as they are.

    Normalisation (ImageNet or dataset statistics) is applied on top of this scale, so the
    statistics saved with a run are in these units.
    """
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        low, span = dtype_range(array.dtype)
        return (array.astype(np.float32) - low) / span
    return array.astype(np.float32, copy=False)


def decode_image_bytes(
    data: bytes, *, max_pixels: int | None = None, max_bytes: int | None = None
) -> np.ndarray:
    """Decode an uploaded image (PNG, JPEG, TIFF incl. multi-band, BMP, WebP) to H x W x C.

    Raises :class:`NotAnImageError` for bytes in no accepted format (no other decoder ever
    runs), :class:`ImageTooLargeError` for images over ``max_pixels`` or whose decoded array
    would exceed ``max_bytes`` (both checked from the header, before decoding: no
    decompression bombs), :class:`ImageReadError` for empty or truncated data.
    """
    import io

    if not data:
        raise ImageReadError("Empty upload: no image bytes received.")
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        import tifffile

        try:
            with tifffile.TiffFile(io.BytesIO(data)) as tif:
                series = tif.series[0]
                check_decoded_size(series.shape, series.dtype.itemsize, max_bytes, "The TIFF")
                axes = series.axes
                spatial = [n for n, a in zip(series.shape, axes, strict=False) if a in "YX"]
                if max_pixels and int(np.prod(spatial or series.shape[-2:])) > max_pixels:
                    raise ImageTooLargeError(
                        f"TIFF of shape {series.shape} is over the limit of {max_pixels} pixels."
                    )
                array = series.asarray()
                axes = series.axes
        except ImageReadError:
            raise
        except Exception as exc:
            raise ImageReadError(f"Could not decode TIFF: {type(exc).__name__}: {exc}") from None
        if array.ndim == 3 and axes[0] in "SCI":
            array = np.moveaxis(array, 0, -1)
        image = array
    else:
        try:
            img = _open_pil(io.BytesIO(data))
        except NotAnImageError:
            raise NotAnImageError(
                "The upload is not an image in an accepted format (PNG, JPEG, TIFF, BMP or WebP)."
            ) from None
        except Exception as exc:
            raise ImageReadError(f"Could not read the image header: {exc}") from None
        with img:
            if max_pixels and img.width * img.height > max_pixels:
                raise ImageTooLargeError(
                    f"Image of {img.width}x{img.height} pixels is over the limit of {max_pixels} "
                    "pixels; downscale it, or tile it client-side."
                )
            check_decoded_size(*_pil_decoded_bytes(img), max_bytes, "The image")
            try:
                img.load()
            except Exception as exc:
                raise ImageReadError(
                    f"Could not decode image: {type(exc).__name__}: {exc}"
                ) from None
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            if img.mode in ("RGBA", "LA"):
                img = img.convert(img.mode[:-1])
            elif img.mode in ("CMYK", "YCbCr", "1"):
                img = img.convert("RGB" if img.mode != "1" else "L")
            image = np.asarray(img)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or min(image.shape[:2]) == 0:
        raise ImageReadError(f"Decoded an array of shape {image.shape}; expected H x W x C.")
    if max_pixels and image.shape[0] * image.shape[1] > max_pixels:
        raise ImageTooLargeError(
            f"Image of {image.shape[1]}x{image.shape[0]} pixels is over the limit of {max_pixels}."
        )
    return image


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Readers never see a half-written output: the file appears complete or not at all, and a
    failure removes the temporary file. The temporary name ``.partial.NAME`` keeps the suffix,
    so writers that infer the format from it (PIL, matplotlib, nibabel, numpy) still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".partial.{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_partials(folder: str | os.PathLike) -> int:
    """Delete the ``.partial.*`` files a killed run left in ``folder`` (and below); returns how
    many. :func:`atomic_path` removes its own on any error it sees, but not after a kill."""
    removed = 0
    for stale in Path(folder).rglob(".partial.*"):
        if stale.is_file():
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def write_mask_png(
    path: str | os.PathLike, mask: np.ndarray, palette: list[tuple[int, int, int]] | None = None
) -> None:
    """Write class indices as a palette PNG (values < 256), atomically (temp file + rename)."""
    path = Path(path)
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        raise ValueError("palette PNG masks hold indices 0..255")
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    if palette:
        flat = [c for color in palette for c in color]
        img.putpalette(flat + [0] * (768 - len(flat)))
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def write_planes_tiff(path: str | os.PathLike, planes: np.ndarray, names: list[str]) -> None:
    """Write ``C x H x W`` 0/1 class planes (multilabel masks) as a multi-band uint8 TIFF, one
    band per class in order, class names in the image description; atomically."""
    import json

    import tifffile

    with atomic_path(Path(path)) as tmp:
        tifffile.imwrite(
            tmp,
            np.ascontiguousarray(planes, dtype=np.uint8),
            photometric="minisblack",
            planarconfig="separate",
            compression="zlib",
            description=json.dumps({"classes": list(names)}),
            metadata=None,
        )
