"""Matrix products for fp32 training on CPU, through oneDNN where it beats the default BLAS.

PyTorch's CPU `F.linear` calls MKL's sgemm. On the AMD EPYC this project is measured on, oneDNN's fp32
matmul (the kernel `torch.compile` uses for CPU linears) runs the forward product `x @ W.T` and the
input gradient `g @ W` of pico's layers 1.1-1.4x faster; MKL stays faster for the weight gradient `g.T @ x`
(`benchmarks/cpu_kernels.py`). Both are full fp32, so results agree to float rounding.

Only training products go to oneDNN: the ones autograd records, and their backward. oneDNN keeps state per
matrix shape, and generation's ever-changing shapes made `benchmarks/load_memory.py` keep 148 MB more after
1,000 prompts when inference used it too (it stays flat on MKL). Products under a few hundred rows stay on
MKL as well: there oneDNN's per-call overhead loses.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_ROWS = 256  # below this many rows MKL's lower call overhead wins (decoding, tiny batches)

_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True for large fp32 products on CPU outside autocast and outside torch.compile (which fuses its own)."""
    return (_HAVE_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32 and weight.dtype == torch.float32
            and x.numel() >= MIN_ROWS * x.shape[-1] and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling())


def _onednn_mm_t(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x2d @ weight.T (+ bias) by oneDNN: (M, K) x (N, K) -> (M, N)."""
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


def mm_t(x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x2d @ weight.T, by whichever kernel is faster for it."""
    return _onednn_mm_t(x2d, weight) if onednn_applies(x2d, weight) else x2d @ weight.t()


def mm(x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x2d @ weight (the input gradient of a linear layer), by whichever kernel is faster for it."""
    if onednn_applies(x2d, weight):
        return _onednn_mm_t(x2d, weight.t().contiguous())  # the transposed copy is weight-sized: small
    return x2d @ weight


class _Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        y = _onednn_mm_t(x.reshape(-1, x.shape[-1]), weight, bias)
        return y.view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = mm(g, weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = g.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None  # MKL wins this one
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear; a large fp32 CPU product that autograd records (training) runs, with its backward, on oneDNN."""
    needs_grad = x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)
    if torch.is_grad_enabled() and needs_grad and onednn_applies(x, weight):
        return _Linear.apply(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """nn.Linear (same parameters, same state_dict) whose product goes through `linear`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)
