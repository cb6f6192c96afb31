"""Inference: the Segmenter (arrays in, arrays out), the fast path, tiling, file formats,
evaluation."""

from unet_resnet.accel.fastpath import fold_batchnorm
from unet_resnet.inference.segmenter import Segmenter
from unet_resnet.inference.tiling import sliding_window_inference

__all__ = ["Segmenter", "fold_batchnorm", "sliding_window_inference"]
