"""``Segmenter``: arrays in, arrays out, for a trained model on any image size.

It carries what the checkpoint says about the data (classes, normalisation, channel count),
runs the model through the fast path for the hardware (:mod:`unet_resnet.accel.fastpath`),
tiles images larger than ``tile_size`` and can average test-time augmentations. Reading and
writing files is :mod:`unet_resnet.inference.files`' job; :meth:`Segmenter.predict_file` is a
shortcut to it.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from unet_resnet.accel.fastpath import DTYPES, FastPathChoice, PackMode, prepare_model
from unet_resnet.accel.memory import keep_freed_memory
from unet_resnet.data.classes import ClassInfo
from unet_resnet.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from unet_resnet.errors import ConfigError, InputShapeError
from unet_resnet.grid import overlap_pixels
from unet_resnet.hardware import PRECISIONS, Precision, device_class, resolve_device
from unet_resnet.inference.backends import BackendChoice
from unet_resnet.inference.runtime import RuntimeModel
from unet_resnet.inference.tiling import Blend, sliding_window_inference
from unet_resnet.io import dtype_range
from unet_resnet.task import check_thresholds, get_task
from unet_resnet.uncertainty import (
    UNCERTAINTIES,
    disagreement,
    entropy,
    entropy_map,
    entropy_scale,
)

__all__ = ["Segmenter", "tiles_that_fit"]
# numpy dtypes torch cannot hold (or compute with), and the lossless type they are read as.
_TORCH_STORAGE = {"b1": np.uint8, "u2": np.int32, "u4": np.int64, "u8": np.float64}


class Segmenter:
    """Predict masks with a trained model.

    Args:
        model: the network (an ``nn.Module`` returning logits). It is never modified; the
            segmenter keeps its own prepared copy.
        classes: class names/colours; default generic names.
        mean, std: per-channel normalisation of images scaled to [0, 1] (integer images by
            their dtype's range); default ImageNet for 3 channels, none otherwise.
        device: ``"auto"`` (CUDA if available), ``"cpu"``, ``"cuda"``, ...
        precision: ``"auto"`` (bf16 where the hardware runs it natively, else fp32),
            ``"fp32"``, ``"bf16"``, ``"fp16"`` (CUDA).
        tile_size: images with a side above this are predicted tile by tile.
        overlap: tile overlap, fraction (< 1) or pixels.
        blend: tile weighting, ``"gaussian"`` (default), ``"linear"`` or ``"constant"``.
        batch_size: tiles (or list images of one size) per forward pass; ``"auto"``
            (default): the device class's (4 on CPUs), on GPUs as many as half the free memory
            holds (measured once per tile size with one tile).
        tta: average predictions over flips (and 90-degree rotations with ``tta_rotations``).
        channels_last, fold_bn, pack_weights: fast-path switches (on by default);
            ``pack_weights`` packs convolution weights for oneDNN once and fuses ReLUs and
            residual adds on CPUs (see :mod:`unet_resnet.accel.onednn`): ``"auto"``
            (default) keeps it only where it is faster on this CPU, ``True`` forces it.
            ``precision="auto"`` and ``pack_weights="auto"`` are decided by timing the
            candidates once per model architecture and CPU (cached; see
            :mod:`unet_resnet.accel.fastpath`); ``fastpath`` holds the choice.
        compile: wrap the model in ``torch.compile`` with Inductor freezing (slow first call;
            on CPUs no faster than the packed default, see docs/performance.md).
        image_dtype: the dtype the model was trained on, for a warning on mismatches.
        progress: a progress bar over the tiles of large images.
        explain: print what the fast path chose and why (also logged at INFO level to
            ``unet_resnet.fastpath``).
        volume: for volumes, the checkpoint's slice axis, 2.5D context and intensity rule
            (:attr:`CheckpointMeta.volume`), repeated by ``predict`` on NIfTI/DICOM input.
        split: how the training splits were read (:attr:`CheckpointMeta.split`: the layout
            and its saved options), read again by ``evaluate`` and ``cross-validate``.
        task: what the output channels mean (:mod:`unet_resnet.task`): ``"multiclass"``
            (softmax, one class per pixel) or ``"multilabel"`` (a sigmoid per class;
            ``predict`` returns ``C x H x W`` 0/1 planes decided by ``thresholds``, default
            0.5 per class).
        fastpath: a fast-path choice made by another process (:attr:`fastpath` of its
            segmenter, or that as a dict), applied as it is instead of timing candidates:
            how every worker of a Ray run predicts exactly as the run decided once.
        temperature: divide the logits by this before the softmax (calibration); multilabel
            models: one for all classes or one per class, their thresholds kept on the
            uncalibrated scale (decisions do not change).
        uncertainty: the per-pixel uncertainty :meth:`image_prediction` returns
            (:data:`~unet_resnet.uncertainty.UNCERTAINTIES`): ``"entropy"`` (default),
            ``"tta"`` (the disagreement of the TTA views; turns ``tta`` on) or
            ``"ensemble"`` (of the members; needs an ensemble).
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
        batch_size: int | str = "auto",
        tta: bool = False,
        tta_rotations: bool = False,
        channels_last: bool = True,
        fold_bn: bool = True,
        pack_weights: PackMode = "auto",
        compile: bool = False,
        image_dtype: str | None = None,
        progress: bool = False,
        explain: bool = False,
        volume: dict | None = None,
        split: dict | None = None,
        task: str = "multiclass",
        thresholds: Sequence[float] | None = None,
        fastpath: FastPathChoice | dict | None = None,
        temperature: float | None = None,
        uncertainty: str | None = None,
    ) -> None:
        self.task = get_task(task)
        self.uncertainty = uncertainty or "entropy"
        if self.uncertainty not in UNCERTAINTIES:
            raise ConfigError(
                f"Unknown uncertainty {uncertainty!r}. Choose one of: {', '.join(UNCERTAINTIES)}."
            )
        if self.uncertainty == "ensemble" and not hasattr(model, "members"):
            raise ConfigError(
                "--uncertainty ensemble measures how much an ensemble's members disagree: give "
                "several --checkpoint (for example the folds of a cross-validation), or use "
                "--uncertainty entropy or tta."
            )
        tta = tta or self.uncertainty == "tta"
        self.temperature = _temperature(temperature, self.task.overlapping)
        if precision not in PRECISIONS:
            raise ConfigError(
                f"Unknown precision {precision!r}. Choose one of: {', '.join(PRECISIONS)}."
            )
        if not isinstance(tile_size, int) or tile_size < 32:
            raise ConfigError(f"Invalid tile size {tile_size!r}: at least 32 pixels.")
        if batch_size != "auto" and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigError(f"Invalid batch size {batch_size!r}: at least 1, or auto.")
        overlap_pixels(tile_size, overlap)  # validates
        self.device = resolve_device(device)
        if precision == "fp16" and self.device.type == "cpu":
            raise ConfigError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU.")
        self.in_channels = int(getattr(model, "in_channels", 3))
        self.num_classes = int(getattr(model, "n_classes", 0)) or None
        self.classes = classes or ClassInfo.generic(self.num_classes or 2)
        if thresholds is not None and not self.task.overlapping:
            raise ConfigError(
                "Thresholds apply to multilabel models; this model takes the most likely "
                "class per pixel."
            )
        self.thresholds = check_thresholds(thresholds, self.classes.num_classes)
        if isinstance(self.temperature, list) and len(self.temperature) != len(self.classes):
            raise ConfigError(
                f"{len(self.temperature)} temperatures for {len(self.classes)} classes: give "
                "one per class, or one for all."
            )
        # Logits are divided by the temperature (a tensor per class for multilabel models,
        # made once); thresholds stay on the scale they were chosen on (the uncalibrated
        # probabilities), so decisions are the same at any temperature.
        self._divisor = (
            torch.tensor(self.temperature).reshape(1, -1, 1, 1)
            if isinstance(self.temperature, list)
            else self.temperature
        )
        self._decision_thresholds = _calibrated_thresholds(
            self.thresholds, self.temperature, self.classes.num_classes, self.task.overlapping
        )
        if mean is None and self.in_channels == 3:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32)[:, None, None]
        self.tile_size, self.overlap, self.blend = tile_size, overlap, blend
        self.batch_size = batch_size
        self.tta, self.tta_rotations = tta, tta_rotations
        self.image_dtype = image_dtype
        self.volume = volume
        self.split = split
        self.progress = progress
        # A model another runtime runs (ONNX Runtime, OpenVINO) applies its own precision.
        runtime = isinstance(model, RuntimeModel)
        self.channels_last = channels_last and not runtime
        self.config = getattr(model, "config", None)

        source = model
        if runtime:
            self.fastpath = FastPathChoice(
                model.precision, False, "fixed", reason=f"{model.backend} backend"
            )
        else:
            model, self.fastpath = prepare_model(
                model,
                device=self.device,
                precision=precision,
                in_channels=self.in_channels,
                channels_last=self.channels_last,
                fold_bn=fold_bn,
                pack_weights=False if compile else pack_weights,
                decided=FastPathChoice(**fastpath) if isinstance(fastpath, dict) else fastpath,
            )
        self.precision = self.fastpath.precision
        self.packed = self.fastpath.packed
        #: the backend running the model and how it was chosen (``from_checkpoint`` sets it)
        self.backend = BackendChoice(model.backend if runtime else "torch", self.precision)
        self.dtype = torch.float32 if runtime else DTYPES[self.precision]
        if explain:
            print(self.fastpath.explain())
        self.model = model
        # The caller's model, kept (not copied) to build an fp32 copy should reduced precision
        # ever overflow (see :meth:`probabilities`); None for another runtime's model.
        self._source = None if runtime else source
        self._fp32_model: nn.Module | None = None
        self._fold_bn = fold_bn
        # Decided once for the segmenter's device: CPU-only tricks, tile batches, and whether
        # TTA views go through as one batch (GPUs) or one after another (CPUs: memory).
        self.device_class = device_class(self.device)
        self._batch_views = not self.device_class.cpu_memory_reuse
        self._tile_batches: dict[tuple[int, bool], int] = {}
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
        path: str | os.PathLike | Sequence[str | os.PathLike],
        *,
        device: str = "auto",
        precision: Precision = "auto",
        backend: str = "auto",
        **kwargs,
    ) -> Segmenter:
        """Load a checkpoint written by ``unet-resnet train`` (or the original's state dict, or a
        shared model: see :meth:`from_pretrained`), an ONNX file or an OpenVINO IR folder from
        ``unet-resnet export``. Several paths make an ensemble that averages their class
        probabilities (:class:`~unet_resnet.inference.ensemble.Ensemble`); they must share
        task, classes and input channels (each member normalises its input as its own
        checkpoint says: folds of a cross-validation each fit their own).

        ``backend`` (:data:`~unet_resnet.inference.backends.BACKENDS`): ``auto`` runs an
        export on the runtime that loads it as it is, and a checkpoint on a CPU on the fastest
        of PyTorch and the installed backends that convert it (timed once per architecture and
        CPU: :func:`~unet_resnet.inference.backends.decide_backend`; :attr:`backend` says
        which and why); ``openvino`` and ``onnxruntime`` also convert a checkpoint in memory."""
        from unet_resnet.inference.backends import (
            BACKENDS,
            check_precision,
            choose_backend,
            decide_backend,
        )

        paths = [path] if isinstance(path, str | os.PathLike) else [str(p) for p in path]
        chosen = choose_backend(paths[0], backend)
        check_precision(chosen, precision)
        if len(paths) > 1 and chosen.name != "torch":
            raise ConfigError(
                f"Ensembles run on the torch backend (checkpoints), not {chosen.name}: "
                "ensemble the checkpoints the exports were made from."
            )
        choice, built = BackendChoice(chosen.name, precision), None
        torch_settings = (
            kwargs.get("compile")
            or kwargs.get("pack_weights", "auto") != "auto"
            or kwargs.get("fastpath") is not None
        )
        if backend == "auto" and chosen.name == "torch" and len(paths) == 1 and not torch_settings:
            # a checkpoint (on a CPU: decide_backend says) with no torch-only settings: the
            # backends are timed, once per architecture and CPU
            choice, built = decide_backend(str(paths[0]), device, precision)
            chosen = BACKENDS[choice.name]
        loaded = [built] if built is not None else []
        loaded += [chosen.build(str(p), device, precision) for p in paths[len(loaded) :]]
        model, meta = loaded[0]
        runtime = isinstance(model, RuntimeModel)
        if len(loaded) > 1:
            from unet_resnet.inference.ensemble import (
                Ensemble,
                check_members,
                members_with_their_normalisation,
            )

            metas = [m for _, m in loaded]
            check_members([str(p) for p in paths], metas)
            members = members_with_their_normalisation([member for member, _ in loaded], metas)
            model = Ensemble(members, task=meta.task)
        segmenter = cls(
            model,
            classes=meta.classes,
            mean=meta.mean,
            std=meta.std,
            device=str(model.device) if runtime else device,
            precision="auto" if runtime else precision,
            image_dtype=meta.image_dtype,
            volume=meta.volume,
            split=meta.split,
            task=meta.task,
            thresholds=kwargs.pop("thresholds", None) or meta.thresholds,
            # an ensemble's members were calibrated alone, not their average: pass its own
            temperature=kwargs.pop("temperature", None)
            or (meta.temperature if len(loaded) == 1 else None),
            **kwargs,
        )
        segmenter.backend = choice
        if kwargs.get("explain") and choice.source != "fixed":
            print(choice.explain())
        return segmenter

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, **kwargs) -> Segmenter:
        """Load a shared model: a folder written by ``save_pretrained`` / ``unet-resnet export
        --format hf``, or a Hugging Face Hub repo id; classes and normalisation come from its
        ``config.json``. Same options as :meth:`from_checkpoint`."""
        return cls.from_checkpoint(source, **kwargs)

    @classmethod
    def from_onnx(cls, path: str | os.PathLike, **kwargs) -> Segmenter:
        """Run an ONNX file written by ``unet-resnet export`` through ONNX Runtime (on the CPU
        unless ``device`` names CUDA: then ONNX Runtime's CUDA provider, onnxruntime-gpu).

        Classes and normalisation come from the export's metadata; tiling and TTA work as with
        the PyTorch backend.
        """
        kwargs.setdefault("device", "cpu")
        return cls.from_checkpoint(path, backend="onnxruntime", **kwargs)

    # Arrays in, arrays out ------------------------------------------------------------------
    def probabilities(
        self, batch: torch.Tensor, *, tta: bool | None = None, disagreement: bool = False
    ) -> torch.Tensor:
        """Probabilities (fp32; softmax, or a sigmoid per class for multilabel) for a
        normalised ``N x C x H x W`` batch.

        The model's own forward pass on already-normalised input (no tiling), with test-time
        augmentation when ``tta`` (default: the segmenter's setting). ``disagreement``: one
        more channel, last, with the disagreement of the TTA views or of the ensemble's
        members (the segmenter's ``uncertainty``), so that tiles blend it like the rest.
        """
        tta = self.tta if tta is None else tta
        members = disagreement and self.uncertainty == "ensemble"
        spread = disagreement and not members
        views: list[tuple] = [((), 0)]
        if tta:
            views += [((-1,), 0), ((-2,), 0)]
            if self.tta_rotations:
                views += [((), 1), ((), 2), ((), 3)]
        probs = self._views(self._forward_model, batch, views, self.dtype, members, spread)
        if bool(torch.isfinite(probs).all()):
            return probs
        # NaN probabilities would silently become class 0: say why, or redo the batch.
        if not bool(torch.isfinite(batch).all()):
            raise InputShapeError(
                "The image holds NaN or infinite values, so the model's output there is "
                "undefined. Replace them first (for example with the nodata value, or 0)."
            )
        if self.precision != "fp32":
            # Reduced precision overflowed somewhere (fp16's range ends at 65504).
            warnings.warn(
                f"{self.precision} inference overflowed on this input; this batch was "
                "predicted again in fp32 (pass precision='fp32' to always do so).",
                stacklevel=2,
            )
            probs = self._views(self._fp32(), batch, views, torch.float32, members, spread)
            if bool(torch.isfinite(probs).all()):
                return probs
        raise InputShapeError(
            "The model's output is not finite (NaN or inf) for this input even in fp32: the "
            "checkpoint's weights hold non-finite values. Use a checkpoint from a run that did "
            "not diverge."
        )

    def _views(
        self,
        model,
        batch: torch.Tensor,
        views: list[tuple],
        dtype,
        members: bool = False,
        spread: bool = False,
    ) -> torch.Tensor:
        """Average of ``model``'s probabilities over the (flip, quarter-turn) ``views``: on GPUs
        views of one shape go through as one batch, elsewhere one after another (memory).
        ``members``: the ensemble's members' disagreement as one more channel (averaged over
        the views); ``spread``: the views' disagreement as one more channel."""
        fmt = torch.channels_last if self.channels_last else torch.contiguous_format
        batch = batch.to(self.device, dtype, memory_format=fmt, non_blocking=True)

        def view(x: torch.Tensor, flip: tuple, k: int, inverse: bool = False) -> torch.Tensor:
            if inverse:  # undo on the output: rotate back, then flip back
                x = torch.rot90(x, -k, (-2, -1)) if k else x
                return x.flip(flip) if flip else x
            x = x.flip(flip) if flip else x
            return torch.rot90(x, k, (-2, -1)) if k else x

        if not self._batch_views:
            groups = [[v] for v in views]
        elif batch.shape[-1] != batch.shape[-2]:  # quarter turns change the shape
            groups = [g for odd in (0, 1) if (g := [v for v in views if v[1] % 2 == odd])]
        else:
            groups = [views]
        total = extra = None
        n = batch.shape[0]
        overlapping = self.task.overlapping
        with torch.inference_mode():
            for group in groups:
                x = (
                    view(batch, *group[0])
                    if len(group) == 1
                    else torch.cat([view(batch, f, k) for f, k in group])
                ).contiguous(memory_format=fmt)  # a no-op where it already is
                if members:  # each member's probabilities: their mean, and how they differ
                    each = self.task.activate(model(x, members=True).flatten(0, 1))
                    each = each.unflatten(0, (-1, x.shape[0]))
                    member_spread = disagreement(each, overlapping=overlapping)[:, None]
                    logits = self.task.from_probabilities(each.mean(0))
                else:
                    logits = model(x)
                if self.temperature != 1.0:  # calibrated: the decision is unchanged
                    divisor = self._divisor
                    if isinstance(divisor, torch.Tensor):
                        divisor = divisor.to(logits.device)
                    logits = logits.float() / divisor
                p = self.task.activate(logits).float()
                if members:
                    p = torch.cat([p, member_spread], 1)
                for i, (flip, k) in enumerate(group):
                    part = view(p[i * n : (i + 1) * n], flip, k, inverse=True)
                    total = part if total is None else total + part
                    if spread:  # the views' own entropies, summed (see below)
                        h = entropy(part, overlapping)
                        extra = h if extra is None else extra + h
        mean = total / len(views)
        if spread:  # mutual information: H(mean of views) - mean of H(view), normalised
            mi = entropy(mean, overlapping) - extra / len(views)
            mi = (mi / entropy_scale(mean.shape[1], overlapping)).clamp_(0, 1)
            mean = torch.cat([mean, mi[:, None]], 1)
        return mean

    def _fp32(self) -> nn.Module:
        """An fp32 copy of the model (built on first use), for batches that overflowed."""
        if self._fp32_model is None:
            if self._source is None:
                raise InputShapeError(
                    f"The {self.model.backend} model's output is not finite for this input."
                )
            self._fp32_model, _ = prepare_model(
                self._source,
                device=self.device,
                precision="fp32",
                in_channels=self.in_channels,
                channels_last=self.channels_last,
                fold_bn=self._fold_bn,
                pack_weights=False,
            )
        return self._fp32_model

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
                stacklevel=4,
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
        # One copy for both per-channel vectors (each host-to-device copy is a synchronisation)
        params = torch.stack([scale, shift]).to(self.device, non_blocking=True)
        return x.to(self.device, non_blocking=True), params[0], params[1]

    def image_probabilities(
        self, image: np.ndarray, *, tta: bool | None = None, tile_size: int | None = None
    ) -> torch.Tensor:
        """Probabilities ``K x H x W`` (float32 tensor, on the segmenter's device) for one raw
        ``H x W x C`` image: normalised, tiled when larger than the tile size, blended.

        ``tta`` and ``tile_size`` override the segmenter's settings for this call only.
        """
        return self._image(image, tta=tta, tile_size=tile_size)

    def image_prediction(
        self, image: np.ndarray, *, tta: bool | None = None, tile_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Probabilities ``K x H x W`` as :meth:`image_probabilities` gives them, and the
        segmenter's ``uncertainty`` map ``H x W`` in [0, 1] (:mod:`unet_resnet.uncertainty`):
        predictive entropy, or the disagreement of the TTA views or of the ensemble's
        members, blended across tiles like the probabilities."""
        if self.uncertainty == "entropy":
            probs = self.image_probabilities(image, tta=tta, tile_size=tile_size)
            return probs, entropy_map(probs, overlapping=self.task.overlapping)
        if self.uncertainty == "tta" and tta is False:
            raise ConfigError("--uncertainty tta needs the TTA views: leave TTA on.")
        both = self._image(image, tta=tta, tile_size=tile_size, disagreement=True)
        return both[:-1], both[-1]

    def _image(
        self,
        image: np.ndarray,
        *,
        tta: bool | None = None,
        tile_size: int | None = None,
        disagreement: bool = False,
    ) -> torch.Tensor:
        x, scale, shift = self._prepare(image)
        tile = tile_size or self.tile_size

        def forward(batch: torch.Tensor) -> torch.Tensor:
            batch = torch.addcmul(shift, batch.float(), scale)
            return self.probabilities(batch, tta=tta, disagreement=disagreement)

        # Many tiles: each batch's activations reuse the last one's memory instead of fresh
        # pages (a 2048x2048 image in 512 tiles 1.4 -> 1.0 s); one tile: nothing to reuse.
        tiled = max(x.shape[-2:]) > tile
        with keep_freed_memory(self.device_class.cpu_memory_reuse and tiled):
            return sliding_window_inference(
                x,
                forward,
                tile_size=tile,
                overlap=self.overlap,
                batch_size=self.tile_batch(tile, tta) if tiled else 1,
                blend=self.blend,
                progress=self.progress,
            )

    def tile_batch(self, tile: int, tta: bool | None = None) -> int:
        """Tiles per forward pass for ``tile``-pixel tiles: ``batch_size``, or for ``auto``
        the device class's number, or on a GPU as many as half its free memory holds (one
        tile's peak measured once per tile size and TTA setting)."""
        if self.batch_size != "auto":
            return int(self.batch_size)
        fixed = self.device_class.tile_batch
        if fixed is not None or self.device.type != "cuda":
            return fixed or 4
        tta = self.tta if tta is None else tta
        key = (tile, bool(tta))
        if key not in self._tile_batches:
            torch.cuda.synchronize(self.device)
            free, _ = torch.cuda.mem_get_info(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            before = torch.cuda.memory_allocated(self.device)
            x = torch.zeros(1, self.in_channels, tile, tile, device=self.device)
            self.probabilities(x, tta=tta)
            per_tile = torch.cuda.max_memory_allocated(self.device) - before
            self._tile_batches[key] = tiles_that_fit(free, per_tile)
        return self._tile_batches[key]

    def predict_proba(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        *,
        tta: bool | None = None,
        tile_size: int | None = None,
    ):
        """Class probabilities ``C x H x W`` (float32) for an image, or a list for a list; for
        multilabel models each class's own probability (they need not sum to 1)."""
        if isinstance(image, list | tuple):
            return [self.predict_proba(i, tta=tta, tile_size=tile_size) for i in image]
        return self.image_probabilities(image, tta=tta, tile_size=tile_size).cpu().numpy()

    def predict(
        self,
        image: np.ndarray | Sequence[np.ndarray],
        *,
        tta: bool | None = None,
        tile_size: int | None = None,
    ):
        """Class indices ``H x W`` (uint8 for up to 256 classes) for an image, or a list; for
        multilabel models ``C x H x W`` uint8 planes (1 where the class's probability reaches
        its threshold).

        ``tta`` and ``tile_size`` override the segmenter's settings for this call only (the
        HTTP service uses them per request).
        """
        if isinstance(image, list | tuple):
            return [self.predict(i, tta=tta, tile_size=tile_size) for i in image]
        return self.decide(self.image_probabilities(image, tta=tta, tile_size=tile_size))

    def decide(self, probs: torch.Tensor) -> np.ndarray:
        """Probabilities ``C x H x W`` -> what :meth:`predict` returns."""
        return self.task.decide(probs, self._decision_thresholds).cpu().numpy()

    def predict_file(
        self,
        path_in: str | os.PathLike,
        path_out: str | os.PathLike,
        *,
        overlay: str | os.PathLike | None = None,
        probabilities: str | os.PathLike | None = None,
        uncertainty: str | os.PathLike | None = None,
        chunk_size: int = 4096,
    ) -> Path:
        """Predict one file and write the mask (see :func:`inference.files.predict_file`);
        ``uncertainty``: also the segmenter's uncertainty map there."""
        from unet_resnet.inference.files import predict_file

        # a scene's chunks reuse each other's memory (a CPU trick: glibc's heap)
        with keep_freed_memory(self.device_class.cpu_memory_reuse):
            return predict_file(
                self,
                path_in,
                path_out,
                overlay=overlay,
                probabilities=probabilities,
                uncertainty=uncertainty,
                chunk_size=chunk_size,
            )

    def __repr__(self) -> str:
        return (
            f"Segmenter(classes={self.classes.names}, task={self.task.name}, "
            f"in_channels={self.in_channels}, "
            f"device={self.device}, precision={self.precision}, tile_size={self.tile_size}, "
            f"tta={self.tta})"
        )


def _temperature(value, overlapping: bool) -> float | list[float]:
    """A checked temperature: one positive number, or for multilabel models one per class."""
    if value is None:
        return 1.0
    many = isinstance(value, list | tuple)
    values = [float(v) for v in value] if many else [float(value)]
    if not values or not all(math.isfinite(v) and v > 0 for v in values):
        raise ConfigError(f"Invalid temperature {value!r}: a positive number.")
    if many and not overlapping:
        raise ConfigError(
            "One temperature calibrates a softmax model; per-class temperatures are for "
            "multilabel models."
        )
    return values if many else values[0]


def _calibrated_thresholds(thresholds, temperature, num_classes: int, overlapping: bool):
    """Multilabel thresholds on the calibrated scale: ``sigmoid(logit(t) / T)``, so that a
    calibrated probability passes exactly where the uncalibrated one passed ``t``."""
    if not overlapping or temperature == 1.0:
        return thresholds
    limits = thresholds or [0.5] * num_classes
    temps = temperature if isinstance(temperature, list) else [temperature] * num_classes
    return [
        1 / (1 + math.exp(-math.log(t / (1 - t)) / temp))
        for t, temp in zip(limits, temps, strict=True)
    ]


def tiles_that_fit(
    free_bytes: int, per_tile_bytes: int, *, share: float = 0.5, most: int = 32
) -> int:
    """How many tiles of ``per_tile_bytes`` peak memory each fit in ``share`` of
    ``free_bytes``: at least 1, at most ``most`` (beyond that a GPU is already full)."""
    if per_tile_bytes <= 0:
        return most
    return max(1, min(most, int(share * free_bytes // per_tile_bytes)))
