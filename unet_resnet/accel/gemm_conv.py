"""Training convolutions as matrix products where oneDNN's own kernels are slow.

Profiling a bf16 training step of the guide's model on a CPU (docs/performance.md) found two
kinds of layer far below the matrix-unit peak that the rest reach:

- the **2x2, stride-2 transposed convolutions** that upsample in the decoder: oneDNN has no
  fast backward-weights kernel for them and falls back to a generic one (0.05-0.2 of the
  peak, a third of a second per step at 256x256, batch 8);
- **3x3 convolutions over few pixels and many channels** (the bridge's 2048x2048 at 8x8):
  the weight gradient reduces over only ``batch x H x W`` pixels into a 38M-value weight,
  which oneDNN's direct kernels do at 0.16 of the peak, and every call re-lays the weight
  out three times (forward, backward-data, backward-weights).

Both are matrix products in disguise. A 2x2/stride-2 transposed convolution maps each input
pixel to its own 2x2 output patch: one GEMM and a pixel shuffle. A stride-1 convolution is a
GEMM over the ``kh x kw`` shifted copies of its input (im2col), cheap when there are few
pixels. Here they are computed so, forward and backward, in whatever dtype autocast gives
(bf16 GEMMs run on AMX/AVX-512 BF16 near the peak). The fp32 master weights go in as they
are: their cast and re-layout into the GEMM's matrix is one copy, and their gradients come
back in fp32 and in the weights' own layout (one copy, nothing left for autograd to redo).

:func:`use_gemm_convolutions` swaps the class of the matching layers of a model for training:
parameters, names and state-dict keys are unchanged; evaluation (no gradients), GPUs and
layers outside the rule run PyTorch's own convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["GemmConv2d", "GemmConvTranspose2d", "gemm_rule", "use_gemm_convolutions"]

#: A stride-1 convolution takes the GEMM path when the batch's output pixels are at most
#: this share of its reduction size ``C_in x kh x kw`` (weight gradients over few pixels are
#: what the direct kernels do slowly; above it oneDNN's direct kernels win). Measured per
#: layer on AMX and AVX-512 BF16: docs/performance.md.
PIXELS_PER_REDUCTION = 0.25


def _autocast_dtype(x: torch.Tensor) -> torch.dtype | None:
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return None


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """``N x H x W x C`` contiguous (a free view of a channels_last tensor)."""
    return x.permute(0, 2, 3, 1).contiguous()


def _as_nchw(x_nhwc: torch.Tensor) -> torch.Tensor:
    """The NCHW-shaped, channels_last view of an ``N x H x W x C`` tensor."""
    return x_nhwc.permute(0, 3, 1, 2)


def _kernel_last(weight: torch.Tensor) -> bool:
    """Whether the weight (``A x B x kh x kw``) lies in memory as ``A, kh, kw, B``
    (channels_last) rather than ``A, B, kh, kw``: the GEMMs read it in its own order."""
    return not weight.is_contiguous() and weight.is_contiguous(memory_format=torch.channels_last)


def _weight_matrix(weight: torch.Tensor, dtype: torch.dtype, kernel_last: bool) -> torch.Tensor:
    """``weight`` as the ``A x (kh*kw*B)`` (kernel last) or ``A x (B*kh*kw)`` matrix the GEMMs
    read, in ``dtype``: one sequential copy (the cast), the weight's memory order kept."""
    a, b, kh, kw = weight.shape
    if kernel_last:
        matrix = torch.empty(a, kh, kw, b, dtype=dtype, device=weight.device)
        return matrix.copy_(weight.permute(0, 2, 3, 1)).view(a, -1)
    return weight.to(dtype, memory_format=torch.contiguous_format).view(a, -1)


def _weight_gradient(matrix: torch.Tensor, weight: torch.Tensor, kernel_last: bool):
    """The inverse of :func:`_weight_matrix` for a gradient: in the weight's dtype and memory
    layout (what autograd's accumulation and the fused optimisers expect), one copy."""
    a, b, kh, kw = weight.shape
    grad = torch.empty_like(weight)  # the weight's strides
    if kernel_last:
        return grad.copy_(matrix.view(a, kh, kw, b).permute(0, 3, 1, 2))
    return grad.copy_(matrix.view(a, b, kh, kw))


