"""Training on Lightning: module, data module, callbacks, config and the ``train`` driver."""

from unet_resnet.accel.gemm_conv import use_gemm_convolutions
from unet_resnet.training.config import TrainConfig
from unet_resnet.training.datamodule import SegmentationDataModule
from unet_resnet.training.module import SegmentationModule, TrainingDivergedError
from unet_resnet.training.train import TrainResult, train

__all__ = [
    "SegmentationDataModule",
    "SegmentationModule",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "train",
    "use_gemm_convolutions",
]
