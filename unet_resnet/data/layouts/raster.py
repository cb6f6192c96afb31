"""The raster layout: large GeoTIFF/TIFF scenes, ``DATA/{split}/{images,masks}/SCENE.tif``
(or one vector label file for every split: ``--labels FILE --label-field NAME``), read in
windows so that scenes far larger than memory train and check."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from unet_resnet.data.classes import ClassInfo, DataError
from unet_resnet.data.datasets import Transform, folder_pairs
from unet_resnet.data.layouts.base import LayoutOption, SplitOptions, register_layout
from unet_resnet.grid import tile_starts
from unet_resnet.io import to_float_image

__all__ = ["RasterWindowDataset", "check_rasters"]


def _cm_per_pixel(src) -> float | None:
    """A scene's pixel width on the ground in cm, from its CRS's linear unit (None when it
    has no projected CRS: degrees are no ground distance)."""
    crs = src.crs
    if crs is None or not crs.is_projected:
        return None
    try:
        _, metres_per_unit = crs.linear_units_factor
    except Exception:  # a CRS without a linear unit
        return None
    return abs(float(src.res[0])) * float(metres_per_unit) * 100


class RasterWindowDataset(Dataset):
    """Windows of large GeoTIFF/TIFF scenes and their label rasters (or vector labels), read
    lazily with rasterio.

    Only the requested window is read from disk, so scenes far larger than memory work.

    Args:
        scenes: ``(image_path, label_path)`` pairs; the label raster must have the image's
            size (label ``None`` yields ``ignore_index`` everywhere).
        window: window side in pixels (or ``(height, width)``).
        mode: ``"random"`` draws ``samples_per_epoch`` windows at random positions (training);
            ``"grid"`` covers every scene with windows at ``stride`` (validation).
        classes: class info; its ``ignore_index`` fills label nodata and padding.
        nodata_to_ignore: image pixels equal to the image's nodata value get ``ignore_index``.
        vector_labels: a :class:`~unet_resnet.data.vector.VectorLabels` rasterised per
            window instead of label rasters (the scenes' label paths are then unused).
    """

    #: Scenes whose vector features stay in memory (per process), least recently used dropped.
    SCENES_KEPT = 4

    def __init__(
        self,
        scenes: Sequence[tuple[str | os.PathLike, str | os.PathLike | None]],
        *,
        window: int | Sequence[int] = 512,
        mode: str = "random",
        samples_per_epoch: int = 1000,
        stride: int | None = None,
        classes: ClassInfo,
        transform: Transform | None = None,
        nodata_to_ignore: bool = True,
        vector_labels=None,
    ) -> None:
        try:
            import rasterio
        except ImportError:
            raise DataError(
                "Reading windows of large rasters needs rasterio: pip install 'unet-resnet[geo]'."
            ) from None
        self.scenes = [(Path(i), None if m is None else Path(m)) for i, m in scenes]
        self.window = (window, window) if isinstance(window, int) else tuple(window)
        if mode not in ("random", "grid"):
            raise ValueError(f"mode must be 'random' or 'grid', got {mode!r}.")
        self.mode = mode
        self.samples_per_epoch = samples_per_epoch
        self.classes = classes
        self.transform = transform
        self.nodata_to_ignore = nodata_to_ignore
        self.vector_labels = vector_labels
        self._scene_labels: dict[int, object] = {}
        self.shapes = []
        resolutions = []
        for image, label in self.scenes:
            with rasterio.open(image) as src:
                shape = (src.height, src.width)
                resolutions.append(_cm_per_pixel(src))
            if label is not None:
                with rasterio.open(label) as src:
                    if (src.height, src.width) != shape:
                        raise DataError(
                            f"Label raster {label} is {src.width}x{src.height} but scene {image} "
                            f"is {shape[1]}x{shape[0]}; they must cover the same pixel grid."
                        )
            self.shapes.append(shape)
        known = [r for r in resolutions if r is not None]
        #: The scenes' ground resolution in cm per pixel (median; None without a projected
        #: CRS): saved with the model, for GIS tools that scale imagery to it (Deepness).
        self.ground_resolution_cm = float(np.median(known)) if known else None
        stride = stride or self.window[0]
        self.grid = [
            (s, top, left)
            for s, (h, w) in enumerate(self.shapes)
            for top in tile_starts(h, self.window[0], stride)
            for left in tile_starts(w, self.window[1], stride)
        ]
        self._handles: dict[Path, object] = {}

    def __len__(self) -> int:
        return self.samples_per_epoch if self.mode == "random" else len(self.grid)

    def _open(self, path: Path):
        # One handle per path per process: DataLoader workers each open their own.
        import rasterio

        handle = self._handles.get(path)
        if handle is None:
            handle = self._handles[path] = rasterio.open(path)
        return handle

    def window_at(self, index: int) -> tuple[int, int, int]:
        if self.mode == "grid":
            return self.grid[index]
        g = torch.Generator().manual_seed(torch.initial_seed() + index)
        scene = int(torch.randint(len(self.scenes), (1,), generator=g))
        h, w = self.shapes[scene]
        top = int(torch.randint(max(1, h - self.window[0] + 1), (1,), generator=g))
        left = int(torch.randint(max(1, w - self.window[1] + 1), (1,), generator=g))
        return scene, top, left

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw window: image ``H x W x C`` in the stored dtype and mask ``H x W`` int64."""
        image, mask = self._read(index)
        return np.moveaxis(image, 0, -1), mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self._read(index)
        img = tv_tensors.Image(torch.from_numpy(to_float_image(np.ascontiguousarray(image))))
        msk = tv_tensors.Mask(torch.from_numpy(mask))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img, msk

    def _read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        from rasterio.windows import Window

        scene, top, left = self.window_at(index)
        image_path, label_path = self.scenes[scene]
        win = Window(left, top, self.window[1], self.window[0])
        ignore = self.classes.ignore_index
        try:
            src = self._open(image_path)
            image = src.read(window=win, boundless=True, fill_value=0)
            nodata = src.nodata
            if self.vector_labels is not None:
                mask = self._scene_vector(scene, src).rasterize(
                    src.window_transform(win), self.window
                )
            elif label_path is not None:
                lsrc = self._open(label_path)
                fill = lsrc.nodata if lsrc.nodata is not None else ignore
                mask = lsrc.read(1, window=win, boundless=True, fill_value=fill).astype(np.int64)
                if lsrc.nodata is not None:
                    mask[mask == int(lsrc.nodata)] = ignore
            else:
                mask = np.full(self.window, ignore, dtype=np.int64)
        except Exception as exc:
            raise DataError(
                f"Could not read window (row {top}, col {left}) of {image_path}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        # Outside the scene: padded, so unlabelled.
        h, w = self.shapes[scene]
        mask[max(0, h - top) :, :] = ignore
        mask[:, max(0, w - left) :] = ignore
        if self.nodata_to_ignore and nodata is not None:
            mask[np.all(image == nodata, axis=0)] = ignore
        return image, mask

    def _scene_vector(self, scene: int, src):
        labels = self._scene_labels.pop(scene, None)
        if labels is None:  # a scene's features, read when its first window is
            labels = self.vector_labels.for_scene(src.crs, src.bounds)
        self._scene_labels[scene] = labels  # most recent last
        while len(self._scene_labels) > self.SCENES_KEPT:
            self._scene_labels.pop(next(iter(self._scene_labels)))
        return labels

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_handles"] = {}  # file handles do not cross process boundaries
        state["_scene_labels"] = {}
        return state


def check_rasters(
    root: str | os.PathLike,
    *,
    num_classes: int | None = None,
    window: int = 512,
    progress: bool = True,
    labels: str | os.PathLike | None = None,
    label_field: str | None = None,
):
    """The data checks for large rasters: ``DATA/{split}/images/SCENE.tif`` +
    ``masks/SCENE.tif`` (or the vector ``labels`` file), read in a grid of ``window``
    windows, so every pixel is checked without loading a scene at once. Vector labels are
    also checked for invalid geometries, features outside every scene and unmapped values."""
    from unet_resnet.data.checks import SPLITS, check_scene_splits

    vector = {}

    def open_split(root: Path, split: str, report):
        pairs, orphans = folder_pairs(root, split)
        if labels and "labels" not in vector:
            from unet_resnet.data.vector import VectorLabels, check_vector_labels

            vector["labels"] = VectorLabels(labels, label_field, report.classes)
            scenes = [image for s in SPLITS for image, _ in folder_pairs(root, s)[0]]
            check_vector_labels(vector["labels"], scenes, report)
        for mask in [] if labels else orphans:
            report.error(f"Label raster without scene: {mask}.")
        ds = RasterWindowDataset(
            pairs,
            window=window,
            mode="grid",
            classes=report.classes,
            vector_labels=vector.get("labels"),
        )

        def describe(i: int) -> str:
            scene, top, left = ds.window_at(i)
            label = labels or ds.scenes[scene][1]
            return f"{label} (window at row {top}, col {left} of {ds.scenes[scene][0].name})"

        return pairs, ds, describe

    return check_scene_splits(root, num_classes, open_split, progress)


def _check(root: Path, options: SplitOptions, progress: bool):
    size = options.image_size
    return check_rasters(
        root,
        num_classes=options.num_classes,
        window=size if isinstance(size, int) else max(size),
        progress=progress,
        labels=options.option("labels"),
        label_field=options.option("label_field"),
    )


@register_layout(
    "raster",
    "DATA/{split}/{images,masks}/SCENE.tif large rasters, read in windows (or vector "
    "labels: --labels FILE --label-field NAME)",
    check=_check,
    upright=False,
    options=(
        LayoutOption(
            "labels",
            str,
            "raster: vector label file for every split (GeoJSON, GeoPackage, Shapefile, "
            "FlatGeobuf)",
        ),
        LayoutOption(
            "label_field",
            str,
            "raster: the --labels attribute with class names or codes",
            saved=True,
        ),
    ),
)
def _open(root: Path, split: str, options: SplitOptions):
    if not (root / split / "images").is_dir():
        return None
    pairs, _ = folder_pairs(root, split)
    classes = options.resolve_classes(root)
    vector_labels = None
    if options.option("labels"):
        from unet_resnet.data.vector import VectorLabels

        vector_labels = VectorLabels(
            options.option("labels"), options.option("label_field"), classes
        )
    return RasterWindowDataset(
        pairs,
        window=options.image_size,
        mode="random" if split == "train" else "grid",
        samples_per_epoch=options.samples_per_epoch,
        classes=classes,
        vector_labels=vector_labels,
    )
