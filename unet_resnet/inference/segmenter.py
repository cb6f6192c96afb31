"""``Segmenter``: one object that turns images (arrays or files, any size) into masks.

It carries what the checkpoint says about the data (classes, normalisation, channel count),
picks the fast path for the hardware (bf16 weights and activations on CPUs with AMX/AVX-512
BF16 and on GPUs, channels_last, Conv+BN folding, on CPUs oneDNN-packed convolutions with
fused ReLU/residual add, inference mode), tiles images larger than ``tile_size`` and can
average test-time augmentations.
"""

from __future__ import annotations

import itertools
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import torch
from torch import nn

from unet_resnet.checkpoint import load_checkpoint
from unet_resnet.data.classes import ClassInfo
from unet_resnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from unet_resnet.errors import InputShapeError
from unet_resnet.hardware import auto_precision, resolve_device
from unet_resnet.inference.tiling import Blend, overlap_pixels, sliding_window_inference
from unet_resnet.io import dtype_range

__all__ = ["OnnxModel", "Precision", "Segmenter", "fold_batchnorm", "labels_from_probs"]

Precision = Literal["auto", "fp32", "bf16", "fp16"]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# numpy dtypes torch cannot hold (or compute with), and the lossless type they are read as.
_TORCH_STORAGE = {"b1": np.uint8, "u2": np.int32, "u4": np.int64, "u8": np.float64}


def labels_from_probs(probs: torch.Tensor) -> np.ndarray:
    """Arg-max over classes of ``K x H x W`` probabilities: uint8 for up to 256 classes."""
    # One vectorised pass per class: torch's argmax over the leading dimension of a large
    # tensor runs element by element and costs a third of the model's time on a big scene.
    # Strict ">" keeps the first of equal maxima, as argmax does.
    labels = torch.zeros(
        probs.shape[1:],
        dtype=torch.uint8 if probs.shape[0] <= 256 else torch.int32,
        device=probs.device,
    )
    best = probs[0].clone()
    for k in range(1, probs.shape[0]):
        labels.masked_fill_(probs[k] > best, k)
        torch.maximum(best, probs[k], out=best)
    return labels.cpu().numpy()


