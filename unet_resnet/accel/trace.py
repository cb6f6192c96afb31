"""Which module reads a convolution's output, found by running the model once.

Folding a BatchNorm into the convolution before it, or fusing an activation into it, is
only right when that module is the convolution's one reader. Module names say so for
torchvision's ResNets (``conv1``/``bn1``) but not for timm's EfficientNet and MobileNet blocks
(``conv_pw``/``bn1``, ``conv_dw``/``bn2``), so the pairs are found by following a forward pass:
hooks note each convolution's output tensor and which modules are handed it.

Readers that are not modules (``x + shortcut`` in a ``forward``) are not seen; callers check
the rewritten model against the original on an example input and keep the original if they
differ.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["conv_readers", "forward_with_hooks"]


def forward_with_hooks(model: nn.Module, example: torch.Tensor, handles: list) -> None:
    """One forward pass of ``model`` on ``example`` (inference mode), then the hooks behind
    ``handles`` removed, also when the pass fails."""
    try:
        with torch.inference_mode():
            model(example)
    finally:
        for handle in handles:
            handle.remove()


def conv_readers(model: nn.Module, example: torch.Tensor) -> list[tuple[str, str]]:
    """``(convolution, reader)`` module names where, in one forward pass on ``example``, a
    ``Conv2d`` called once handed its output to exactly one module, called once (``Identity``
    modules are looked through: they return their input; after an in-place module the
    tensor holds that module's result, no longer the convolution's). Readers are leaf modules and
    BatchNorms (timm's BatchNormAct2d has children)."""
    outputs: dict[int, str] = {}  # id of a convolution's output -> that convolution
    readers: dict[str, list[str]] = {}
    calls: dict[str, int] = {}
    alive: list[torch.Tensor] = []  # keeps ids unique while the pass runs
    handles = []

    def after_conv(name: str):
        def hook(_module, _args, output):
            outputs[id(output)] = name
            alive.append(output)

        return hook

    def before(name: str, module: nn.Module):
        def hook(_module, args):
            calls[name] = calls.get(name, 0) + 1
            if isinstance(module, nn.Identity):
                return
            for arg in args:
                if isinstance(arg, torch.Tensor) and id(arg) in outputs:
                    readers.setdefault(outputs[id(arg)], []).append(name)

        return hook

    def after(_module, args, output):
        # An in-place module (ReLU(inplace=True)) hands back the tensor it was given, now
        # holding its own result: later modules reading that tensor read it, not the conv's.
        if any(output is arg for arg in args):
            outputs.pop(id(output), None)

    for name, module in model.named_modules():
        if type(module) is nn.Conv2d:
            handles.append(module.register_forward_hook(after_conv(name)))
        if not module._modules or isinstance(module, nn.BatchNorm2d):
            handles.append(module.register_forward_pre_hook(before(name, module)))
            if not isinstance(module, nn.Identity):
                handles.append(module.register_forward_hook(after))
    forward_with_hooks(model, example, handles)
    return [
        (conv, users[0])
        for conv, users in readers.items()
        if len(users) == 1 and calls[conv] == 1 and calls[users[0]] == 1
    ]
