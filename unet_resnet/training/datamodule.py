"""The LightningDataModule: datasets, augmentation, normalisation and the up-front data check."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler

from unet_resnet.data import (
    ClassInfo,
    DataError,
    build_eval_transform,
    build_train_transform,
    channel_stats,
    pad_collate,
)
from unet_resnet.data.layouts import (
    SplitOptions,
    check_layout,
    get_layout,
    open_split,
    volume_layouts,
)
from unet_resnet.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    choose_augment,
    choose_orientation,
)
from unet_resnet.hardware import device_class

__all__ = ["SegmentationDataModule"]


class SegmentationDataModule(L.LightningDataModule):
    """Train/val/test loaders for a dataset in one of the supported layouts.

    Args:
        data: dataset root.
        dataset: a layout of :data:`unet_resnet.data.layouts.LAYOUTS` (``folder``:
            DATA/{train,val,test}/{images,masks}, ``voc``, ``pet``, ``cityscapes``, ``nifti``,
            ``raster``).
        num_classes: for the folder layout without classes.json.
        image_size: side of the training crops.
        batch_size, workers: DataLoader settings.
        augment: augmentation preset (``auto``, ``none``, ``light``, ``default``,
            ``strong``); ``auto`` is resolved in :meth:`setup` by
            :func:`~unet_resnet.data.transforms.choose_augment` from the training set's size
            and the schedule (``epochs``), and the choice kept in ``augment_chosen``.
        orientation: ``upright`` (left-right flips only), ``free`` (also top-bottom) or
            ``auto``: :func:`~unet_resnet.data.transforms.choose_orientation` from the
            layout and the images' dtype, kept in ``orientation_chosen``.
        normalization: ``imagenet``, ``dataset`` (statistics of the training images), or
            ``auto``: ImageNet for 8-bit 3-channel images with ImageNet weights, else dataset.
        pretrained: whether the encoder starts from ImageNet weights (for ``auto``).
        pretrained_stats: ``(mean, std)`` the pretrained encoder expects, when not
            torchvision's ImageNet statistics (some timm weights use 0.5/0.5).
        ignore_index: overrides the classes' ignore index.
        check_data: run the layout's data check in :meth:`setup` and stop on errors.
        options: the layout's own options by name (:data:`~unet_resnet.data.layouts.
            LAYOUT_OPTIONS`: slice axis, COCO annotations and crowd rule, vector labels and
            their field, ...); unset ones take the layout's defaults.
        foreground_oversampling: volume layouts (see the config reference).
        samples_per_epoch: raster layouts: random windows per training epoch.
        folds, fold, splits: k-fold cross-validation over the training split's cases: fold
            ``fold`` of ``folds`` is the validation set (the val split is then unused), the
            folds read from or written to ``splits`` (default ``DATA/splits.json``; training
            passes ``RUN/splits.json``). ``fold_cases`` names the held-out cases.
        context_slices, modality: nifti layout: 2.5D neighbours per side, and the intensity
            rule (``ct``: fitted on the training foreground; ``mr``: per-case z-score;
            ``none``: as stored). ``volume_options()`` is what the checkpoint keeps.
        epochs: the schedule's length, for ``augment="auto"``.
        task: ``multiclass`` (class-index masks) or ``multilabel`` (per-class masks,
            :mod:`unet_resnet.data.multilabel`; ``C x H x W`` targets).
    """

    def __init__(
        self,
        data: str | os.PathLike,
        *,
        dataset: str = "folder",
        num_classes: int | None = None,
        image_size: int = 256,
        batch_size: int = 8,
        workers: int | str = "auto",
        augment: str = "auto",
        orientation: str = "auto",
        normalization: str = "auto",
        pretrained: bool = True,
        pretrained_stats: tuple[Sequence[float], Sequence[float]] | None = None,
        ignore_index: int | None = None,
        check_data: bool = True,
        options: Mapping[str, Any] | None = None,
        foreground_oversampling: float = 0.0,
        samples_per_epoch: int = 1000,
        folds: int = 0,
        fold: int = 0,
        splits: str | None = None,
        context_slices: int = 0,
        modality: str = "none",
        target_spacing: float | None = None,
        epochs: int | None = None,
        task: str = "multiclass",
    ) -> None:
        super().__init__()
        self.root = Path(data)
        # An unknown layout, or one that cannot read the task, fails here naming the valid ones.
        get_layout(dataset, SplitOptions(task=task))
        #: the layout's own options that were set, by name (one mapping, passed on as it is)
        self.options = {k: v for k, v in (options or {}).items() if v is not None}
        self.dataset_format = dataset
        self.task = task
        self.num_classes = num_classes
        self.image_size = image_size
        self.batch_size = batch_size
        self.workers = workers
        self.augment = augment
        self.orientation = orientation
        self.normalization = normalization
        self.pretrained = pretrained
        self.pretrained_stats = pretrained_stats
        self.ignore_index = ignore_index
        self.check_data = check_data
        self.foreground_oversampling = foreground_oversampling
        self.samples_per_epoch = samples_per_epoch
        self.folds, self.fold, self.splits = folds, fold, splits
        self.fold_cases: list[str] | None = None
        self.context_slices, self.modality = context_slices, modality
        self.target_spacing = target_spacing
        self.intensity = None
        #: The epoch a resumed run starts at (set by ``train``), for the per-sample seeds.
        self.start_epoch = 0
        self.epochs = epochs
        self.augment_chosen: str | None = None
        self.augment_reason = ""
        self.orientation_chosen: str | None = None
        self.orientation_reason = ""
        self.sampler = None
        self.classes: ClassInfo | None = None
        self.mean: list[float] | None = None
        self.std: list[float] | None = None
        self.in_channels: int | None = None
        self.image_dtype: str | None = None
        self.train_set = self.val_set = self.test_set = None

    def _options(self) -> SplitOptions:
        return SplitOptions(
            num_classes=self.num_classes,
            image_size=self.image_size,
            samples_per_epoch=self.samples_per_epoch,
            context_slices=self.context_slices,
            intensity=self.intensity,
            target_spacing=self.target_spacing,
            task=self.task,
            layout=self.options,
        )

    def split_options(self) -> dict:
        """What a checkpoint keeps to read the splits again (``CheckpointMeta.split``)."""
        return self._options().to_save(self.dataset_format)

    def ground_resolution_cm(self) -> float | None:
        """The training imagery's ground resolution (cm per pixel) where the layout knows it
        (georeferenced rasters), else None."""
        dataset = self.train_set
        while dataset is not None and not hasattr(dataset, "ground_resolution_cm"):
            dataset = getattr(dataset, "dataset", None)
        return None if dataset is None else dataset.ground_resolution_cm

    def volume_options(self) -> dict | None:
        if not get_layout(self.dataset_format).volumes:
            return None
        return {
            "slice_axis": self._options().option("slice_axis"),
            "context_slices": self.context_slices,
            "intensity": None if self.intensity is None else self.intensity.to_dict(),
            "target_spacing": self.target_spacing,
        }

    def _make(self, split: str):
        return open_split(self.root, split, self.dataset_format, self._options())

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        volume_flags = self.context_slices or self.modality != "none" or self.target_spacing
        if volume_flags and not get_layout(self.dataset_format).volumes:
            raise DataError(
                "--context-slices, --modality and --target-spacing apply to volumes (--dataset "
                f"{' or '.join(volume_layouts())}), not to --dataset {self.dataset_format}."
            )
        report = None
        if self.check_data:
            report = check_layout(self.root, self.dataset_format, self._options(), progress=False)
        if report is not None and not report.ok:
            raise DataError(
                "The dataset has problems; fix them before training:\n" + report.summary()
            )
        if not self.root.is_dir():
            raise DataError(f"Dataset folder {self.root} does not exist.")
        if self.modality == "ct":
            from unet_resnet.data.layouts.nifti import find_nifti_pairs
            from unet_resnet.volumes import IntensityRule

            self.intensity = IntensityRule.fit_ct(find_nifti_pairs(self.root, "train"))
        elif self.modality == "mr":
            from unet_resnet.volumes import IntensityRule

            self.intensity = IntensityRule("mr")
        train = self._make("train")
        if train is None or len(train) == 0:
            raise DataError(f"No training images found in {self.root}.")
        held_out = None
        if self.folds:
            from unet_resnet.data.folds import (
                CaseSubset,
                case_groups,
                fold_indices,
                load_or_make_splits,
            )

            groups = case_groups(train)
            splits = self.splits or str(self.root / "splits.json")
            folds = load_or_make_splits(splits, list(groups), self.folds)
            train_idx, val_idx = fold_indices(groups, folds, self.fold)
            self.fold_cases = folds[self.fold]
            held_out = CaseSubset(train, val_idx)
            train = CaseSubset(train, train_idx)
        classes = train.classes
        if self.ignore_index is not None:
            classes = ClassInfo(classes.names, classes.colors, self.ignore_index)
        self.classes = classes
        first = train.load(0)[0]
        self.in_channels = int(first.shape[-1])
        self.image_dtype = str(first.dtype)
        if self.mean is None:
            self.mean, self.std = self._normalization(train, first)

        self.train_set = train
        if get_layout(self.dataset_format).volumes and self.foreground_oversampling > 0:
            from torch.utils.data import WeightedRandomSampler

            from unet_resnet.data.layouts.nifti import slice_weights

            weights = slice_weights(train, self.foreground_oversampling)
            self.sampler = WeightedRandomSampler(weights, num_samples=len(train))
        self.val_set = held_out if self.folds else self._make("val")
        self.test_set = self._make("test")
        train.classes = classes
        self.augment_chosen, self.augment_reason = self.augment, "chosen by the user"
        if self.augment == "auto":
            steps = (self.epochs or 0) * math.ceil(len(train) / self.batch_size)
            self.augment_chosen, self.augment_reason = choose_augment(len(train), steps)
        self.orientation_chosen, self.orientation_reason = self.orientation, "chosen by the user"
        if self.orientation == "auto":
            self.orientation_chosen, self.orientation_reason = choose_orientation(
                self.image_dtype, get_layout(self.dataset_format).upright
            )
        # Brightness/contrast jitter models a camera's exposure: only for 8-bit images.
        photometric = self.image_dtype == "uint8"
        train.transform = build_train_transform(
            self.augment_chosen,
            size=self.image_size,
            mean=self.mean,
            std=self.std,
            ignore_index=classes.ignore_index,
            photometric=photometric,
            orientation=self.orientation_chosen,
        )
        for ds in (self.val_set, self.test_set):
            if ds is not None:
                ds.classes = classes
                ds.transform = build_eval_transform(mean=self.mean, std=self.std)

    def _normalization(self, train, first: np.ndarray) -> tuple[list[float], list[float]]:
        mode = self.normalization
        if mode == "auto":
            rgb8 = first.shape[-1] == 3 and first.dtype == np.uint8
            mode = "imagenet" if rgb8 and self.pretrained else "dataset"
        if mode == "imagenet":
            if first.shape[-1] != 3:
                raise DataError(
                    f"normalization=imagenet needs 3-channel images, got {first.shape[-1]}; "
                    "use normalization=dataset."
                )
            mean, std = self.pretrained_stats or (IMAGENET_MEAN, IMAGENET_STD)
            return [float(v) for v in mean], [float(v) for v in std]
        return channel_stats(train)

    def class_pixel_counts(self) -> np.ndarray:
        """Pixels per class over the training masks (for balanced class weights)."""
        assert self.train_set is not None and self.classes is not None
        counts = np.zeros(self.classes.num_classes, dtype=np.int64)
        for index in range(len(self.train_set)):
            mask = self.train_set.load(index)[1]
            if mask.ndim == 3:  # multilabel planes: pixels of each class
                counts += (mask == 1).reshape(mask.shape[0], -1).sum(1)
                continue
            valid = mask[(mask >= 0) & (mask < self.classes.num_classes)]
            counts += np.bincount(valid, minlength=self.classes.num_classes)
        return counts

    def _device_settings(self) -> tuple[int, bool]:
        """Loader workers and whether to pin batches, for the device training runs on."""
        trainer = getattr(self, "trainer", None)
        processes = 1
        pin = False
        if trainer is not None:
            processes = max(1, int(getattr(trainer, "num_devices", 1) or 1))
            pin = device_class(trainer.strategy.root_device).pin_memory
        return loader_workers(self.workers, processes), pin

    def _loader(self, dataset, *, shuffle: bool, batch_size: int, sampler=None) -> DataLoader:
        workers, pin = self._device_settings()
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle and sampler is None,
            sampler=sampler,
            num_workers=workers,
            persistent_workers=workers > 0,
            # page-locked batches copy to a GPU without blocking the training step
            pin_memory=pin,
            # Every image counts in every epoch (dropping a partial last batch cost 7% of the
            # steps on a 111-image set, and quality at short schedules); only a lone last
            # sample is dropped, as BatchNorm cannot train on one value per channel.
            drop_last=shuffle and len(dataset) > batch_size and len(dataset) % batch_size == 1,
            collate_fn=partial(pad_collate, ignore_index=self.classes.ignore_index),
        )

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Masks travel as uint8 (:func:`~unet_resnet.data.datasets.pad_collate`, an eighth
        of the bytes) and are widened to the loss's int64 on the device."""
        images, masks = batch
        return images, masks.long() if masks.dtype == torch.uint8 else masks

    def train_dataloader(self) -> DataLoader:
        # Each sample carries its own seed (drawn here, in the main process), so augmentation
        # is the same for any number of workers and a resumed run is exact.
        from torch.utils.data import RandomSampler

        from unet_resnet.data.seeding import SeededDataset, SeededSampler

        sampler = SeededSampler(
            self.sampler or RandomSampler(self.train_set),
            seed=torch.initial_seed(),
            start_epoch=self.start_epoch,
        )
        return self._loader(
            SeededDataset(self.train_set), shuffle=True, batch_size=self.batch_size, sampler=sampler
        )

    def val_dataloader(self) -> DataLoader | list:
        if self.val_set is None:
            return []
        return self._loader(
            self.val_set,
            shuffle=False,
            batch_size=self.batch_size,
            sampler=UnpaddedDistributedSampler.if_distributed(self.val_set),
        )

    def test_dataloader(self) -> DataLoader | list:
        if self.test_set is None:
            return []
        return self._loader(self.test_set, shuffle=False, batch_size=self.batch_size)


def loader_workers(requested: int | str, processes: int = 1) -> int:
    """DataLoader workers per training process: ``auto`` shares the cores this process may use
    among the ``processes`` training on this machine (one core each left for the training
    loop), at least 2 and at most 8 each; a number is used as given."""
    if requested != "auto":
        return int(requested)
    if hasattr(os, "sched_getaffinity"):
        cores = len(os.sched_getaffinity(0))
    else:
        cores = os.cpu_count() or 1
    return max(2, min(8, cores // max(1, processes) - 1))


class UnpaddedDistributedSampler(DistributedSampler):
    """Each rank's share of an evaluation set, every sample exactly once over all ranks.

    PyTorch's ``DistributedSampler`` repeats samples so that every rank gets as many; for
    validation the repeats would count twice in the metrics (which torchmetrics sums over
    the ranks). Ranks may get one sample fewer here; metrics are synchronised at the epoch's
    end, so uneven counts are fine. Lightning keeps a sampler of this class as it is.
    """

    def __init__(self, dataset, **kwargs) -> None:
        super().__init__(dataset, shuffle=False, **kwargs)
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))
        self.total_size = len(dataset)

    def __iter__(self):
        return iter(range(self.rank, len(self.dataset), self.num_replicas))

    @classmethod
    def if_distributed(cls, dataset) -> UnpaddedDistributedSampler | None:
        """One for ``dataset`` when this process is one of several, else None."""
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            return cls(dataset)
        return None
