"""Datasets: the folder layout, three public layouts, and windows of large rasters.

Every dataset yields ``(image, mask)``: a float ``tv_tensors.Image`` (C x H x W, integer
images scaled to [0, 1]) and an int64 ``tv_tensors.Mask`` (H x W) of class indices with
``ignore_index`` where there is no label, after the dataset's ``transform``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torchvision import tv_tensors

from unet_resnet.data.classes import ClassInfo, DataError, resolve_classes
from unet_resnet.grid import tile_starts
from unet_resnet.io import IMAGE_SUFFIXES, read_image, read_mask_raw, to_float_image

__all__ = [
    "CITYSCAPES_CLASSES",
    "VOC_CLASSES",
    "Cityscapes",
    "OxfordIIITPet",
    "PairedSegmentationDataset",
    "RasterWindowDataset",
    "SegmentationFolder",
    "VOCSegmentation",
    "pad_collate",
]

Transform = Callable[[tv_tensors.Image, tv_tensors.Mask], tuple[torch.Tensor, torch.Tensor]]


class PairedSegmentationDataset(Dataset):
    """Image/mask file pairs, decoded through :class:`ClassInfo` and an optional lookup table.

    Args:
        pairs: ``(image_path, mask_path)``; ``mask_path`` may be ``None`` for unlabelled images.
        classes: class names/colours/ignore index.
        transform: joint transform taking and returning ``(image, mask)``.
        label_map: optional array mapping raw mask values to class indices (dataset label ids
            to train ids); values beyond its length become ``ignore_index``.
    """

    def __init__(
        self,
        pairs: Sequence[tuple[Path, Path | None]],
        classes: ClassInfo,
        transform: Transform | None = None,
        label_map: np.ndarray | None = None,
    ) -> None:
        self.pairs = [(Path(i), None if m is None else Path(m)) for i, m in pairs]
        self.classes = classes
        self.transform = transform
        self.label_map = label_map

    def __len__(self) -> int:
        return len(self.pairs)

    @property
    def image_paths(self) -> list[Path]:
        return [image for image, _ in self.pairs]

    def load_mask(self, path: Path) -> np.ndarray:
        raw = read_mask_raw(path)
        if self.label_map is not None:
            if raw.ndim != 2:
                raise DataError(f"Mask {path} should be single-channel label ids.")
            values = np.clip(raw.astype(np.int64), 0, len(self.label_map) - 1)
            mapped = self.label_map[values]
            mapped[(raw < 0) | (raw >= len(self.label_map))] = self.classes.ignore_index
            return mapped
        return self.classes.decode_mask(raw, path)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw arrays: image ``H x W x C`` (stored dtype) and mask ``H x W`` int64 or None."""
        image_path, mask_path = self.pairs[index]
        image = read_image(image_path)
        mask = None if mask_path is None else self.load_mask(mask_path)
        if mask is not None and mask.shape != image.shape[:2]:
            raise DataError(
                f"Size mismatch: image {image_path} is {image.shape[1]}x{image.shape[0]} but "
                f"mask {mask_path} is {mask.shape[1]}x{mask.shape[0]} (width x height). Masks "
                "must have the image's size; re-export the mask."
            )
        return image, mask

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = self.load(index)
        if mask is None:
            mask = np.full(image.shape[:2], self.classes.ignore_index, dtype=np.int64)
        return self.to_tensors(image, mask)

    def to_tensors(self, image: np.ndarray, mask: np.ndarray):
        img = tv_tensors.Image(
            torch.from_numpy(np.ascontiguousarray(to_float_image(image))).permute(2, 0, 1)
        )
        msk = tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))
        if self.transform is not None:
            img, msk = self.transform(img, msk)
        return img, msk


