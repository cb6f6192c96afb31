"""Model surgery for fast inference, chosen by measurement on the machine it runs on.

The inference copy of a model is Conv+BN folded, cast to reduced-precision weights, laid out
channels_last and, on CPUs, optionally oneDNN-packed (:mod:`unet_resnet.accel.onednn`).
Which combination is fastest depends on the CPU: packed bf16 kernels win on Intel CPUs with
AMX and lose to plain convolutions on CPUs without it (AVX-512 BF16 only); bf16 loses to fp32
where oneDNN has no native bf16 units. So where a choice is left open (``precision="auto"``,
``pack_weights="auto"``) every candidate is built and timed once on a small input, the fastest
kept, and the choice cached per model architecture and CPU (:func:`~unet_resnet.hardware.
cache_dir`), so later builds on the same machine are instant. :class:`FastPathChoice` says
what was chosen and why.

Everything here works on a copy; the caller's model is never modified.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
from torch import nn

from unet_resnet.hardware import (
    auto_precision,
    cache_dir,
    cpu_has_fast_bf16,
    cpu_signature,
    device_class,
)
from unet_resnet.io import atomic_path

__all__ = [
    "DTYPES",
    "FastPathChoice",
    "PackMode",
    "architecture_signature",
    "cache_read",
    "cache_write",
    "fold_batchnorm",
    "fold_checked",
    "prepare_model",
    "seconds_per_call",
]

logger = logging.getLogger("unet_resnet.fastpath")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PackMode = bool | Literal["auto"]
#: Side of the random input the candidates are timed on (batch 1): big enough for the
#: convolutions to dominate, small enough to keep a first build within seconds.
CALIBRATION_SIZE = 256
CACHE_FILE = "fastpath.json"


@dataclass
class FastPathChoice:
    """What :func:`prepare_model` chose: ``precision`` and ``packed``, the seconds per forward
    of each candidate (``timings``; empty when there was nothing to choose), whether they were
    ``"measured"`` now, read from the ``"cache"``, or ``"fixed"`` by the caller, and why."""

    precision: str
    packed: bool
    source: Literal["measured", "cache", "fixed"]
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    #: packed layers measured faster unpacked on this CPU, which therefore run plain
    plain_layers: list[str] = field(default_factory=list)

    def explain(self) -> str:
        lines = [
            f"fast path: {self.precision} weights, "
            f"{'oneDNN-packed' if self.packed else 'plain'} convolutions ({self.source})",
        ]
        if self.reason:
            lines.append(f"  why: {self.reason}")
        if self.packed and self.plain_layers:
            shown = ", ".join(self.plain_layers[:6])
            more = len(self.plain_layers) - 6
            lines.append(
                f"  {len(self.plain_layers)} layers measured faster unpacked, left plain: "
                f"{shown}{f' and {more} more' if more > 0 else ''}"
            )
        for name, seconds in sorted(self.timings.items(), key=lambda kv: kv[1]):
            lines.append(f"  {name:<12} {1000 * seconds:8.1f} ms per {CALIBRATION_SIZE}px image")
        return "\n".join(lines)


def fold_batchnorm(model: nn.Module, example: torch.Tensor | None = None) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it.

    Covers the guide's ConvBlocks, the ResNet stem, bottleneck/basic blocks and their
    downsample branches, and timm's conv + BatchNormAct pairs; the folded BatchNorm becomes an
    Identity (or its activation). Saves a full pass over every activation at inference;
    outputs are unchanged up to float rounding. Pairs are found by position in a Sequential or
    by name (``convN``/``bnN``, ``conv``/``bn``), and, given an ``example`` input, by following
    a forward pass (a BatchNorm whose only input is a convolution's output, whatever their
    names). Folding assumes nothing else reads the convolution's output: :func:`prepare_model`
    checks the folded model against the original and keeps the original if they differ.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent: nn.Module, conv_name: str, bn_parent: nn.Module, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name, None), getattr(bn_parent, bn_name, None)
        if type(conv) is not nn.Conv2d or not isinstance(bn, nn.BatchNorm2d):
            return
        if not bn.track_running_stats or bn.running_mean is None:
            return
        if type(bn) is nn.BatchNorm2d:
            rest: nn.Module = nn.Identity()
        elif set(bn._modules) <= {"drop", "act"}:
            # timm's BatchNormAct2d: BatchNorm, then dropout (a no-op in eval) and activation.
            rest = bn._modules.get("act") or nn.Identity()
        else:
            return  # a BatchNorm subclass that does more than we know how to keep
        setattr(parent, conv_name, fuse_conv_bn_eval(conv.eval(), bn.eval()))
        setattr(bn_parent, bn_name, rest)

    def split(name: str) -> tuple[nn.Module, str]:
        parent, _, child = name.rpartition(".")
        return model.get_submodule(parent), child

    if example is not None:
        from unet_resnet.accel.trace import conv_readers

        for conv, reader in conv_readers(model, example):
            fold(*split(conv), *split(reader))
    for module in list(model.modules()):
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in itertools.pairwise(names):
                fold(module, a, module, b)
        for conv_name in [n for n, m in module.named_children() if isinstance(m, nn.Conv2d)]:
            for bn_name in (conv_name.replace("conv", "bn"), "bn"):
                if bn_name != conv_name and hasattr(module, bn_name):
                    fold(module, conv_name, module, bn_name)
                    break
    return model


def fold_checked(
    model: nn.Module, example: torch.Tensor, *, atol: float = 1e-3
) -> tuple[nn.Module, bool]:
    """``(folded model, True)``, or ``(model, False)`` with a warning when folding changed the
    softmax outputs on ``example`` by more than ``atol`` (a BatchNorm that did not directly
    follow its convolution)."""
    folded = fold_batchnorm(copy.deepcopy(model), example.float())
    with torch.inference_mode():
        expected = model.float()(example.float()).float().softmax(1)
        error = (folded(example.float()).float().softmax(1) - expected).abs().max().item()
    if error <= atol:
        return folded, True
    warnings.warn(
        f"Folding BatchNorm into convolutions changed this model's outputs by {error:.3g}; "
        "predicting without folding (correct, slower).",
        stacklevel=3,
    )
    return model, False


def _inference_copy(model: nn.Module, device: torch.device) -> nn.Module:
    """An eval-mode copy of ``model`` on ``device``: the one place the inference copy goes to
    its device, so every pass after it (the folding check, packing checks, timings) runs
    there, on inputs made there."""
    base = copy.deepcopy(model).eval().to(device)
    for module in base.modules():
        # A training-only layer class (accel/gemm_conv.py) names the plain class it computes
        # like; folding and packing recognise that one.
        plain = getattr(type(module), "inference_class", None)
        if plain is not None:
            module.__class__ = plain
    return base


def _fits_fp16(model: nn.Module) -> bool:
    limit = torch.finfo(torch.float16).max
    return all(bool(t.abs().max() < limit) for t in model.state_dict().values() if t.numel())


def _build(
    base: nn.Module,
    *,
    device: torch.device,
    precision: str,
    channels_last: bool,
    pack: bool,
    example: torch.Tensor,
    timing_input: torch.Tensor | None = None,
    plain: Sequence[str] | None = None,
) -> tuple[nn.Module, bool]:
    model = copy.deepcopy(base).to(device, DTYPES[precision])
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if not pack:
        return model, False
    from unet_resnet.accel.onednn import pack_checked

    dtype = DTYPES[precision]
    return pack_checked(
        model,
        example.to(dtype),
        timing_input=None if timing_input is None else timing_input.to(dtype),
        plain=plain,
    )


def seconds_per_call(model: nn.Module, x: torch.Tensor, reps: int = 3) -> float:
    """Median seconds of ``reps`` calls of ``model(x)`` after one warm-up call."""
    with torch.inference_mode():
        model(x)  # warm-up: oneDNN primitive creation, weight reorders
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def architecture_signature(model: nn.Module) -> list:
    """The model's layer types and parameter shapes (not its values): what its speed depends on."""
    layers = [(name, type(m).__name__) for name, m in model.named_modules()]
    shapes = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    return [layers, shapes]


