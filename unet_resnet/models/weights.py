"""Pretrained encoder weights: resolved by name or path, cached, loaded without pickled code.

Nothing here runs at import time. ``"imagenet"`` goes through torchvision's weights API and
torch's hub cache (``$TORCH_HOME/hub/checkpoints``, default ``~/.cache/torch``), so a file that
torchvision or any other tool already downloaded is reused. When the file is not cached and
cannot be downloaded, :class:`~unet_resnet.errors.WeightsUnavailableError` says which file was
expected, where to put it, and how to run offline instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch
from torchvision.models import get_model_weights

from unet_resnet.errors import WeightsFileError, WeightsUnavailableError

__all__ = [
    "IMAGENET_ALIAS",
    "OFFLINE_ENV",
    "cached_weights_path",
    "hf_cache_dir",
    "hub_offline_reason",
    "is_weights_path",
    "load_encoder_state_dict",
    "load_into_resnet",
    "load_state_dict_file",
    "load_url_state_dict",
    "resolve_torchvision_weights",
]

#: ``encoder_weights="imagenet"`` means the weights the original code got from
#: ``resnet50(pretrained=...)`` flag: torchvision's IMAGENET1K_V1 for every ResNet.
IMAGENET_ALIAS = "imagenet"
_IMAGENET_DEFAULT = "IMAGENET1K_V1"

#: Set to 1 to never try a download (a cached file is still used).
OFFLINE_ENV = "UNET_RESNET_OFFLINE"

_WEIGHT_SUFFIXES = (".pth", ".pt", ".bin", ".ckpt", ".safetensors")


def is_weights_path(value: str | os.PathLike) -> bool:
    """Whether an ``encoder_weights`` value names a file rather than a weights tag."""
    if isinstance(value, os.PathLike):
        return True
    return (
        os.sep in value
        or (os.altsep is not None and os.altsep in value)
        or value.lower().endswith(_WEIGHT_SUFFIXES)
        or Path(value).exists()
    )


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache folder, read from the environment at call time
    (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join("~", ".cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hub_offline_reason() -> str | None:
    """Why the Hub must not be contacted now (``UNET_RESNET_OFFLINE`` or ``HF_HUB_OFFLINE``
    set, read at call time), or ``None``."""
    if os.environ.get(OFFLINE_ENV) == "1":
        return f"{OFFLINE_ENV} is set"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    return None


def resolve_torchvision_weights(encoder: str, name: str):
    """Map ``"imagenet"`` / ``"IMAGENET1K_V2"`` / ``"DEFAULT"`` to a torchvision Weights enum."""
    enum = get_model_weights(encoder)
    key = _IMAGENET_DEFAULT if name.lower() == IMAGENET_ALIAS else name
    if key == "DEFAULT":
        return enum.DEFAULT
    try:
        return enum[key]
    except KeyError:
        choices = ", ".join(["imagenet", "DEFAULT", *(w.name for w in enum)])
        raise ValueError(
            f"Unknown encoder_weights {name!r} for {encoder}. Choose one of: {choices}; "
            "or pass a path to a local .pth/.safetensors file, or None for random init."
        ) from None


def cached_weights_path(url: str) -> Path:
    """Where torch's hub cache keeps (or would keep) the file downloaded from ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file, never running pickled code.

    A dict that nests the weights under ``"state_dict"`` or ``"model"`` (as Lightning and many
    training scripts save them) is unwrapped.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(
            f"Weights file not found: {path}. Check the path, or pass encoder_weights=None "
            "to start from random weights."
        )
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj = load_file(str(path), device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any parse failure is the file's fault, say which file
        raise WeightsFileError(
            f"Could not read weights from {path}: {type(exc).__name__}: {exc}. Expected a "
            "PyTorch state dict (.pth, saved with torch.save(model.state_dict(), ...)) or a "
            ".safetensors file; files holding pickled objects other than tensors are refused."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsFileError(
            f"{path} does not hold a state dict (a mapping of names to tensors)."
        )
    return dict(obj)


def _download(url: str, destination: Path) -> None:
    # torch writes to a temporary file and renames it, so an interrupted download never leaves
    # a truncated file in the cache; the hash in torchvision's file names is checked.
    match = torch.hub.HASH_REGEX.search(destination.name)
    destination.parent.mkdir(parents=True, exist_ok=True)
    torch.hub.download_url_to_file(url, str(destination), match.group(1) if match else None)


def load_url_state_dict(url: str, *, what: str) -> dict[str, torch.Tensor]:
    """The state dict at ``url``, from torch's hub cache or downloaded into it.

    Offline (``UNET_RESNET_OFFLINE=1``) or on a failed download, raises
    :class:`WeightsUnavailableError` naming ``what``, the file expected and how to fix it.
    """
    path = cached_weights_path(url)
    if not path.is_file():
        reason = f"{OFFLINE_ENV} is set" if os.environ.get(OFFLINE_ENV) == "1" else None
        if reason is None:
            try:
                _download(url, path)
            except Exception as exc:  # URLError, timeouts, hash mismatch, read-only cache ...
                reason = f"{type(exc).__name__}: {exc}"
        if reason is not None:
            raise WeightsUnavailableError(
                f"Pretrained weights for {what} are not cached and could not "
                f"be downloaded ({reason}).\n"
                f"  Expected file: {path}\n"
                f"  Fix: download {url} on a machine with internet and copy it to that "
                "path (set TORCH_HOME to use another cache folder), or pass "
                "encoder_weights='/path/to/file.pth' to use a local file, or "
                "encoder_weights=None to start from random weights (works offline)."
            )
    return load_state_dict_file(path)


def _load_torchvision_weights(encoder: str, name: str) -> dict[str, torch.Tensor]:
    weights = resolve_torchvision_weights(encoder, name)
    return load_url_state_dict(weights.url, what=f"{encoder} ({weights})")


def load_encoder_state_dict(
    encoder: str, weights: str | os.PathLike | None
) -> dict[str, torch.Tensor] | None:
    """Return the ResNet state dict that ``weights`` names, or ``None`` for random init.

    Args:
        encoder: torchvision model name, e.g. ``"resnet50"``.
        weights: ``None``/``"none"``; ``"imagenet"`` (torchvision IMAGENET1K_V1, the weights of
            the original's pretrained flag); a torchvision enum name such as
            ``"IMAGENET1K_V2"`` or ``"DEFAULT"``; or a path to a local file.
    """
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "")):
        return None
    if is_weights_path(weights):
        return load_state_dict_file(weights)
    return _load_torchvision_weights(encoder, str(weights))


