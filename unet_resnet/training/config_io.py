"""The training configuration's outside: command-line flags generated from the
:class:`~unet_resnet.training.config.TrainConfig` fields (``batch_size`` is ``--batch-size``),
YAML config files, and the Markdown reference in docs/config.md."""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from pathlib import Path
from typing import Any, get_args, get_origin

import yaml

from unet_resnet.errors import ConfigError
from unet_resnet.hardware import PRECISION_ALIASES
from unet_resnet.training.config import TrainConfig, field_choices

__all__ = ["add_config_arguments", "config_from_args", "config_reference", "load_yaml_config"]

_TYPE_HINTS = typing.get_type_hints(TrainConfig)


def _field_type(name: str) -> Any:
    return _TYPE_HINTS[name]


def _parse_optional(kind):
    def parse(value: str):
        return None if value.lower() in ("none", "null", "") else kind(value)

    parse.__name__ = kind.__name__
    return parse


def _parse_bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_config_arguments(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = ()) -> None:
    """Add ``--flag`` for every :class:`TrainConfig` field (defaults stay in the dataclass)."""
    parser.add_argument("--config", help="YAML file with any of these options (flags override)")
    for f in dataclasses.fields(TrainConfig):
        if f.name in skip or not f.metadata.get("flag", True):
            continue
        flag = "--" + f.name.replace("_", "-")
        annotation = _field_type(f.name)
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        choices = field_choices(f)
        if f.name == "precision":  # the older Lightning spellings are accepted too
            choices = (*choices, *PRECISION_ALIASES)
        help_text = f.metadata.get("help", "")
        default = f"{help_text} (default: {f.default})".strip()
        if choices:
            kwargs["choices"] = choices
        elif annotation is bool:
            kwargs["type"] = _parse_bool
            kwargs["metavar"] = "BOOL"
        else:
            union = get_origin(annotation) in (typing.Union, types.UnionType)
            args = [a for a in get_args(annotation) if a is not type(None)] if union else []
            # A union with str (image_size "H,W", class_weights "1,2") is parsed in the
            # dataclass; otherwise the flag has the field's own type.
            base = (str if str in args else args[0]) if args else annotation
            kind = {int: int, float: float}.get(base, str)
            kwargs["type"] = _parse_optional(kind) if type(None) in get_args(annotation) else kind
        if f.name == "resume":
            kwargs.update(nargs="?", const="last")
        # argparse %-formats help texts: a literal "%" in one ("10% of") must be doubled.
        parser.add_argument(flag, help=default.replace("%", "%%"), **kwargs)
    for option in _later_layout_options().values():
        parser.add_argument(
            option.flag,
            dest=option.name,
            type=option.type,
            choices=option.choices,
            default=argparse.SUPPRESS,
            help=f"{option.help} (default: {option.default})".replace("%", "%%"),
        )


def _later_layout_options() -> dict[str, Any]:
    """Options of layouts registered after :class:`TrainConfig` was defined (no field of
    their own): they travel in its ``layout_options`` mapping."""
    from unet_resnet.data.layouts import LAYOUT_OPTIONS

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    return {name: o for name, o in LAYOUT_OPTIONS.items() if name not in names}


def load_yaml_config(path: str | os.PathLike) -> dict[str, Any]:
    """Read a YAML config; unknown keys are an error that lists the valid ones."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Could not read config {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"Config {path} must be a mapping of option: value.")
    valid = {f.name for f in dataclasses.fields(TrainConfig)} | set(_later_layout_options())
    unknown = sorted(set(data) - valid)
    if unknown:
        raise ConfigError(
            f"Unknown option(s) {unknown} in {path}. Valid keys: {', '.join(sorted(valid))}."
        )
    return data


def config_from_args(args: argparse.Namespace, **overrides: Any) -> TrainConfig:
    """Defaults < ``--config`` YAML < explicit flags < ``overrides``."""
    later = _later_layout_options()
    values: dict[str, Any] = {}
    if getattr(args, "config", None):
        values.update(load_yaml_config(args.config))
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({k: v for k, v in vars(args).items() if k in names | set(later)})
    values.update(overrides)
    # (values set for a layout option without a field of its own go in layout_options)
    extra = {k: values.pop(k) for k in list(values) if k in later}
    if extra:
        values["layout_options"] = {**values.get("layout_options", {}), **extra}
    try:
        return TrainConfig(**values)
    except TypeError as exc:
        raise ConfigError(f"Invalid configuration: {exc}") from None


def config_reference() -> str:
    """Markdown table of every option: YAML key, flag, default and what it does."""
    lines = [
        "| YAML key | flag | default | what it does |",
        "|---|---|---|---|",
    ]
    for f in dataclasses.fields(TrainConfig):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        choices = field_choices(f)
        help_text = f.metadata.get("help", "")
        if choices:
            help_text = f"{help_text}; one of {', '.join(map(str, choices))}".lstrip("; ")
        flag = f"`--{f.name.replace('_', '-')}`" if f.metadata.get("flag", True) else "(YAML)"
        lines.append(f"| `{f.name}` | {flag} | `{default}` | {help_text} |")
    return "\n".join(lines)
