"""timm backbones as U-Net encoders: ``encoder="tu-<timm model name>"``.

The prefix is segmentation_models.pytorch's convention. The backbone is timm's
``features_only`` model, which yields its feature maps shallow to deep and says their channels
and strides in ``feature_info``; that is the encoder contract the decoder is sized from
(:class:`~unet_resnet.models.encoders.EncoderParts`).

Weights: ``"imagenet"`` is timm's default pretrained tag for the model (``tu-NAME.TAG`` picks
another), fetched from the Hugging Face Hub into its normal cache (``$HF_HUB_CACHE``, else
``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``); with ``HF_HUB_OFFLINE=1`` or
``UNET_RESNET_OFFLINE=1`` only the cache is read. A local ``.safetensors``/``.pth`` file of the
timm model's state dict works too. Files are read by :func:`load_state_dict_file` (never
pickled code) and handed to timm as a state dict, so timm's own key filters and its first
convolution adaptation for ``in_channels != 3`` apply.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from unet_resnet.errors import ConfigError, WeightsFileError, WeightsUnavailableError
from unet_resnet.models.weights import (
    IMAGENET_ALIAS,
    hf_cache_dir,
    hub_offline_reason,
    is_weights_path,
    load_state_dict_file,
    load_url_state_dict,
)

__all__ = [
    "TIMM_PREFIX",
    "build_timm_encoder",
    "list_timm_encoders",
    "pretrained_mean_std",
    "pretrained_source",
]

TIMM_PREFIX = "tu-"

#: Backbones the test suite trains, round-trips and exports (smallest variant of each family).
#: Any timm model with ``features_only`` support and stride-32 features works as well.
_TESTED = (
    "resnet18",
    "convnext_atto",
    "efficientnet_b0",
    "mobilenetv3_small_050",
    "regnetx_002",
)


def list_timm_encoders() -> list[str]:
    """The ``tu-`` names the test suite covers by family (see the README's encoder table)."""
    return [TIMM_PREFIX + name for name in _TESTED]


def _timm():
    try:
        import timm
    except ImportError:
        raise ConfigError(
            "Encoders named 'tu-...' are timm backbones and need timm: "
            "pip install 'unet-resnet[timm]'."
        ) from None
    return timm


def pretrained_source(model_name: str) -> tuple[str | None, str | None, list[str]]:
    """``(hub repo id, url, candidate file names)`` of timm's default weights for a model."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    if cfg is None:
        return None, None, []
    names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else []
    return cfg.hf_hub_id, cfg.url, names or ["model.safetensors", "pytorch_model.bin"]


def pretrained_mean_std(name: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` of the images timm's weights for ``tu-NAME`` were trained on."""
    from timm.models import get_pretrained_cfg

    model_name = name.removeprefix(TIMM_PREFIX)
    if not _timm().is_model(model_name):
        return None  # building the model says what is wrong with the name
    cfg = get_pretrained_cfg(model_name)
    if cfg is None or cfg.mean is None or cfg.std is None:
        return None
    return tuple(cfg.mean), tuple(cfg.std)


def _download_from_hub(repo: str, filenames: list[str], cache: Path) -> str:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    for name in filenames[:-1]:
        try:
            return hf_hub_download(repo, name, cache_dir=cache)
        except EntryNotFoundError:
            continue
    return hf_hub_download(repo, filenames[-1], cache_dir=cache)


def _pretrained_state_dict(model_name: str) -> dict:
    repo, url, filenames = pretrained_source(model_name)
    if repo is None and url is None:
        raise ConfigError(
            f"timm has no pretrained weights for {model_name!r}. Pass encoder_weights=None "
            "(--encoder-weights none) for random init, or a local weights file."
        )
    if repo is None:
        return load_url_state_dict(url, what=f"timm's {model_name}")
    from huggingface_hub import try_to_load_from_cache

    cache = hf_cache_dir()
    for name in filenames:
        cached = try_to_load_from_cache(repo, name, cache_dir=cache)
        if isinstance(cached, str):
            return load_state_dict_file(cached)
    reason = hub_offline_reason()
    if reason is None:
        try:
            return load_state_dict_file(_download_from_hub(repo, filenames, cache))
        except Exception as exc:  # network, auth, disk: say it in the one error below
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    raise WeightsUnavailableError(
        f"Pretrained weights for timm's {model_name} are not cached and could not be "
        f"downloaded ({reason}).\n"
        f"  Hub repo: {repo} (file {filenames[0]})\n"
        f"  Cache folder: {cache} (set HF_HOME or HF_HUB_CACHE to use another)\n"
        f"  Fix: on a machine with internet run `huggingface-cli download {repo}` and copy "
        "that cache folder here, or pass encoder_weights='/path/to/model.safetensors', or "
        "encoder_weights=None to start from random weights (works offline)."
    )


def _first_conv_channels(model_name: str, state_dict: dict) -> int | None:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    first = cfg.first_conv if cfg is not None else None
    names = (first,) if isinstance(first, str) else tuple(first or ())
    for name in names:
        weight = state_dict.get(f"{name}.weight")
        if weight is not None and weight.ndim == 4:
            return int(weight.shape[1])
    return None


def build_timm_encoder(
    name: str, *, in_channels: int, weights: Any
) -> tuple[nn.Module, tuple[int, ...], tuple[int, ...]]:
    """Build ``tu-<timm name>`` as a features-only backbone; see the module docstring.

    Returns ``(body, channels, reductions)``: the module, and the channels and strides of the
    feature maps it yields, shallow to deep.
    """
    timm = _timm()
    model_name = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(model_name):
        raise ConfigError(
            f"Unknown timm model {model_name!r} (from encoder {name!r}). `unet-resnet models` "
            "lists tested ones; timm.list_models('PATTERN*') lists all."
        )
    state_dict, source = None, weights
    if weights is None or (isinstance(weights, str) and weights.lower() in ("none", "")):
        pass
    elif is_weights_path(weights):
        state_dict = load_state_dict_file(weights)
    elif str(weights).lower() == IMAGENET_ALIAS:
        state_dict, source = _pretrained_state_dict(model_name), f"timm's {model_name} weights"
    else:
        raise ConfigError(
            f"Unknown encoder_weights {weights!r} for {name}. timm encoders take 'imagenet' "
            f"(timm's default tag; write {TIMM_PREFIX}NAME.TAG for another), 'none', or a "
            "path to a local .safetensors/.pth file."
        )
    overlay = None
    if state_dict is not None:
        file_channels = _first_conv_channels(model_name, state_dict) or 3
        if file_channels not in (3, in_channels):
            raise WeightsFileError(
                f"Weights from {source} take {file_channels} input channels but the model is "
                f"built with in_channels={in_channels}. Build the model with "
                f"in_channels={file_channels} (training does so for images with "
                f"{file_channels} bands) to use them as they are."
            )
        overlay = {"state_dict": state_dict, "input_size": (file_channels, 224, 224)}
    try:
        body = timm.create_model(
            model_name,
            pretrained=state_dict is not None,
            features_only=True,
            in_chans=in_channels,
            pretrained_cfg_overlay=overlay,
        )
    except (RuntimeError, KeyError, ValueError) as exc:
        if state_dict is None:
            raise
        raise WeightsFileError(
            f"Weights from {source} do not fit timm's {model_name}: "
            f"{str(exc).splitlines()[0][:300]}. Pass a state dict of the same model "
            f"(timm.create_model({model_name!r}).state_dict()), or encoder_weights=None."
        ) from None
    except (TypeError, AttributeError) as exc:
        raise ConfigError(
            f"timm's {model_name} cannot be built as a features-only encoder ({exc})."
        ) from None
    info = body.feature_info
    return body, tuple(info.channels()), tuple(info.reduction())
