"""A CVAT auto-annotation function (``pip install unet-resnet[integrations]``)::

    cvat-cli --server-host URL --auth USER task auto-annotate TASK \\
        --function-module unet_resnet.integrations.cvat -p checkpoint=str:best.pt

(also with ``cvat-cli function create-native`` / ``run-agent``). Its spec lists the
checkpoint's classes (background left out) as mask labels; each frame is predicted like
``predict`` does (the same tiling, TTA and backends) and every class present becomes one mask
shape, or, when CVAT asks for polygons (``--conv-mask-to-poly``), one polygon per region.
Parameters (``-p NAME=TYPE:VALUE``): ``checkpoint`` (a ``.pt``, ONNX file or OpenVINO
folder), ``device``, ``precision``, ``backend``, ``tile_size``, ``tta``, ``min_pixels``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import PIL.Image

from unet_resnet.errors import UnetResnetError
from unet_resnet.inference import Segmenter
from unet_resnet.integrations.shapes import region_polygons

try:
    import cvat_sdk.auto_annotation as cvataa
    from cvat_sdk.masks import encode_mask
except ImportError:  # pragma: no cover - the extra is missing
    raise UnetResnetError(
        "The CVAT function needs cvat-sdk: pip install 'unet-resnet[integrations]'."
    ) from None

__all__ = ["SegmentationFunction", "create"]


class SegmentationFunction:
    """A CVAT detection function around a :class:`Segmenter` (label id = class index)."""

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        *,
        device: str = "auto",
        precision: str = "auto",
        backend: str = "auto",
        tile_size: int | None = None,
        tta: bool = False,
        min_pixels: int = 4,
        segmenter: Segmenter | None = None,
    ):
        if segmenter is None:
            if checkpoint is None:
                raise UnetResnetError(
                    "The CVAT function needs its checkpoint: -p checkpoint=str:PATH."
                )
            options = {"tile_size": tile_size} if tile_size else {}
            segmenter = Segmenter.from_checkpoint(
                checkpoint, device=device, precision=precision, backend=backend, tta=tta, **options
            )
        if segmenter.task.overlapping:
            raise UnetResnetError(
                "CVAT masks here are one class per pixel; this is a multilabel model. Use "
                "`unet-resnet predict` (a band per class) instead."
            )
        self.segmenter, self.min_pixels = segmenter, min_pixels
        names = segmenter.classes.names
        self.spec = cvataa.DetectionFunctionSpec(
            labels=[cvataa.label_spec(name, i, type="mask") for i, name in enumerate(names) if i]
        )

    def _array(self, image: PIL.Image.Image) -> np.ndarray:
        channels = self.segmenter.in_channels
        mode = {1: "L", 3: "RGB"}.get(channels)
        if mode is not None and image.mode != mode:
            image = image.convert(mode)
        return np.asarray(image)

    def detect(
        self, context: cvataa.DetectionFunctionContext, image: PIL.Image.Image
    ) -> Sequence[cvataa.DetectionAnnotation]:
        labels = self.segmenter.predict(self._array(image))
        shapes = []
        for index in np.unique(labels).tolist():
            if index == 0 or index == self.segmenter.classes.ignore_index:
                continue
            region = labels == index
            if region.sum() < self.min_pixels:
                continue
            if context.conv_mask_to_poly:
                for ring in region_polygons(region, min_pixels=self.min_pixels):
                    shapes.append(cvataa.polygon(int(index), ring.ravel().tolist()))
            else:
                shapes.append(cvataa.mask(int(index), encode_mask(region)))
        return shapes


#: What ``cvat-cli ... --function-module unet_resnet.integrations.cvat -p ...`` calls.
create = SegmentationFunction