def _architecture_key(model: nn.Module, candidates: Sequence[tuple[str, bool]], device) -> str:
    """Cache key: the model's architecture, the candidates, the device, the CPU signature and
    what packing covers."""
    from unet_resnet.accel import onednn

    blob = json.dumps(
        [
            *architecture_signature(model),
            list(candidates),
            str(device),
            cpu_signature(),
            CALIBRATION_SIZE,
            onednn.VERSION,
        ],
        default=str,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def cache_read(key: str, file: str = CACHE_FILE) -> dict | None:
    """The entry cached under ``key`` in ``file`` of :func:`~unet_resnet.hardware.cache_dir`,
    or None (no cache yet, or a damaged one: the caller measures again)."""
    try:
        return json.loads((cache_dir() / file).read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def cache_write(key: str, entry: dict, file: str = CACHE_FILE) -> None:
    """Cache ``entry`` under ``key`` in ``file`` (atomically; a read-only home only warns)."""
    path = cache_dir() / file
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
        if not isinstance(data, dict):
            data = {}
    except (OSError, ValueError):
        data = {}
    data[key] = entry
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(data, indent=1) + "\n")
    except OSError as exc:  # a read-only home is no reason to fail a prediction
        logger.warning("could not cache a measured choice in %s: %s", path, exc)


def _candidates(
    device: torch.device, precision: str, can_pack: bool, pack_weights: PackMode
) -> tuple[list[tuple[str, bool]], str]:
    if precision != "auto":
        precisions = [precision]
    elif device.type != "cpu":
        precisions = [auto_precision(device)]
    elif cpu_has_fast_bf16():
        precisions = ["bf16", "fp32"]
    else:
        precisions = ["fp32"]
    packs = [True, False] if pack_weights == "auto" else [bool(pack_weights)]
    if not can_pack:
        packs = [False]
    why = []
    if len(precisions) == 1:
        why.append(f"precision {precisions[0]} was asked for or is the only sensible one")
    if len(packs) == 1:
        why.append(
            "packing "
            + (
                "forced"
                if packs[0]
                else "off or not possible (needs CPU, BN folding "
                "and channels_last, and this PyTorch's oneDNN operators)"
            )
        )
    return [(p, k) for p in precisions for k in packs], "; ".join(why)


def prepare_model(
    model: nn.Module,
    *,
    device: torch.device,
    precision: str = "auto",
    in_channels: int,
    channels_last: bool = True,
    fold_bn: bool = True,
    pack_weights: PackMode = "auto",
    decided: FastPathChoice | None = None,
) -> tuple[nn.Module, FastPathChoice]:
    """The inference copy of ``model``: folded, cast, laid out and possibly packed.

    Reduced precision is applied to the weights, not through autocast: autocast re-casts
    every weight on every call, which costs a quarter of this model's time on a CPU.
    ``precision="auto"`` and ``pack_weights="auto"`` are decided by timing the candidates
    (see the module docstring); fixed values are used as given. A ``decided`` choice (from another
    process's :func:`prepare_model`) is applied as it is, nothing timed. Packing is always checked
    against the unpacked model on a random input (:func:`onednn.pack_checked`) and dropped with
    a warning if they differ.
    """
    from unet_resnet.accel import onednn

    base = _inference_copy(model, device)
    generator = torch.Generator().manual_seed(0)
    size = CALIBRATION_SIZE
    example = torch.randn(1, in_channels, size, size, generator=generator).to(device)
    if fold_bn:
        base, fold_bn = fold_checked(base, example[..., :64, :64])
        if fold_bn and precision == "fp16" and not _fits_fp16(base):
            # A BatchNorm with a tiny running variance folds into weights beyond fp16's range
            # (65504): they would become inf and every pixel NaN. Unfolded, each stays in range.
            logger.warning("folded weights exceed fp16's range: predicting without folding")
            base, fold_bn = _inference_copy(model, device), False
    can_pack = device_class(device).cpu_packing and fold_bn and channels_last and onednn.available()
    candidates, why_fixed = _candidates(device, precision, can_pack, pack_weights)
    if channels_last:
        example = example.contiguous(memory_format=torch.channels_last)

    def build(precision: str, pack: bool, **per_layer) -> tuple[nn.Module, bool]:
        return _build(
            base,
            device=device,
            precision=precision,
            channels_last=channels_last,
            pack=pack,
            example=example[..., :64, :64],
            **per_layer,
        )

    if decided is not None:
        # Decided once for a whole run (by the driver of a Ray run, for every worker): the
        # same precision, packing and plain layers, so every process predicts the same.
        chosen, packed = build(decided.precision, decided.packed and can_pack,
                               plain=list(decided.plain_layers))  # fmt: skip
        reason = f"decided once for the run ({decided.source}: {decided.reason})"
        fixed = FastPathChoice(decided.precision, packed, "fixed", dict(decided.timings), reason)
        fixed.plain_layers = list(decided.plain_layers) if packed else []
        return chosen, fixed
    if len(candidates) == 1:
        chosen, packed = build(*candidates[0])
        choice = FastPathChoice(candidates[0][0], packed, "fixed", reason=why_fixed)
        return chosen, choice

    key = _architecture_key(base, candidates, device)
    cached = cache_read(key)
    if cached is not None and (cached.get("precision"), cached.get("packed")) in candidates:
        plain = list(cached.get("plain_layers", []))
        chosen, packed = build(cached["precision"], cached["packed"], plain=plain)
        if packed == cached["packed"]:
            choice = FastPathChoice(
                cached["precision"],
                packed,
                "cache",
                dict(cached.get("timings", {})),
                "measured earlier on this CPU for this architecture (cache "
                f"{cache_dir() / CACHE_FILE})",
                plain if packed else [],
            )
            return chosen, choice

    timings: dict[str, float] = {}
    best: tuple[float, nn.Module, str, bool] | None = None
    for prec, pack in candidates:
        # each packed layer is timed against its plain kernel on the calibration input
        built, packed = build(prec, pack, timing_input=example)
        if pack and not packed:
            continue  # packing was refused (checked against plain): not a candidate
        seconds = seconds_per_call(built, example.to(DTYPES[prec]))
        timings[f"{prec}{'+packed' if packed else ''}"] = seconds
        if best is None or seconds < best[0]:
            best = (seconds, built, prec, packed)
    assert best is not None
    _, chosen, prec, packed = best
    reason = (
        f"fastest of {len(timings)} candidates timed on a {size}x{size} input on this CPU "
        f"({cpu_signature()['model']})"
    )
    from unet_resnet.accel.onednn import plain_layers

    choice = FastPathChoice(prec, packed, "measured", timings, reason, plain_layers(chosen))
    cache_write(key, asdict(choice))
    logger.info("%s", choice.explain())
    return chosen, choice
