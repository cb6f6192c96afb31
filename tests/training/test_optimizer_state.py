"""Our fused optimisers: channels_last weights updated in place without copies, and gradients
and state re-laid out as their parameters (PyTorch's fused kernels need them to agree)."""

from __future__ import annotations

import pytest
import torch

from unet_resnet.accel.optim import Adam, AdamW


def _resumed_steps(cls, *, fused: bool, state_channels_last: bool):
    torch.manual_seed(0)
    param = torch.nn.Parameter(torch.randn(8, 4, 3, 3))
    grad = torch.randn(8, 4, 3, 3)
    first = cls([param], lr=0.1, fused=fused)
    param.grad = grad.clone()
    first.step()
    saved = first.state_dict()
    if state_channels_last:  # as saved by a run whose weights were channels_last
        for state in saved["state"].values():
            for key in ("exp_avg", "exp_avg_sq"):
                state[key] = state[key].contiguous(memory_format=torch.channels_last)
    resumed = cls([param], lr=0.1, fused=fused)
    resumed.load_state_dict(saved)
    for _ in range(3):
        param.grad = grad.clone()
        resumed.step()
    return param.detach().clone(), resumed.state[param]["exp_avg"]


def test_moments_saved_in_another_layout_are_updated_correctly():
    expected, expected_avg = _resumed_steps(
        torch.optim.Adam, fused=False, state_channels_last=False
    )
    got, got_avg = _resumed_steps(Adam, fused=True, state_channels_last=True)
    assert got_avg.stride() == got.stride()  # re-laid out as the parameter
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(got_avg, expected_avg)


def test_pytorchs_fused_adam_updates_the_wrong_elements_there():
    """Why ours re-lays state out: if this starts to fail, PyTorch fixed its fused kernel."""
    expected, _ = _resumed_steps(torch.optim.Adam, fused=False, state_channels_last=False)
    got, _ = _resumed_steps(torch.optim.Adam, fused=True, state_channels_last=True)
    assert not torch.allclose(got, expected)


def _params():
    torch.manual_seed(0)
    shapes = [(16, 8, 3, 3), (16,), (8, 16, 1, 1), (4, 4)]
    values = [torch.randn(s) for s in shapes]
    grads = [[torch.randn(s) for s in shapes] for _ in range(3)]
    return values, grads


@pytest.mark.parametrize(("ours", "theirs"), [(Adam, torch.optim.Adam), (AdamW, torch.optim.AdamW)])
def test_fused_steps_on_channels_last_weights_equal_pytorchs_and_copy_nothing(ours, theirs):
    values, grads = _params()

    def run(cls, fused, record=False):
        params = [
            torch.nn.Parameter(v.clone().contiguous(memory_format=torch.channels_last))
            if v.dim() == 4
            else torch.nn.Parameter(v.clone())
            for v in values
        ]
        ptrs = [p.data_ptr() for p in params]
        optimizer = cls(params, lr=0.05, weight_decay=0.01, fused=fused)
        ops = []
        for step_grads in grads:
            for p, g in zip(params, step_grads, strict=True):
                p.grad = (
                    g.clone().contiguous(memory_format=torch.channels_last)
                    if g.dim() == 4
                    else g.clone()
                )
            if record:
                with torch.profiler.profile() as prof:
                    optimizer.step()
                ops += [e.name for e in prof.events()]
            else:
                optimizer.step()
        assert [p.data_ptr() for p in params] == ptrs  # updated in place
        assert all(
            p.is_contiguous(memory_format=torch.channels_last) for p in params if p.dim() == 4
        )
        return [p.detach() for p in params], optimizer, ops

    expected, _, _ = run(theirs, fused=False)
    got, optimizer, ops = run(ours, fused=True, record=True)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b)
    assert "aten::_fused_adam_" in ops or "aten::_fused_adamw_" in ops
    assert "aten::clone" not in ops and "aten::contiguous" not in ops
    state = optimizer.state[optimizer.param_groups[0]["params"][0]]
    assert state["exp_avg"].is_contiguous(memory_format=torch.channels_last)


def test_a_gradient_in_another_layout_is_re_laid_out_first():
    torch.manual_seed(0)
    value, grad = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    results = []
    for cls, fused in ((torch.optim.Adam, False), (Adam, True)):
        p = torch.nn.Parameter(value.clone().contiguous(memory_format=torch.channels_last))
        optimizer = cls([p], lr=0.1, fused=fused)
        for _ in range(2):
            p.grad = grad.clone()  # contiguous, unlike the parameter
            optimizer.step()
        results.append(p.detach())
    torch.testing.assert_close(results[1], results[0])