class OnnxModel(nn.Module):
    """An exported ONNX file run by ONNX Runtime, callable like the PyTorch model.

    Takes and returns torch tensors so the Segmenter's tiling and TTA apply unchanged. Inputs
    are padded to a multiple of 32 here, by the same rule as the eager model (the graph's
    own reflect padding needs sides of at least 32), so both backends see the same pixels.
    """

    def __init__(self, path: str | os.PathLike, metadata: dict, providers: list[str] | None = None):
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        self.session = ort.InferenceSession(
            str(path), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_name = self.session.get_inputs()[0].name
        self.in_channels = int(metadata["model_config"]["in_channels"])
        self.n_classes = int(metadata["model_config"]["n_classes"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        pad_h, pad_w = -h % 32, -w % 32
        if pad_h or pad_w:
            mode = "reflect" if pad_h < h and pad_w < w else "replicate"
            x = torch.nn.functional.pad(x, (0, pad_w, 0, pad_h), mode=mode)
        array = np.ascontiguousarray(x.detach().float().cpu().numpy())
        out = torch.from_numpy(self.session.run(None, {self.input_name: array})[0])
        return out[..., :h, :w]


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it.

    Covers the guide's ConvBlocks, the ResNet stem, bottleneck/basic blocks and their
    downsample branches; the folded BatchNorm becomes an Identity. Saves a full pass over
    every activation at inference; outputs are unchanged up to float rounding.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
        if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
            setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
            setattr(parent, bn_name, nn.Identity())

    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                fold(module, a, b)
        for conv_name in [n for n, m in module.named_children() if isinstance(m, nn.Conv2d)]:
            for bn_name in (conv_name.replace("conv", "bn"), "bn"):
                if bn_name != conv_name and hasattr(module, bn_name):
                    fold(module, conv_name, bn_name)
                    break
    return model


class Segmenter:
    """Predict masks with a trained model.

    Args:
        model: the network (an ``nn.Module`` returning logits).
        classes: class names/colours; default generic names.
        mean, std: per-channel normalisation of images scaled to [0, 1] (integer images by
            their dtype's range); default ImageNet for 3 channels, none otherwise.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        precision: ``"auto"`` (bf16 where the hardware runs it natively, else fp32),
            ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA).
        tile_size: images with a side above this are predicted tile by tile.
        overlap: tile overlap, fraction (< 1) or pixels.
        blend: tile weighting, ``"gaussian"`` (default), ``"linear"`` or ``"constant"``.
        batch_size: tiles (or list images of one size) per forward pass.
        tta: average predictions over flips (and 90-degree rotations with ``tta_rotations``).
        channels_last, fold_bn, pack_weights: fast-path switches (on by default);
            ``pack_weights`` packs convolution weights for oneDNN once and fuses ReLUs and
            residual adds on CPUs (see :mod:`unet_resnet.inference.onednn`).
        compile: wrap the model in ``torch.compile`` with Inductor freezing (slow first call;
            on CPUs no faster than the packed default, see docs/performance.md).
        image_dtype: the dtype the model was trained on, for a warning on mismatches.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        classes: ClassInfo | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        device: str = "auto",
        precision: Precision = "auto",
        tile_size: int = 1024,
        overlap: float = 0.25,
        blend: Blend = "gaussian",
        batch_size: int = 4,
        tta: bool = False,
        tta_rotations: bool = False,
        channels_last: bool = True,
        fold_bn: bool = True,
        pack_weights: bool = True,
        compile: bool = False,
        image_dtype: str | None = None,
        progress: bool = False,
    ) -> None:
        if precision not in get_args(Precision):
            raise ValueError(
                f"Unknown precision {precision!r}. Choose one of: {', '.join(get_args(Precision))}."
            )
        overlap_pixels(tile_size, overlap)  # validates
        self.device = resolve_device(device)
        self.precision = self._resolve_precision(precision)
        self.in_channels = int(getattr(model, "in_channels", 3))
        self.num_classes = int(getattr(model, "n_classes", 0)) or None
        self.classes = classes or ClassInfo.generic(self.num_classes or 2)
        if mean is None and self.in_channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.tile_size, self.overlap, self.blend = tile_size, overlap, blend
        self.batch_size = batch_size
        self.tta, self.tta_rotations = tta, tta_rotations
        self.image_dtype = image_dtype
        self.progress = progress
        self.channels_last = channels_last

        model = model.eval()
        if fold_bn:
            import copy

            model = fold_batchnorm(copy.deepcopy(model))
        # Reduced precision as weights, not autocast: autocast re-casts every weight on every
        # call, which costs a quarter of the time of this model on a CPU (see README,
        # Performance). The softmax and everything after it stay in fp32.
        self.dtype = _DTYPES[self.precision] if not isinstance(model, OnnxModel) else torch.float32
        model = model.to(self.device, self.dtype)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.packed = False
        if pack_weights and fold_bn and channels_last and not compile:
            from unet_resnet.inference.onednn import pack_checked

            generator = torch.Generator().manual_seed(0)
            example = torch.randn(1, self.in_channels, 64, 64, generator=generator)
            example = example.to(self.device, self.dtype, memory_format=torch.channels_last)
            model, self.packed = pack_checked(model, example)
        self.model = model
        if compile:
            # Freezing lets Inductor pack weights and fuse like the oneDNN path; without it the
            # compiled model is slower than the packed eager one. (Inference graphs only;
            # the per-call options dict does not reach this setting.)
            from torch._inductor import config as inductor_config

            inductor_config.freezing = True
        self._forward_model = torch.compile(model) if compile else model

    # Construction ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        *,
        device: str = "auto",
        precision: Precision = "auto",
        **kwargs,
    ) -> Segmenter:
        """Load a checkpoint written by ``unet-resnet train`` (or the original's state dict)."""
        model, meta = load_checkpoint(path)
        return cls(
            model,
            classes=meta.classes,
            mean=meta.mean,
            std=meta.std,
            device=device,
            precision=precision,
            image_dtype=meta.image_dtype,
            **kwargs,
        )

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, **kwargs) -> Segmenter:
        """Run an ONNX file written by ``unet-resnet export`` through ONNX Runtime (CPU).

        Classes and normalisation come from the export's metadata; tiling and TTA work as with
        the PyTorch backend.
        """
        from unet_resnet.export import read_export_metadata

        meta = read_export_metadata(path)
        kwargs.setdefault("device", "cpu")
        return cls(
            OnnxModel(path, meta),
            classes=ClassInfo.from_dict(meta["classes"]),
            mean=meta["mean"],
            std=meta["std"],
            image_dtype=meta.get("image_dtype"),
            precision="fp32",
            fold_bn=False,
            channels_last=False,
            **kwargs,
        )

    def _resolve_precision(self, precision: str) -> str:
        if precision == "auto":
            return auto_precision(self.device.type)
        if precision == "fp16" and self.device.type == "cpu":
            raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU.")
        return precision

    # Core --------------------------------------------------------------------------------------
    def _probs(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities (fp32) for a normalised ``N x C x H x W`` batch, with TTA."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.to(self.dtype, memory_format=fmt)
        views: list[tuple] = [((), 0)]
        if self.tta:
            views += [((-1,), 0), ((-2,), 0)]
            if self.tta_rotations:
                views += [((), 1), ((), 2), ((), 3)]
        total = None
        with torch.inference_mode():
            for flip, k in views:
                x = batch.flip(flip) if flip else batch
                x = torch.rot90(x, k, (-2, -1)) if k else x
                p = self._forward_model(x).float().softmax(1)
                p = torch.rot90(p, -k, (-2, -1)) if k else p  # invert on the output
                p = p.flip(flip) if flip else p
                total = p if total is None else total + p
        return total / len(views)

    def _prepare(self, image: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Check an image; return it as a ``C x H x W`` tensor in its own dtype (no copy where
        torch can share the memory) plus the per-channel ``scale`` and ``shift`` that map its
        values to the model's normalised input. Tiles are normalised batch by batch, so a
        large scene is never held in float32 as a whole."""
        if not isinstance(image, np.ndarray):
            raise InputShapeError(f"Expected a numpy array, got {type(image).__name__}.")
        if image.ndim == 2:
            image = image[..., None]
        if image.ndim != 3:
            raise InputShapeError(f"Expected an H x W or H x W x C image, got shape {image.shape}.")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise InputShapeError(f"Got an empty image of shape {image.shape}.")
        if image.shape[-1] != self.in_channels:
            raise InputShapeError(
                f"The model takes {self.in_channels}-channel images, got {image.shape[-1]} "
                f"channel(s) (shape {image.shape}). Convert the image (e.g. grey to RGB), or use "
                f"a model trained with in_channels={image.shape[-1]}."
            )
        if image.dtype.kind not in "biuf":
            raise InputShapeError(
                f"Unsupported image dtype {image.dtype}; expected integers, booleans or floats."
            )
        if self.image_dtype and np.dtype(self.image_dtype) != image.dtype:
            warnings.warn(
                f"The model was trained on {self.image_dtype} images, got {image.dtype}; values "
                "are scaled by their dtype's range, so results may be off.",
                stacklevel=3,
            )
        # (x - offset) / span, then (x - mean) / std, as one multiply-add per value.
        offset, span = dtype_range(image.dtype)
        mean = self.mean if self.mean is not None else torch.zeros(1, 1, 1)
        std = self.std if self.std is not None else torch.ones(1, 1, 1)
        scale = 1 / (span * std)
        shift = -(offset / span + mean) / std
        stored = _TORCH_STORAGE.get(image.dtype.str[1:])
        if stored is not None:
            image = image.astype(stored)
        elif not image.dtype.isnative:
            image = image.astype(image.dtype.newbyteorder("="))
        if any(stride < 0 for stride in image.strides):
            image = np.ascontiguousarray(image)
        with warnings.catch_warnings():
            # Read-only arrays (memory maps, decoded buffers) are shared, never written to.
            warnings.filterwarnings("ignore", "The given NumPy array is not writable")
            x = torch.from_numpy(image).permute(2, 0, 1)
        return x.to(self.device), scale.to(self.device), shift.to(self.device)

    def _proba_tensor(self, image: np.ndarray) -> torch.Tensor:
        """Probabilities ``K x H x W`` (float32, on the segmenter's device) for one image."""
        x, scale, shift = self._prepare(image)

        def forward(batch: torch.Tensor) -> torch.Tensor:
            return self._probs(torch.addcmul(shift, batch.float(), scale))

        return sliding_window_inference(
            x,
            forward,
            tile_size=self.tile_size,
            overlap=self.overlap,
            batch_size=self.batch_size,
            blend=self.blend,
            progress=self.progress,
        )

    # Public API -------------------------------------------------------------------------------
    def predict_proba(self, image: np.ndarray | Sequence[np.ndarray]):
        """Class probabilities ``C x H x W`` (float32) for an image, or a list for a list."""
        if isinstance(image, list | tuple):
            return [self.predict_proba(i) for i in image]
        return self._proba_tensor(image).cpu().numpy()

    def predict(self, image: np.ndarray | Sequence[np.ndarray]):
        """Class indices ``H x W`` (uint8 for up to 256 classes) for an image, or a list."""
        if isinstance(image, list | tuple):
            return [self.predict(i) for i in image]
        return labels_from_probs(self._proba_tensor(image))

    def predict_file(
        self,
        path_in: str | os.PathLike,
        path_out: str | os.PathLike,
        *,
        overlay: str | os.PathLike | None = None,
        probabilities: str | os.PathLike | None = None,
        chunk_size: int = 4096,
    ) -> Path:
        """Predict one file and write the mask (and optional overlay/probabilities).

        GeoTIFFs are streamed window by window (memory bounded by ``chunk_size``), written as
        GeoTIFF with the input's CRS and transform; other images are written as palette PNG.
        Outputs appear atomically: a crash never leaves a half-written file.
        """
        from unet_resnet.inference.files import predict_image_file, predict_raster_file
        from unet_resnet.io import is_geotiff

        if is_geotiff(path_in) and Path(path_out).suffix.lower() in (".tif", ".tiff"):
            return predict_raster_file(
                self,
                path_in,
                path_out,
                probabilities=probabilities,
                chunk_size=chunk_size,
                overlay=overlay,
            )
        return predict_image_file(
            self, path_in, path_out, overlay=overlay, probabilities=probabilities
        )

    def __repr__(self) -> str:
        return (
            f"Segmenter(classes={self.classes.names}, in_channels={self.in_channels}, "
            f"device={self.device}, precision={self.precision}, tile_size={self.tile_size}, "
            f"tta={self.tta})"
        )