def warn_random_init(encoder: str, error: Exception) -> None:
    """The one notice printed when a demo falls back from ImageNet weights to random init."""
    first_line = str(error).splitlines()[0]
    warnings.warn(
        f"ImageNet weights for {encoder} are not available ({first_line}); continuing with "
        "randomly initialised encoder weights. Results will be worse than with pretrained "
        "weights; see the README section 'Pretrained weights' to make them available offline.",
        stacklevel=2,
    )


def load_into_resnet(
    resnet: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], *, encoder: str, source
) -> None:
    """Load ``state_dict`` into a torchvision ResNet, ignoring its classifier (``fc.*``).

    Raises :class:`WeightsFileError` naming ``source`` when keys are missing or shapes differ,
    which is what happens when a file for another architecture is passed.
    """
    expected = {k: v.shape for k, v in resnet.state_dict().items() if not k.startswith("fc.")}
    missing = [k for k in expected if k not in state_dict]
    wrong = [
        f"{k}: file {tuple(state_dict[k].shape)}, model {tuple(shape)}"
        for k, shape in expected.items()
        if k in state_dict and state_dict[k].shape != shape
    ]
    if missing or wrong:
        details = "; ".join(
            ([f"missing keys {missing[:4]}{' ...' if len(missing) > 4 else ''}"] if missing else [])
            + ([f"shape mismatch {wrong[:3]}"] if wrong else [])
        )
        raise WeightsFileError(
            f"Weights from {source} do not fit torchvision's {encoder} "
            f"({details}). Pass a state dict of the same encoder "
            "(e.g. torchvision's resnet50 file for encoder='resnet50'), or encoder_weights=None."
        )
    resnet.load_state_dict({k: state_dict[k] for k in expected}, strict=False)


def build_with_fallback(build, *, encoder: str, weights):
    """Call ``build(weights)``; if ImageNet weights are unavailable, warn once and build with
    random init instead. For demos and smoke tests only: training code should fail loudly."""
    try:
        return build(weights)
    except WeightsUnavailableError as exc:
        warn_random_init(encoder, exc)
        return build(None)