def _im2col(x: torch.Tensor, kh: int, kw: int, ph: int, pw: int, kernel_last: bool):
    """``(N*Ho*Wo) x (kh*kw*C)`` rows of shifted input (or ``C*kh*kw`` when the weight is
    not kernel last), in the order of the weight matrix's columns."""
    n, h, w, c = x.shape
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    padded = F.pad(x, (0, 0, pw, pw, ph, ph))
    if kernel_last:
        cols = x.new_empty(n, ho, wo, kh, kw, c)
        parts = cols
    else:
        cols = x.new_empty(n, ho, wo, c, kh, kw)
        parts = cols.permute(0, 1, 2, 4, 5, 3)  # indexed (kh, kw, C) as above
    for i in range(kh):
        for j in range(kw):
            parts[:, :, :, i, j, :] = padded[:, i : i + ho, j : j + wo, :]
    return cols.view(n * ho * wo, -1)


def _col2im(cols: torch.Tensor, shape, kh: int, kw: int, ph: int, pw: int, kernel_last: bool):
    """The adjoint of :func:`_im2col`: sums each shifted copy back into place."""
    n, h, w, c = shape
    ho, wo = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    if kernel_last:
        parts = cols.view(n, ho, wo, kh, kw, c)
    else:
        parts = cols.view(n, ho, wo, c, kh, kw).permute(0, 1, 2, 4, 5, 3)
    padded = cols.new_zeros(n, h + 2 * ph, w + 2 * pw, c)
    for i in range(kh):
        for j in range(kw):
            padded[:, i : i + ho, j : j + wo, :] += parts[:, :, :, i, j, :]
    return padded[:, ph : ph + h, pw : pw + w, :]


class _ConvGemm(torch.autograd.Function):
    """Stride-1, zero-padded, ungrouped convolution as GEMMs (forward and backward) in the
    dtype of ``x``; the weight and bias stay in their own dtype (fp32 master weights under
    autocast) and get gradients in it."""

    @staticmethod
    def forward(ctx, x, weight, bias, ph: int, pw: int):
        o, _, kh, kw = weight.shape
        kernel_last = _kernel_last(weight)
        x_nhwc = _nhwc(x)
        w2 = _weight_matrix(weight, x.dtype, kernel_last)
        cols = _im2col(x_nhwc, kh, kw, ph, pw, kernel_last)
        out = cols @ w2.t() if bias is None else torch.addmm(bias.to(x.dtype), cols, w2.t())
        n, h, w, _ = x_nhwc.shape
        ctx.save_for_backward(x_nhwc, w2, weight)
        ctx.geometry = (ph, pw, kernel_last, None if bias is None else bias.dtype)
        return _as_nchw(out.view(n, h + 2 * ph - kh + 1, w + 2 * pw - kw + 1, o))

    @staticmethod
    def backward(ctx, grad):
        x_nhwc, w2, weight = ctx.saved_tensors
        ph, pw, kernel_last, bias_dtype = ctx.geometry
        o, _, kh, kw = weight.shape
        g2 = _nhwc(grad.to(w2.dtype)).view(-1, o)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            cols_grad = g2 @ w2
            grad_x = _col2im(cols_grad, x_nhwc.shape, kh, kw, ph, pw, kernel_last)
            grad_x = _as_nchw(grad_x)
        if ctx.needs_input_grad[1]:
            cols = _im2col(x_nhwc, kh, kw, ph, pw, kernel_last)  # cheaper than keeping it
            grad_w = _weight_gradient(g2.t().contiguous() @ cols, weight, kernel_last)
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = g2.sum(0).to(bias_dtype)
        return grad_x, grad_w, grad_b, None, None


