"""Data: datasets for real mask formats, mask-aware augmentation, checks, the demo dataset."""

from unet_resnet.data.classes import ClassInfo, DataError, load_classes, resolve_classes
from unet_resnet.data.datasets import (
    PairedSegmentationDataset,
    SegmentationFolder,
    channel_stats,
    pad_collate,
)
from unet_resnet.data.demo import DEMO_CLASSES, make_demo_dataset
from unet_resnet.data.layouts.public import Cityscapes, OxfordIIITPet, VOCSegmentation
from unet_resnet.data.layouts.raster import RasterWindowDataset
from unet_resnet.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "DEMO_CLASSES",
    "Cityscapes",
    "ClassInfo",
    "DataError",
    "OxfordIIITPet",
    "PairedSegmentationDataset",
    "RasterWindowDataset",
    "SegmentationFolder",
    "VOCSegmentation",
    "build_eval_transform",
    "build_train_transform",
    "channel_stats",
    "load_classes",
    "make_demo_dataset",
    "pad_collate",
    "resolve_classes",
]
