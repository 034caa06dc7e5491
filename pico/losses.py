"""Every loss in pico, as small pure functions over logits and log-probs.

- `masked_nll`: next-token cross-entropy summed over the tokens the mask selects. Pretraining uses it with
  no mask; SFT with a mask over the response tokens and EOS only.
- `dpo_loss`: Direct Preference Optimization (Rafailov et al., 2023) with conservative label smoothing
  (Mitchell, 2023), and IPO (Azar et al., 2023).
- `lm_loss`, `dpo_batch_loss`: the same math applied to a model and a batch, in the `(loss_sum, stats)`
  shape the training loop takes.

On CPU in fp32, `token_logps` and `head_nll` run the same numbers through pico/kernels.py (faster, less memory).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from pico import kernels
from pico.model import unwrap


def token_logps(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) at every position: logits (B, T, V), targets (B, T) -> (B, T), in fp32."""
    B, T, V = logits.shape
    flat, flat_targets = logits.reshape(B * T, V).float(), targets.reshape(B * T)
    nll = kernels.token_nll(flat, flat_targets) if kernels.fast_cpu(flat) else F.cross_entropy(
        flat, flat_targets, reduction="none")
    return -nll.view(B, T)


def masked_nll(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of -log p(target) over positions where mask is 1 (all positions without a mask).

    Divide by `mask.sum()` for the mean; the training loop does that over the whole optimizer step.
    """
    nll = -token_logps(logits, targets)
    return nll.sum() if mask is None else (nll * mask).sum()


def sequence_logps(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Summed log-prob of the masked (response) tokens of each row: (B, T, V) -> (B,)."""
    return (token_logps(logits, targets) * mask).sum(dim=1)


def head_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor | None = None,
             copy_terms: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_nll(hidden @ weight.T, targets, mask)` and every token's NLL (detached, 0 where masked out).

    The output layer and the loss together, so the CPU kernel never holds all (tokens x vocab) logits. With
    `copy_terms` (`GPT.copy_terms`), the NLL of the copy head's mixture g · softmax(hidden @ weight.T) + copy.
    """
    if kernels.fast_cpu(hidden, weight):
        return kernels.head_nll(hidden, weight, targets, mask, copy_terms=copy_terms)
    if hidden.device.type == "cpu" and torch.is_autocast_enabled("cpu"):  # bf16 products, fp32 softmax and sums
        return kernels.head_nll(hidden, weight, targets, mask, compute_dtype=torch.get_autocast_dtype("cpu"),
                                copy_terms=copy_terms)
    logp = token_logps(F.linear(hidden, weight), targets)
    if copy_terms is not None:
        logp = torch.logaddexp(copy_terms[0] + logp, copy_terms[1])
    nll = -logp if mask is None else -logp * mask
    return nll.sum(), nll.detach()


def model_token_logps(model: nn.Module, input_ids: torch.Tensor, targets: torch.Tensor,
                      mask: torch.Tensor | None = None) -> torch.Tensor:
    """log p(target) at every position under `model`, differentiable: (B, T) -> (B, T), in fp32.

    With a copy head: the mixture's log-prob, the vocabulary side from the logits and the copy side gathered
    (`GPT.copy_terms`). With a `mask` (0 where the log-prob is not needed) on CPU, the chunked kernel: no
    (B, T, V) logits at all, bf16 products under autocast (DPO and its evaluation use this).
    """
    base = unwrap(model)
    hidden = model(input_ids, return_hidden=True)
    copy = base.copy_terms(input_ids, hidden, targets) if getattr(base, "copy", None) is not None else None
    weight = base.head.weight
    if mask is not None and hidden.device.type == "cpu":
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else torch.float32
        return -kernels.head_token_nll(hidden, weight, targets, mask, compute_dtype=dtype, copy_terms=copy)
    logp = token_logps(base.head(hidden), targets)
    return logp if copy is None else torch.logaddexp(copy[0] + logp, copy[1])


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
    loss_type: str = "sigmoid",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair DPO loss and implicit rewards; every input is (B,) response log-probs.

    h = (π_c − ref_c) − (π_r − ref_r)
    sigmoid: −(1−ε)·log σ(β·h) − ε·log σ(−β·h)
    ipo:     (h − 1/(2β))²
    reward = β·(π − ref), for chosen and rejected.

    DPO takes log-probs summed over the response tokens. IPO takes them averaged per token (TRL and the IPO
    authors do): its target margin 1/(2β) is a fixed number, which summed log-probs would make depend on the
    stories' lengths. `dpo_batch_loss` passes whichever the loss type needs.
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
    base = unwrap(model)
    copy = base.copy_terms(batch["input_ids"], hidden, batch["targets"]) if getattr(base, "copy", None) else None
    loss, nll = head_nll(hidden, base.head.weight, batch["targets"], batch.get("loss_mask"), copy_terms=copy)
    if "target_bytes" not in batch:
        return loss, {}
    nbytes = batch["target_bytes"]
    return loss, {"nll_text": (nll * (nbytes > 0)).sum(), "bytes": nbytes.sum().float()}


def dpo_batch_loss(model: nn.Module, batch: dict, *, beta: float, label_smoothing: float = 0.0,
                   loss_type: str = "sigmoid", rpo_alpha: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DPO on a batch holding B chosen rows then B rejected rows in one (2B, T) tensor: one forward pass.

    The reference log-probs were computed once, before training (`ref_chosen`, `ref_rejected`, (B,), summed
    over `pref_mask` when the batch has one: the response tokens less those that copy a spec value);
    `n_tokens` (B, 2) gives the per-token averages IPO uses. `rpo_alpha` > 0 adds that times the chosen
    response's mean token NLL to each pair's loss (RPO, Pang et al., 2024; TRL's `rpo_alpha`): DPO can lower
    both log-probs as long as their margin grows, the NLL term keeps the chosen story likely.
    Stats use TRL's names and are sums over pairs; the loop turns them into means.
    """
    mask = batch["loss_mask"]
    token = model_token_logps(model, batch["input_ids"], batch["targets"], mask)
    pref_mask = batch.get("pref_mask", mask)  # without the tokens that copy a spec value, when they are skipped
    policy_chosen, policy_rejected = (token * pref_mask).sum(dim=1).chunk(2)
    chosen_nll = -(token * mask).sum(dim=1).chunk(2)[0] / batch["n_tokens"][:, 0]
    ref_chosen, ref_rejected = batch["ref_chosen"], batch["ref_rejected"]
    if loss_type == "ipo":  # per-token averages (see dpo_loss)
        n_chosen, n_rejected = batch["n_tokens"].unbind(1)
        policy_chosen, policy_rejected = policy_chosen / n_chosen, policy_rejected / n_rejected
        ref_chosen, ref_rejected = ref_chosen / n_chosen, ref_rejected / n_rejected
    losses, r_chosen, r_rejected = dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, beta,
                                            label_smoothing, loss_type)
    stats = {
        "rewards/chosen": r_chosen.sum(),
        "rewards/rejected": r_rejected.sum(),
        "rewards/margins": (r_chosen - r_rejected).sum(),
        "rewards/accuracies": (r_chosen > r_rejected).float().sum(),
        "logps/chosen": policy_chosen.detach().sum(),
        "logps/rejected": policy_rejected.detach().sum(),
    }
    if rpo_alpha > 0:
        losses = losses + rpo_alpha * chosen_nll
        stats["nll/chosen"] = chosen_nll.detach().sum()
    return losses.sum(), stats
