"""The fast CPU path: the same math as pico/losses.py and nn.Linear, in kernels that run faster on CPU.

Model and losses are written in plain PyTorch; this module substitutes three things, all full fp32, so
results agree with the plain path to float rounding (tests/test_kernels.py checks values and gradients):

- `FastLinear`: nn.Linear (same parameters and state_dict) whose training products go to oneDNN. On the AMD
  EPYC this project is measured on, oneDNN's fp32 matmul runs the forward `x @ W.T` and the input gradient
  `g @ W` 1.1-1.4x faster than MKL's sgemm; MKL stays faster for the weight gradient (benchmarks/cpu_kernels.py).
  Only products autograd records use it: oneDNN keeps state per shape, and generation's ever-changing shapes
  kept 148 MB more after 1,000 prompts (benchmarks/load_memory.py). `use_fast_cpu_kernels(model)` switches a
  model's linears over; the training loop calls it.
- `token_nll`: -log softmax(logits)[target] per row with a fused backward (softmax - onehot, written once):
  1.5x faster than the native cross-entropy pair for 4096x4096 logits.
- `head_nll`: output layer + NLL in cache-sized row chunks with the gradient formed in the same pass, rows the
  mask drops skipped: the (tokens x vocab) logits never exist at once; 1.35x faster than logits + NLL.

`losses.py` asks `fast_cpu(x)` once per call and takes these kernels where it is true.

- `masked_logsumexp`: the copy head's `x.masked_fill(~mask, fill).logsumexp(-1)`, bit-identical in values and
  gradients, without exp of the filled entries (MKL's slow underflow path). Same numbers on every device, so
  the model calls it everywhere.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

MIN_ROWS = 256  # below this many rows MKL's lower call overhead wins (decoding, tiny batches)
TOKEN_CHUNK = 256  # rows per logsumexp chunk in token_nll
HEAD_CHUNK_LOGITS = 1 << 21  # logits per chunk in head_nll: 8 MB of fp32, stays in cache

_HAVE_ONEDNN = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def fast_cpu(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """True for fp32 CPU tensors outside autocast: where this module's kernels apply."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 for t in (x, *others))
            and not torch.is_autocast_enabled("cpu"))


