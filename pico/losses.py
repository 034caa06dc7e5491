"""Every loss in pico, as small pure functions over logits and log-probs.

- `masked_nll`: next-token cross-entropy summed over the tokens the mask selects. Pretraining uses it with
  no mask; SFT with a mask over the response tokens and EOS only.
- `linear_masked_nll`: the same number computed from the hidden states and the output layer, in row
  chunks, so the (tokens x vocab) logits never exist at once (on CPU; the training path of `lm_loss`).
- `dpo_loss`: Direct Preference Optimization (Rafailov et al., 2023) with conservative label smoothing
  (Mitchell, 2023), and IPO (Azar et al., 2023).
- `lm_loss`, `dpo_batch_loss`: the same math applied to a model and a batch, in the `(loss_sum, stats)`
  shape the training loop takes.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pico.kernels import mm_t
from pico.model import unwrap


class _TokenNLL(torch.autograd.Function):
    """-log softmax(logits)[target] per row, with a fused backward: softmax - onehot, written once.

    Same numbers as F.cross_entropy(reduction="none"), but it stores no log-softmax copy and does not
    zero-fill a gradient buffer; rows go in cache-sized chunks. 1.5x faster than the native pair on CPU
    for 4096x4096 logits (benchmarks/README.md).
    """

    CHUNK = 256

    @staticmethod
    def forward(ctx, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:  # (N, V), (N,) -> (N,)
        lse = torch.empty(logits.shape[0], dtype=logits.dtype, device=logits.device)
        for s in range(0, logits.shape[0], _TokenNLL.CHUNK):
            lse[s : s + _TokenNLL.CHUNK] = torch.logsumexp(logits[s : s + _TokenNLL.CHUNK], dim=-1)
        ctx.save_for_backward(logits, targets, lse)
        return lse - logits.gather(1, targets.unsqueeze(1)).squeeze(1)

    @staticmethod
    def backward(ctx, grad_nll: torch.Tensor):
        logits, targets, lse = ctx.saved_tensors
        grad = torch.empty_like(logits)
        for s in range(0, logits.shape[0], _TokenNLL.CHUNK):
            out = grad[s : s + _TokenNLL.CHUNK]
            torch.sub(logits[s : s + _TokenNLL.CHUNK], lse[s : s + _TokenNLL.CHUNK, None], out=out)
            out.exp_().mul_(grad_nll[s : s + _TokenNLL.CHUNK, None])  # softmax * upstream grad
        grad[torch.arange(logits.shape[0], device=logits.device), targets] -= grad_nll
        return grad, None


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position: logits (B, T, V), targets (B, T) -> (B, T), in fp32."""
    B, T, V = logits.shape
    return -_TokenNLL.apply(logits.reshape(B * T, V).float(), targets.reshape(B * T)).view(B, T)


def masked_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of -log p(target) over positions where mask is 1 (all positions without a mask).

    Divide by `mask.sum()` for the mean; the training loop does that over the whole optimizer step.
    """
    nll = -token_logps(logits, targets)
    return nll.sum() if mask is None else (nll * mask).sum()


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of the masked (response) tokens of each row: (B, T, V) -> (B,)."""
    return (token_logps(logits, targets) * mask).sum(dim=1)


_CHUNK_LOGITS = 1 << 21  # logits per chunk: 8 MB of fp32, stays in cache


