"""Sharing a model the Hugging Face Hub way: ``save_pretrained`` writes ``config.json``
(architecture, plus classes and normalisation from ``hub_metadata``), ``model.safetensors``
and a ``README.md`` model card; ``from_pretrained(dir_or_repo_id)`` reads them back, from a
folder or the Hub (its cache; ``HF_HUB_OFFLINE=1`` / ``UNET_RESNET_OFFLINE=1`` read only the
cache), with errors that say what to do; ``push_to_hub`` comes with
``huggingface_hub.ModelHubMixin``. The model class mixes this in; the architecture itself is
:mod:`unet_resnet.models.unet`'s."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import ModelHubMixin

from unet_resnet.errors import UnetResnetError, WeightsFileError, WeightsUnavailableError
from unet_resnet.models.card import LIBRARY_NAME, build_model_card
from unet_resnet.models.weights import hf_cache_dir, hub_offline_reason

__all__ = ["CONFIG_FILE", "HUB_METADATA_KEYS", "WEIGHTS_FILE", "HubSharing"]

#: Files of a shared model (``save_pretrained``), the Hub convention.
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: What a shared model's config.json carries besides the architecture (written from
#: ``hub_metadata``, read back into it).
HUB_METADATA_KEYS = (
    "classes",
    "mean",
    "std",
    "image_size",
    "image_dtype",
    "volume",
    "task",
    "thresholds",
)
_ARCHITECTURE_KEYS = (
    "n_classes",
    "in_channels",
    "encoder",
    "upsampling_method",
    "decoder_channels",
)


class HubSharing(ModelHubMixin):
    """The Hub persistence of a model whose ``config`` property holds its architecture
    (:data:`_ARCHITECTURE_KEYS`) and whose ``hub_metadata`` dict holds the rest."""

    config: dict[str, Any]
    hub_metadata: dict[str, Any]

    def _save_pretrained(self, save_directory: Path) -> None:
        from safetensors.torch import save_file

        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(Path(save_directory) / WEIGHTS_FILE), metadata={"format": "pt"})
        config = {"library_name": LIBRARY_NAME, **self.hub_metadata, **self.config}
        (Path(save_directory) / CONFIG_FILE).write_text(
            json.dumps(config, indent=2, sort_keys=True) + "\n"
        )

    def generate_model_card(self, *args, **kwargs):
        config = {**self.hub_metadata, **self.config}
        parameters = sum(p.numel() for p in self.parameters())
        return build_model_card(config, parameters=parameters, **kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, **kwargs):
        """Load a model saved with :meth:`save_pretrained`: a local folder, or a Hugging Face
        Hub repo id (downloaded into the Hub cache; ``HF_HUB_OFFLINE=1`` or
        ``UNET_RESNET_OFFLINE=1`` read only the cache)."""
        source = str(pretrained_model_name_or_path)
        if not os.path.isdir(source):
            kwargs.setdefault("cache_dir", hf_cache_dir())
            if hub_offline_reason():
                kwargs["local_files_only"] = True
        try:
            return super().from_pretrained(source, **kwargs)
        except UnetResnetError:
            raise
        except Exception as exc:  # the hub client's many error types: one message
            from huggingface_hub.errors import HFValidationError

            if isinstance(exc, HFValidationError):
                raise WeightsFileError(
                    f"{source} is neither a folder holding {CONFIG_FILE} and {WEIGHTS_FILE} nor "
                    "a Hugging Face Hub repo id (user/name)."
                ) from None
            reason = hub_offline_reason() or f"{type(exc).__name__}: {str(exc)[:200]}"
            raise WeightsUnavailableError(
                f"{source} is not a folder here, and the Hugging Face Hub repo {source} is not "
                f"cached and could not be downloaded ({reason}).\n"
                f"  Cache folder: {kwargs.get('cache_dir')}\n"
                "  Fix: check the path or repo id; on a machine with internet run "
                f"`huggingface-cli download {source}` and copy the cache folder here."
            ) from None

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        config: dict[str, Any] | None = None,
        **_: Any,
    ):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not isinstance(config, dict):
            raise WeightsFileError(f"{model_id} has no readable {CONFIG_FILE}.")
        if os.path.isdir(model_id):
            weights = os.path.join(model_id, WEIGHTS_FILE)
        else:
            from huggingface_hub import hf_hub_download

            weights = hf_hub_download(
                model_id,
                WEIGHTS_FILE,
                revision=revision,
                cache_dir=cache_dir,
                force_download=force_download,
                local_files_only=local_files_only,
                token=token,
            )
        missing = [key for key in _ARCHITECTURE_KEYS if key not in config]
        if missing:
            raise WeightsFileError(
                f"{model_id}/{CONFIG_FILE} is not a unet-resnet config: {missing} missing."
            )
        architecture = {key: config[key] for key in _ARCHITECTURE_KEYS}
        names = (config.get("classes") or {}).get("names")
        if names is not None and len(names) != architecture["n_classes"]:
            raise WeightsFileError(
                f"{model_id}/{CONFIG_FILE} is inconsistent: n_classes is "
                f"{architecture['n_classes']} but classes names {len(names)} ({names})."
            )
        try:
            model = cls(**architecture, encoder_weights=None)
            model.load_state_dict(load_file(weights, device="cpu"), strict=True)
        except (OSError, SafetensorError, RuntimeError, TypeError, ValueError) as exc:
            raise WeightsFileError(
                f"{model_id} does not load: {type(exc).__name__}: {str(exc)[:300]}"
            ) from None
        model.hub_metadata = {key: config[key] for key in HUB_METADATA_KEYS if key in config}
        return model.eval()
