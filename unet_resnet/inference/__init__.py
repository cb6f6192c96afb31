"""Inference: the Segmenter facade, sliding-window tiling, file prediction, evaluation."""

from unet_resnet.inference.segmenter import Segmenter, fold_batchnorm
from unet_resnet.inference.tiling import sliding_window_inference

__all__ = ["Segmenter", "fold_batchnorm", "sliding_window_inference"]