def _chunked_linear_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                        weights: torch.Tensor | None, with_grad: bool):
    """Σ w_i · −log softmax(h_i Wᵀ)[t_i] over rows in chunks, and each row's NLL; with `with_grad`, also d/dh
    and d/dW of the sum.

    The gradient of the sum w.r.t. chunk logits is w_i · (softmax − onehot): it needs nothing but the chunk,
    so it is formed in place in the chunk's logits and multiplied out at once (Liger-Kernel's fused linear
    cross-entropy does the same on GPUs). hidden (N, d), weight (V, d), targets (N,), weights (N,) or None.
    """
    N, V = hidden.shape[0], weight.shape[0]
    chunk = max(1, _CHUNK_LOGITS // V)
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    row_nll = torch.empty(N, dtype=torch.float32, device=hidden.device)
    grad_h = torch.empty_like(hidden) if with_grad else None
    grad_w = torch.zeros_like(weight) if with_grad else None
    weight_t = weight.t().contiguous() if with_grad else None  # d/dh = G @ W = mm_t(G, Wᵀ)
    for s in range(0, N, chunk):
        h, t = hidden[s : s + chunk], targets[s : s + chunk]
        w = weights[s : s + chunk] if weights is not None else None
        z = mm_t(h, weight) if with_grad else h @ weight.t()  # (n, V) logits; oneDNN for training only
        target_logit = z.gather(1, t.unsqueeze(1)).squeeze(1)
        zmax = z.amax(dim=1, keepdim=True)
        z.sub_(zmax).exp_()
        sumexp = z.sum(dim=1, keepdim=True)
        nll = (zmax + sumexp.log()).squeeze(1) - target_logit
        row_nll[s : s + chunk] = nll
        total += nll.sum() if w is None else (nll * w).sum()
        if with_grad:
            scale = sumexp.reciprocal_()
            if w is not None:
                scale.mul_(w.unsqueeze(1))
            z.mul_(scale)  # w · softmax
            minus_w = -w if w is not None else torch.full_like(nll, -1.0)
            z.scatter_add_(1, t.unsqueeze(1), minus_w.unsqueeze(1))  # w · (softmax − onehot)
            grad_h[s : s + chunk] = mm_t(z, weight_t)
            grad_w.addmm_(z.t(), h)
    return total, row_nll, grad_h, grad_w


class _LinearMaskedNLL(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, weights):
        total, row_nll, grad_h, grad_w = _chunked_linear_nll(hidden, weight, targets, weights, with_grad=True)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.mark_non_differentiable(row_nll)
        return total, row_nll

    @staticmethod
    def backward(ctx, grad_total, _grad_row_nll):
        grad_h, grad_w = ctx.saved_tensors
        return grad_h * grad_total, grad_w * grad_total, None, None


def linear_masked_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                      mask: torch.Tensor | None = None, *, token_nll: bool = False):
    """`masked_nll(hidden @ weight.T, targets, mask)`, without holding the full logits.

    With `token_nll` it returns `(loss, nll)`: also every token's NLL, detached, shaped like `targets`, 0 where
    the mask is 0 (statistics such as bits per byte come from the same pass).

    hidden (B, T, d) or (N, d), weight (V, d) the output layer. On CPU in fp32 the product and the loss run
    in row chunks, rows the mask leaves out are skipped (SFT's prompt tokens and padding), and the gradient
    is formed in the same pass: 1.35x faster than logits + `masked_nll` here (`benchmarks/cpu_kernels.py`), no
    (tokens x vocab) buffers. Elsewhere (CUDA autocast, bf16) it is the plain product and `masked_nll`.
    """
    if not (hidden.device.type == "cpu" and hidden.dtype == weight.dtype == torch.float32
            and not torch.is_autocast_enabled("cpu")):
        nll = -token_logps(F.linear(hidden, weight), targets)
        if mask is not None:
            nll = nll * mask
        return (nll.sum(), nll.detach()) if token_nll else nll.sum()
    shape = targets.shape
    hidden, targets = hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1)
    weights = rows = None
    if mask is not None:
        rows = mask.reshape(-1).nonzero().squeeze(1)
        weights = mask.reshape(-1)[rows].to(torch.float32)
        hidden, targets = hidden.index_select(0, rows), targets[rows]
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        loss, row_nll = _LinearMaskedNLL.apply(hidden, weight, targets, weights)
    else:
        loss, row_nll = _chunked_linear_nll(hidden, weight, targets, weights, with_grad=False)[:2]
    if not token_nll:
        return loss
    if rows is not None:
        row_nll = torch.zeros(shape.numel(), dtype=row_nll.dtype, device=row_nll.device).index_copy_(0, rows, row_nll)
    return loss, row_nll.view(shape)


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and implicit rewards; every input is (B,) summed response log-probs.

    h = (π_c − ref_c) − (π_r − ref_r)
    sigmoid: −(1−ε)·log σ(β·h) − ε·log σ(−β·h)
    ipo:     (h − 1/(2β))²
    reward = β·(π − ref), for chosen and rejected.
    """
    h = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        losses = (h - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r} (sigmoid or ipo)")
    rewards_chosen = beta * (policy_chosen - ref_chosen).detach()
    rewards_rejected = beta * (policy_rejected - ref_rejected).detach()
    return losses, rewards_chosen, rewards_rejected


# ----------------------------------------------------------------------------------------------- on batches
def lm_loss(model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Next-token loss of a pretraining or SFT batch: input_ids/targets (B, T), optional loss_mask (B, T).

    With `target_bytes` (pretraining batches) it also sums what bits-per-byte needs, from the same pass: the
    NLL of text tokens (special tokens have no bytes and are left out, as nanochat does; so are tokens a
    loss_mask leaves out) and their byte count.
    """
    hidden = model(batch["input_ids"], return_hidden=True)
    head = unwrap(model).head  # bias-free in every pico model
    stats: dict[str, torch.Tensor] = {}
    if "target_bytes" not in batch:
        return linear_masked_nll(hidden, head.weight, batch["targets"], batch.get("loss_mask")), stats
    loss, nll = linear_masked_nll(hidden, head.weight, batch["targets"], batch.get("loss_mask"), token_nll=True)
    nbytes = batch["target_bytes"]
    stats["nll_text"] = (nll * (nbytes > 0)).sum()
    stats["bytes"] = nbytes.sum().float()
    return loss, stats


def dpo_batch_loss(model: nn.Module, batch: dict, *, beta: float, label_smoothing: float = 0.0,
                   loss_type: str = "sigmoid") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO on a batch holding B chosen rows then B rejected rows in one (2B, T) tensor: one forward pass.

    The reference log-probs were computed once, before training (`ref_chosen`, `ref_rejected`, (B,)).
    Stats use TRL's names and are sums over pairs; the loop turns them into means.
    """
    logits = model(batch["input_ids"])
    logps = sequence_logps(logits, batch["targets"], batch["loss_mask"])
    policy_chosen, policy_rejected = logps.chunk(2)
    losses, r_chosen, r_rejected = dpo_loss(policy_chosen, policy_rejected, batch["ref_chosen"],
                                            batch["ref_rejected"], beta, label_smoothing, loss_type)
    stats = {
        "rewards/chosen": r_chosen.sum(),
        "rewards/rejected": r_rejected.sum(),
        "rewards/margins": (r_chosen - r_rejected).sum(),
        "rewards/accuracies": (r_chosen > r_rejected).float().sum(),
        "logps/chosen": policy_chosen.detach().sum(),
        "logps/rejected": policy_rejected.detach().sum(),
    }
    return losses.sum(), stats