def _files_by_stem(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    if folder.is_dir():
        for path in sorted(folder.iterdir()):
            if (
                path.is_file()
                and path.suffix.lower() in IMAGE_SUFFIXES
                and not path.name.startswith(".")
            ):
                files.setdefault(path.stem, path)
    return files


def folder_pairs(root: Path, split: str) -> tuple[list[tuple[Path, Path | None]], list[Path]]:
    """Pair ``root/split/images/*`` with ``root/split/masks/*`` by file stem.

    Returns the pairs (images without a mask get ``None``) and the masks with no image.
    """
    images = _files_by_stem(root / split / "images")
    masks = _files_by_stem(root / split / "masks")
    pairs = [(path, masks.get(stem)) for stem, path in images.items()]
    orphans = [path for stem, path in masks.items() if stem not in images]
    return pairs, orphans


class SegmentationFolder(PairedSegmentationDataset):
    """The default layout: ``root/{train,val,test}/{images,masks}/NAME.ext``.

    Classes come from ``root/classes.json`` (or .yaml) when present, else ``num_classes``
    generic names. Images without a mask are an error here; ``unet-resnet check-data`` lists
    every such problem at once.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        num_classes: int | None = None,
        classes: ClassInfo | None = None,
        transform: Transform | None = None,
    ) -> None:
        root = Path(root)
        if not (root / split / "images").is_dir():
            raise DataError(
                f"No folder {root / split / 'images'}. Expected the layout "
                f"DATA/{{train,val,test}}/{{images,masks}}/NAME.ext under {root}; run "
                "`unet-resnet check-data` on it, or `unet-resnet make-demo-data` for an example."
            )
        pairs, _ = folder_pairs(root, split)
        if not pairs:
            raise DataError(
                f"{root / split / 'images'} holds no images ({', '.join(IMAGE_SUFFIXES)})."
            )
        unlabelled = [image for image, mask in pairs if mask is None]
        if unlabelled:
            raise DataError(
                f"{len(unlabelled)} image(s) in {root / split / 'images'} have no mask with the "
                f"same name in {root / split / 'masks'}, e.g. {unlabelled[0].name}. Add the "
                "masks or move the images out; `unet-resnet check-data` lists them all."
            )
        classes = classes or resolve_classes(root, num_classes)
        super().__init__(pairs, classes, transform)
        self.root = root
        self.split = split


# Pascal VOC 2012 -----------------------------------------------------------------------------
VOC_CLASSES = ClassInfo(
    names=[
        "background",
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ]
)


def _read_ids(path: Path) -> list[str]:
    if not path.is_file():
        raise DataError(f"Missing split file {path}.")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


class VOCSegmentation(PairedSegmentationDataset):
    """Pascal VOC 2012: ``JPEGImages``, palette masks in ``SegmentationClass`` (255 = void),
    split lists in ``ImageSets/Segmentation/{train,val,trainval}.txt``. ``root`` may be the
    ``VOC2012`` folder or a folder above it (``VOCdevkit``)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", *, transform=None) -> None:
        root = Path(root)
        for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
            if (candidate / "JPEGImages").is_dir():
                root = candidate
                break
        else:
            raise DataError(f"{root} does not look like Pascal VOC 2012 (no JPEGImages folder).")
        ids = _read_ids(root / "ImageSets" / "Segmentation" / f"{split}.txt")
        pairs = [
            (root / "JPEGImages" / f"{i}.jpg", root / "SegmentationClass" / f"{i}.png") for i in ids
        ]
        super().__init__(pairs, VOC_CLASSES, transform)


# Oxford-IIIT Pet -----------------------------------------------------------------------------
class OxfordIIITPet(PairedSegmentationDataset):
    """Oxford-IIIT Pet: ``images/*.jpg``, ``annotations/trimaps/*.png`` with 1 = pet,
    2 = background, 3 = border. Splits from ``annotations/trainval.txt`` (train) and
    ``annotations/test.txt`` (val/test). The border becomes ``ignore_index`` by default, or a
    third class with ``border="class"``."""

    def __init__(
        self,
        root: str | os.PathLike,
        split: str = "train",
        *,
        border: str = "ignore",
        transform=None,
    ) -> None:
        root = Path(root)
        if root.name != "oxford-iiit-pet" and (root / "oxford-iiit-pet").is_dir():
            root = root / "oxford-iiit-pet"
        list_file = root / "annotations" / ("trainval.txt" if split == "train" else "test.txt")
        ids = _read_ids(list_file)
        pairs = [
            (root / "images" / f"{i}.jpg", root / "annotations" / "trimaps" / f"{i}.png")
            for i in ids
        ]
        if border not in ("ignore", "class"):
            raise ValueError(f"border must be 'ignore' or 'class', got {border!r}.")
        names = ["background", "pet"] + (["border"] if border == "class" else [])
        label_map = np.full(256, 255, dtype=np.int64)
        label_map[1], label_map[2] = 1, 0
        label_map[3] = 2 if border == "class" else 255
        super().__init__(
            pairs,
            ClassInfo(names, [(0, 0, 0), (255, 128, 0), (255, 255, 255)][: len(names)]),
            transform,
            label_map,
        )


# Cityscapes ------------------------------------------------------------------------------------
# (label id, train id, name, colour) for the 19 evaluated classes
_CITYSCAPES = [
    (7, 0, "road", (128, 64, 128)),
    (8, 1, "sidewalk", (244, 35, 232)),
    (11, 2, "building", (70, 70, 70)),
    (12, 3, "wall", (102, 102, 156)),
    (13, 4, "fence", (190, 153, 153)),
    (17, 5, "pole", (153, 153, 153)),
    (19, 6, "traffic light", (250, 170, 30)),
    (20, 7, "traffic sign", (220, 220, 0)),
    (21, 8, "vegetation", (107, 142, 35)),
    (22, 9, "terrain", (152, 251, 152)),
    (23, 10, "sky", (70, 130, 180)),
    (24, 11, "person", (220, 20, 60)),
    (25, 12, "rider", (255, 0, 0)),
    (26, 13, "car", (0, 0, 142)),
    (27, 14, "truck", (0, 0, 70)),
    (28, 15, "bus", (0, 60, 100)),
    (31, 16, "train", (0, 80, 100)),
    (32, 17, "motorcycle", (0, 0, 230)),
    (33, 18, "bicycle", (119, 11, 32)),
]
CITYSCAPES_CLASSES = ClassInfo([n for _, _, n, _ in _CITYSCAPES], [c for *_, c in _CITYSCAPES])
CITYSCAPES_LABEL_MAP = np.full(256, 255, dtype=np.int64)
for _label_id, _train_id, _, _ in _CITYSCAPES:
    CITYSCAPES_LABEL_MAP[_label_id] = _train_id


class Cityscapes(PairedSegmentationDataset):
    """Cityscapes fine annotations: ``leftImg8bit/SPLIT/CITY/*_leftImg8bit.png`` with
    ``gtFine/SPLIT/CITY/*_gtFine_labelIds.png``; label ids map to the 19 train ids, everything
    else to 255 (ignored)."""

    def __init__(self, root: str | os.PathLike, split: str = "train", *, transform=None) -> None:
        root = Path(root)
        image_root = root / "leftImg8bit" / split
        if not image_root.is_dir():
            raise DataError(f"{root} does not look like Cityscapes (no {image_root}).")
        pairs = []
        for image in sorted(image_root.glob("*/*_leftImg8bit.png")):
            stem = image.name.removesuffix("_leftImg8bit.png")
            mask = root / "gtFine" / split / image.parent.name / f"{stem}_gtFine_labelIds.png"
            pairs.append((image, mask))
        if not pairs:
            raise DataError(f"No *_leftImg8bit.png images under {image_root}.")
        super().__init__(pairs, CITYSCAPES_CLASSES, transform, CITYSCAPES_LABEL_MAP)


# Large rasters -----------------------------------------------------------------------------------
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
        for image, label in self.scenes:
            with rasterio.open(image) as src:
                shape = (src.height, src.width)
            if label is not None:
                with rasterio.open(label) as src:
                    if (src.height, src.width) != shape:
                        raise DataError(
                            f"Label raster {label} is {src.width}x{src.height} but scene {image} "
                            f"is {shape[1]}x{shape[0]}; they must cover the same pixel grid."
                        )
            self.shapes.append(shape)
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


def pad_collate(batch, *, ignore_index: int = 255):
    """Stack ``(image, mask)`` pairs of different sizes by padding to the largest.

    Images are padded with 0 (the normalised mean) and masks with ``ignore_index`` on the
    bottom/right, so padding never counts in the loss or the metrics. Masks are ``H x W``
    class indices or ``C x H x W`` planes (multilabel), as uint8 where every value (and
    ``ignore_index``) fits, else int64: an eighth of the bytes to copy to a GPU, widened
    there (``SegmentationDataModule.on_after_batch_transfer``).
    """
    images, masks = zip(*batch, strict=True)
    h = max(i.shape[-2] for i in images)
    w = max(i.shape[-1] for i in images)
    out_images = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    lead = tuple(masks[0].shape[:-2])
    small = 0 <= ignore_index <= 255 and all(
        m.numel() == 0 or (int(m.min()) >= 0 and int(m.max()) <= 255) for m in masks
    )
    dtype = torch.uint8 if small else torch.int64
    out_masks = torch.full((len(masks), *lead, h, w), ignore_index, dtype=dtype)
    for k, (image, mask) in enumerate(batch):
        out_images[k, :, : image.shape[-2], : image.shape[-1]] = image
        out_masks[k, ..., : mask.shape[-2], : mask.shape[-1]] = mask
    return out_images.as_subclass(torch.Tensor), out_masks


def channel_stats(dataset, max_images: int = 200) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the (scaled) training images, from up to ``max_images``."""
    count = min(len(dataset), max_images)
    step = max(1, len(dataset) // count) if count else 1
    total = total_sq = None
    n = 0
    for index in range(0, len(dataset), step)[:count]:
        image = to_float_image(dataset.load(index)[0]).astype(np.float64)
        flat = image.reshape(-1, image.shape[-1])
        total = flat.sum(0) if total is None else total + flat.sum(0)
        total_sq = (flat**2).sum(0) if total_sq is None else total_sq + (flat**2).sum(0)
        n += flat.shape[0]
    if n == 0:
        raise DataError("Cannot compute normalisation statistics from an empty dataset.")
    mean = total / n
    std = np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))
    std[std < 1e-6] = 1.0  # a constant band: leave its scale alone
    return mean.tolist(), std.tolist()