# ----------------------------------------------------------------------------------------------- linear layers
def _onednn_applies(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (_HAVE_ONEDNN and fast_cpu(x, weight) and x.numel() >= MIN_ROWS * x.shape[-1]
            and not torch.compiler.is_compiling())


def _onednn_mm_t(x2d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x2d @ weight.T (+ bias) by oneDNN: (M, K) x (N, K) -> (M, N)."""
    return torch.ops.mkldnn._linear_pointwise(x2d, weight, bias, "none", [], "")


def mm_t(x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x2d @ weight.T, by whichever kernel is faster for it."""
    return _onednn_mm_t(x2d, weight) if _onednn_applies(x2d, weight) else x2d @ weight.t()


def _mm(x2d: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """x2d @ weight (a linear layer's input gradient), by whichever kernel is faster for it."""
    if _onednn_applies(x2d, weight):
        return _onednn_mm_t(x2d, weight.t().contiguous())  # the transposed copy is weight-sized: small
    return x2d @ weight


class _OneDNNLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn_mm_t(x.reshape(-1, x.shape[-1]), weight, bias).view(*x.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        x, weight = ctx.saved_tensors
        g = grad_y.reshape(-1, grad_y.shape[-1])
        grad_x = _mm(g, weight).view(x.shape) if ctx.needs_input_grad[0] else None
        grad_w = g.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None  # MKL wins this one
        grad_b = g.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class FastLinear(nn.Linear):
    """nn.Linear whose large fp32 CPU products that autograd records (training) run on oneDNN."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        needs_grad = x.requires_grad or self.weight.requires_grad
        if torch.is_grad_enabled() and needs_grad and _onednn_applies(x, self.weight):
            return _OneDNNLinear.apply(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_fast_cpu_kernels(model: nn.Module) -> nn.Module:
    """Switch every nn.Linear of `model` to FastLinear in place (same parameters, same state_dict)."""
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = FastLinear
    return model


# ----------------------------------------------------------------------------------------------- token NLL
class _TokenNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (N, V), (N,) -> (N,)
        lse = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for s in range(0, logits.shape[0], TOKEN_CHUNK):
            lse[s : s + TOKEN_CHUNK] = torch.logsumexp(logits[s : s + TOKEN_CHUNK], dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return lse - logits.gather(1, targets.unsqueeze(1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], TOKEN_CHUNK):
            out = grad[s : s + TOKEN_CHUNK]
            torch.sub(logits[s : s + TOKEN_CHUNK], lse[s : s + TOKEN_CHUNK, None], out=out)
            out.exp_().mul_(grad_nll[s : s + TOKEN_CHUNK, None])  # softmax * upstream grad
        grad[torch.arange(logits.shape[0], device=logits.device), targets] -= grad_nll
        return grad, None


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy(logits, targets, reduction="none") for (N, V) logits, with a fused backward."""
    return _TokenNLL.apply(logits, targets)


# ----------------------------------------------------------------------------------------------- masked logsumexp
class _MaskedLogSumExp(torch.autograd.Function):
    """`x.masked_fill(~mask, fill).logsumexp(-1)`, bit for bit in values and gradients (torch's own formula:
    m = amax, log(sum(exp(x - m))) + m; backward grad * exp(x - result), zero where masked), without taking exp
    of the filled entries. Those are far below their row's maximum, and MKL's exp takes a slow path for
    arguments whose result underflows: the copy head's causal and match masks made its two logsumexps 4-8x
    slower than unmasked ones (14.9 against 3.0 ms at B8 T512; RESEARCH.md finding 30). exp(fill - m) is the
    same number for every filled entry of a row (0, or 1 in a row with nothing unmasked), so it is taken once
    per row and put in their place."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
        filled = x.masked_fill(~mask, fill)
        m = filled.amax(dim=-1, keepdim=True)
        m.masked_fill_(m.abs() == math.inf, 0)
        per_row = (fill - m).exp()  # (..., 1): what exp(filled - m) is at a filled entry
        e = torch.where(mask, (filled - m).masked_fill_(~mask, 0).exp_(), per_row)
        result = e.sum(dim=-1).log_().add_(m.squeeze(-1))
        ctx.save_for_backward(x, mask, result)
        return result

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, mask, result = ctx.saved_tensors
        shifted = (x - result.unsqueeze(-1)).masked_fill_(~mask, 0)  # masked entries' gradient is zeroed below
        return (grad.unsqueeze(-1) * shifted.exp_()).masked_fill_(~mask, 0), None, None


def masked_logsumexp(x: torch.Tensor, mask: torch.Tensor, fill: float) -> torch.Tensor:
    """logsumexp over the last dim of `x` with the entries where `mask` is False replaced by `fill` (finite)."""
    return _MaskedLogSumExp.apply(x, mask, fill)


# ----------------------------------------------------------------------------------------------- output layer + NLL
def _chunked_head_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      row_scale: torch.Tensor | None, with_grad: bool, chunk_logits: int,
                      compute_dtype: torch.dtype = torch.float32, mix: tuple | None = None):
    """Σ s_i · −log p_i(t_i) over rows in chunks, and each row's NLL; with `with_grad`, also the gradients of the
    sum w.r.t. hidden and weight (and the mixture terms).

    p_i = softmax(h_i Wᵀ), or with `mix` = (log_g, log_c), each (N,), the copy head's mixture
    p_i(t) = g_i · softmax(h_i Wᵀ)[t] + c_i, log c_i the copy mass on the target (`GPT.copy_terms`).
    With r_i = g_i · softmax[t_i] / p_i (the vocabulary side's share of the target's probability), the gradient
    w.r.t. a chunk's logits is s_i · r_i · (softmax − onehot): it needs nothing but the chunk, so it is formed in
    place in the chunk's logits and multiplied out at once (Liger-Kernel's fused linear cross-entropy does the
    same on GPUs); d/dlog_g = −s·r and d/dlog_c = −s·(1 − r). hidden (N, d), weight (V, d), targets (N,),
    row_scale (N,). With `compute_dtype` bf16 the products run in bf16 (each operand converted once);
    log-softmax, the loss, the sums and the weight gradient's accumulation stay fp32.
    """
    N, V = hidden.shape[0], weight.shape[0]
    bf16 = compute_dtype != torch.float32
    chunk = max(1, chunk_logits // V)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    row_nll = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty(hidden.shape, dtype=compute_dtype if bf16 else hidden.dtype) if with_grad else None
    grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if with_grad else None
    grad_mix = (torch.empty(N, dtype=torch.float32, device=hidden.device),
                torch.empty(N, dtype=torch.float32, device=hidden.device)) if with_grad and mix is not None else None
    hidden_dtype = hidden.dtype
    if bf16:
        hidden, w = hidden.to(compute_dtype), weight.to(compute_dtype)
    else:
        w = weight
    weight_t = w.t().contiguous() if with_grad and not bf16 else None  # fp32: d/dh = G @ W = mm_t(G, Wᵀ)
    for s in range(0, N, chunk):
        h, t = hidden[s : s + chunk], targets[s : s + chunk]
        r = row_scale[s : s + chunk] if row_scale is not None else None
        if bf16:
            z = (h @ w.t()).float()  # (n, V) logits in fp32 from bf16 products
        else:
            z = mm_t(h, w) if with_grad else h @ w.t()  # oneDNN for training only
        target_logit = z.gather(1, t.unsqueeze(1)).squeeze(1)
        zmax = z.amax(dim=1, keepdim=True)
        z.sub_(zmax).exp_()
        sumexp = z.sum(dim=1, keepdim=True)
        nll = (zmax + sumexp.log()).squeeze(1) - target_logit  # −log softmax[t]
        share = None
        if mix is not None:
            log_vocab = mix[0][s : s + chunk] - nll  # log g + log softmax[t]
            log_p = torch.logaddexp(log_vocab, mix[1][s : s + chunk])
            share, nll = (log_vocab - log_p).exp(), -log_p
        row_nll[s : s + chunk] = nll
        total += nll.sum() if r is None else (nll * r).sum()
        if with_grad:
            scale = torch.ones_like(nll) if r is None else r  # (n,) upstream weight of each row
            if share is not None:
                grad_mix[0][s : s + chunk] = -scale * share
                grad_mix[1][s : s + chunk] = -scale * (1 - share)
                scale = scale * share
            z.mul_(sumexp.reciprocal_().mul_(scale.unsqueeze(1)))  # s · r · softmax
            z.scatter_add_(1, t.unsqueeze(1), -scale.unsqueeze(1))  # s · r · (softmax − onehot)
            if bf16:
                g = z.to(compute_dtype)
                torch.mm(g, w, out=grad_h[s : s + chunk])
                grad_w += g.t() @ h  # a bf16 product added into the fp32 sum
            else:
                grad_h[s : s + chunk] = mm_t(z, weight_t)
                grad_w.addmm_(z.t(), h)
    if with_grad and bf16:
        grad_h = grad_h.to(hidden_dtype)
    return total, row_nll, grad_h, grad_w, grad_mix


class _HeadNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, row_scale, chunk_logits, compute_dtype, log_g, log_c):
        mix = (log_g.detach(), log_c.detach()) if log_g is not None else None
        total, row_nll, grad_h, grad_w, grad_mix = _chunked_head_nll(hidden, weight, targets, row_scale, True,
                                                                     chunk_logits, compute_dtype, mix)
        ctx.save_for_backward(grad_h, grad_w, *(grad_mix or ()))
        ctx.mark_non_differentiable(row_nll)
        return total, row_nll

    @staticmethod
    def backward(ctx, grad_total, _grad_row_nll):
        grad_h, grad_w, *grad_mix = ctx.saved_tensors
        grad_g, grad_c = (g * grad_total for g in grad_mix) if grad_mix else (None, None)
        return grad_h * grad_total, grad_w * grad_total, None, None, None, None, grad_g, grad_c


class _HeadTokenNLL(torch.autograd.Function):
    """Each row's NLL, differentiable row by row (DPO weights rows by a function of their sums): the forward
    keeps no logits, the backward forms them again in chunks with the upstream gradient as the rows' scale."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_logits, compute_dtype, log_g, log_c):
        mix = (log_g.detach(), log_c.detach()) if log_g is not None else None
        row_nll = _chunked_head_nll(hidden, weight, targets, None, False, chunk_logits, compute_dtype, mix)[1]
        ctx.save_for_backward(hidden, weight, targets, *(mix or ()))
        ctx.settings = (chunk_logits, compute_dtype)
        return row_nll

    @staticmethod
    def backward(ctx, grad_row_nll):
        hidden, weight, targets, *mix = ctx.saved_tensors
        _, _, grad_h, grad_w, grad_mix = _chunked_head_nll(hidden, weight, targets, grad_row_nll.float().contiguous(),
                                                           True, *ctx.settings, tuple(mix) if mix else None)
        grad_g, grad_c = grad_mix if grad_mix else (None, None)
        return grad_h, grad_w, None, None, None, grad_g, grad_c


def head_token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor,
                   chunk_logits: int = HEAD_CHUNK_LOGITS, compute_dtype: torch.dtype = torch.float32,
                   copy_terms: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Every token's NLL of `hidden @ weight.T` (or of the copy mixture), (B, T) in fp32, 0 where `mask` is 0,
    differentiable token by token: what DPO's summed log-probs need, without the (B, T, V) logits."""
    shape = targets.shape
    rows = mask.reshape(-1).nonzero().squeeze(1)
    hidden, sel_targets = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows), targets.reshape(-1)[rows]
    log_g = log_c = None
    if copy_terms is not None:
        log_g, log_c = (t.reshape(-1).float().index_select(0, rows) for t in copy_terms)
    with torch.autocast(hidden.device.type, enabled=False):
        row_nll = _HeadTokenNLL.apply(hidden, weight, sel_targets, chunk_logits, compute_dtype, log_g, log_c)
    full = torch.zeros(shape.numel(), dtype=row_nll.dtype, device=row_nll.device)
    return full.index_copy(0, rows, row_nll).view(shape)


def head_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
             chunk_logits: int = HEAD_CHUNK_LOGITS, compute_dtype: torch.dtype = torch.float32,
             copy_terms: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(Σ mask · NLL of `hidden @ weight.T`, every token's NLL detached, 0 where the mask is 0), in row chunks.

    hidden (B, T, d), weight (V, d), targets and mask (B, T). Rows the mask leaves out (SFT's prompt tokens,
    padding) are skipped; with autograd on, the gradient is formed in the same pass. `compute_dtype` bf16: the
    products in bf16 (autocast's choice for linear layers), log-softmax and sums in fp32. `copy_terms`
    (log_g, log_c), each (B, T): the NLL of the copy head's mixture instead (`_chunked_head_nll`).
    """
    shape = targets.shape
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    log_g, log_c = (t.reshape(-1).float() for t in copy_terms) if copy_terms is not None else (None, None)
    row_scale = rows = None
    if mask is not None:
        rows = mask.reshape(-1).nonzero().squeeze(1)
        row_scale = mask.reshape(-1)[rows].to(torch.float32)
        hidden, targets = hidden.index_select(0, rows), targets[rows]
        if log_g is not None:
            log_g, log_c = log_g.index_select(0, rows), log_c.index_select(0, rows)
    needs_grad = hidden.requires_grad or weight.requires_grad or (log_g is not None and log_g.requires_grad)
    with torch.autocast(hidden.device.type, enabled=False):  # the dtypes here are chosen above, not by autocast
        if torch.is_grad_enabled() and needs_grad:
            loss, row_nll = _HeadNLL.apply(hidden, weight, targets, row_scale, chunk_logits, compute_dtype,
                                           log_g, log_c)
        else:
            mix = (log_g, log_c) if log_g is not None else None
            loss, row_nll = _chunked_head_nll(hidden, weight, targets, row_scale, False, chunk_logits,
                                              compute_dtype, mix)[:2]
    if rows is not None:
        row_nll = torch.zeros(shape.numel(), dtype=row_nll.dtype, device=row_nll.device).index_copy_(0, rows, row_nll)
    return loss, row_nll.view(shape)