class _ConvTranspose2x2Gemm(torch.autograd.Function):
    """Transposed convolution with kernel == stride (no overlap) as one GEMM and a shuffle,
    in the dtype of ``x`` (weight and bias as in :class:`_ConvGemm`)."""

    @staticmethod
    def forward(ctx, x, weight, bias):
        c, o, kh, kw = weight.shape
        kernel_last = _kernel_last(weight)
        x_nhwc = _nhwc(x)
        n, h, w, _ = x_nhwc.shape
        w2 = _weight_matrix(weight, x.dtype, kernel_last)
        y = x_nhwc.view(-1, c) @ w2
        # to (n, h, kh, w, kw, o): each input pixel's kh x kw patch in place
        if kernel_last:
            y = y.view(n, h, w, kh, kw, o).permute(0, 1, 3, 2, 4, 5)
        else:
            y = y.view(n, h, w, o, kh, kw).permute(0, 1, 4, 2, 5, 3)
        y = y.reshape(n, h * kh, w * kw, o)
        if bias is not None:
            y = y + bias.to(x.dtype)
        ctx.save_for_backward(x_nhwc, w2, weight)
        ctx.geometry = (kernel_last, None if bias is None else bias.dtype)
        return _as_nchw(y)

    @staticmethod
    def backward(ctx, grad):
        x_nhwc, w2, weight = ctx.saved_tensors
        kernel_last, bias_dtype = ctx.geometry
        c, o, kh, kw = weight.shape
        n, h, w, _ = x_nhwc.shape
        g = _nhwc(grad.to(w2.dtype)).view(n, h, kh, w, kw, o)
        g2 = g.permute(0, 1, 3, 2, 4, 5) if kernel_last else g.permute(0, 1, 3, 5, 2, 4)
        g2 = g2.reshape(n * h * w, -1)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _as_nchw((g2 @ w2.t()).view(n, h, w, c))
        if ctx.needs_input_grad[1]:
            grad_w = _weight_gradient(x_nhwc.view(-1, c).t() @ g2, weight, kernel_last)
        if bias_dtype is not None and ctx.needs_input_grad[2]:
            grad_b = g.sum((0, 1, 2, 3, 4)).to(bias_dtype)
        return grad_x, grad_w, grad_b


def _cast(dtype: torch.dtype | None, x: torch.Tensor) -> torch.Tensor:
    """The input in the autocast dtype (the weights are cast inside the GEMM functions)."""
    return x if dtype is None else x.to(dtype)


def _wants_gradients(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A CPU training call (GPU libraries have fast kernels for these layers)."""
    return (
        x.device.type == "cpu"
        and torch.is_grad_enabled()
        and (x.requires_grad or weight.requires_grad)
    )


def gemm_rule(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """Whether ``conv`` on input ``x`` takes the GEMM path: stride 1, no dilation or groups,
    zero padding, and few output pixels for its reduction size (:data:`PIXELS_PER_REDUCTION`)."""
    kh, kw = conv.kernel_size
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or conv.groups != 1:
        return False
    if conv.padding_mode != "zeros" or isinstance(conv.padding, str) or kh * kw == 1:
        return False
    ph, pw = conv.padding
    pixels = x.shape[0] * (x.shape[2] + 2 * ph - kh + 1) * (x.shape[3] + 2 * pw - kw + 1)
    return pixels <= PIXELS_PER_REDUCTION * conv.in_channels * kh * kw


class GemmConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose training calls over few pixels run as GEMMs (:func:`gemm_rule`)."""

    #: What the inference fast path turns it back into (folding and packing match classes).
    inference_class = nn.Conv2d

    def _conv_forward(self, x, weight, bias):
        if x.dim() != 4 or not _wants_gradients(x, weight) or not gemm_rule(self, x):
            return super()._conv_forward(x, weight, bias)
        x = _cast(_autocast_dtype(x), x)
        with torch.autocast(x.device.type, enabled=False):
            return _ConvGemm.apply(x, weight, bias, *self.padding)


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` with kernel == stride: training calls run as a GEMM + shuffle."""

    inference_class = nn.ConvTranspose2d

    def forward(self, x, output_size=None):
        if output_size is not None or x.dim() != 4 or not _wants_gradients(x, self.weight):
            return super().forward(x, output_size)
        x = _cast(_autocast_dtype(x), x)
        with torch.autocast(x.device.type, enabled=False):
            return _ConvTranspose2x2Gemm.apply(x, self.weight, self.bias)


def _transposed_fits(conv: nn.ConvTranspose2d) -> bool:
    return (
        conv.kernel_size == conv.stride
        and conv.padding == (0, 0)
        and conv.output_padding == (0, 0)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def use_gemm_convolutions(model: nn.Module) -> int:
    """Give ``model``'s plain convolutions the GEMM training paths, in place; returns how
    many layers were changed. Only the class changes (parameters, buffers, names, hooks and
    state-dict keys stay), so checkpoints are unaffected."""
    changed = 0
    for module in model.modules():
        if type(module) is nn.Conv2d:
            module.__class__ = GemmConv2d
            changed += 1
        elif type(module) is nn.ConvTranspose2d and _transposed_fits(module):
            module.__class__ = GemmConvTranspose2d
            changed += 1
    return changed
