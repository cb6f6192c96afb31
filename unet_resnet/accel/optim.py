"""Optimisers as training uses them: PyTorch's fused Adam/AdamW, fed channels_last weights
without copies, and optimiser state kept in its parameters' layout.

PyTorch's fused CPU kernels walk a parameter, its gradient and its moments as flat memory.
Handed a channels_last weight they first copy it (and its gradient and moments) to a
contiguous tensor and back: measured on the guide's model (148M parameters, nearly all in
channels_last convolution weights) the optimiser step took 180 ms, 115 ms without the
copies (docs/performance.md). A channels_last tensor *is* contiguous in another index order
(``N, H, W, C``), so the kernels are given that view of every such tensor: same memory, same
elementwise update, no copy. And where a gradient or a moment does not share its parameter's
layout (a gradient set by hand, optimiser state saved under the other layout as from a run
with ``--channels-last`` switched), PyTorch's fused kernel (torch 2.14) silently updates the
wrong elements: ours first re-lays such tensors out as their parameter is.
"""

from __future__ import annotations

import torch

__all__ = ["Adam", "AdamW"]


def _channels_last_only(t: torch.Tensor) -> bool:
    return (
        t.dim() == 4
        and not t.is_contiguous()
        and t.is_contiguous(memory_format=torch.channels_last)
    )


def _memory_order(lists: tuple[list, ...]) -> None:
    """In the per-parameter lists a fused step is given (parameters first), replace each
    channels_last parameter and its same-shaped gradient and state by their contiguous
    ``N, H, W, C`` views when all share its strides (as :func:`_match_layout` made them)."""
    params = lists[0]
    aligned = [items for items in lists if len(items) == len(params)]
    for i, param in enumerate(params):
        if not _channels_last_only(param):
            continue
        peers = [items for items in aligned if items[i].shape == param.shape]
        if all(items[i].stride() == param.stride() for items in peers):
            for items in peers:
                items[i] = items[i].permute(0, 2, 3, 1)


class _MemoryOrder:
    """Mixin for torch.optim classes whose ``step`` gathers per-parameter lists in
    ``_init_group(group, *lists)`` and hands them to a fused kernel.

    The gradients reach ``step`` already unscaled: a fused optimizer declares that it unscales
    fp16 gradients itself, and Lightning (rightly) refuses to clip gradients that may still be
    scaled, so with that declaration ``--gradient-clip`` failed at the first step under every
    mixed precision. Declared off, the loss scaler unscales before clipping and steps as for
    any optimizer (one more pass over the gradients under fp16 only).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._step_supports_amp_scaling = False

    def _init_group(self, group, *lists):
        if group.get("fused"):
            for param in group["params"]:
                _match_layout(param, self.state.get(param, {}))
        result = super()._init_group(group, *lists)
        if group.get("fused") and lists and all(isinstance(items, list) for items in lists):
            _memory_order(lists)
        return result


class Adam(_MemoryOrder, torch.optim.Adam):
    """``torch.optim.Adam``; fused, it updates channels_last weights in place without copies."""


class AdamW(_MemoryOrder, torch.optim.AdamW):
    """``torch.optim.AdamW``; fused, it updates channels_last weights in place without copies."""


def _relaid(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor | None:
    """``value`` in ``param``'s layout, or None when it already is (or is not per-element)."""
    if value.shape != param.shape or value.stride() == param.stride():
        return None
    return torch.empty_like(param, dtype=value.dtype).copy_(value)


def _match_layout(param: torch.Tensor, state: dict) -> None:
    """Re-lay ``param``'s gradient and per-element state out as ``param`` is."""
    if param.grad is not None and (grad := _relaid(param.grad, param)) is not None:
        param.grad = grad
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and (relaid := _relaid(value, param)) is not None:
            state[key] = relaid
