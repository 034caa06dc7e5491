"""The one training loop. Pretraining, SFT and DPO differ only in the batches and the loss they pass in.

Contract:
- `get_batch(k)` returns global micro-batch `k` (step s, micro-batch m of rank r is k = s*M + m*world + r,
  M = grad_accum*world): a dict of tensors plus `n_items`, how many items the loss sums over (tokens or
  pairs). A pure function of k, which is what makes resume exact and data parallelism a matter of indices.
- `loss_fn(model, batch)` returns `(loss_sum, stats)`: the loss *summed* over the batch's items and a dict
  of summed statistics. The loop divides by the items of the whole optimizer step, so gradient
  accumulation and data parallelism give the gradient of one big batch, whatever the padding.
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from pico.checkpoint import read_cache, to_bytes
from pico.config import TrainConfig
from pico.device import (
    autocast_for,
    dist_info,
    init_distributed,
    is_main_process,
    is_out_of_memory,
    precision_name,
    resolve_device,
    resolve_precision,
)
from pico.errors import TrainingError
from pico.io import progress_bar, write_bytes
from pico.kernels import use_fast_cpu_kernels
from pico.losses import lm_loss
from pico.model import unwrap

log = logging.getLogger(__name__)

Batch = dict[str, Any]
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = min(max(step - cfg.warmup_steps, 0) / max(total_steps - cfg.warmup_steps, 1), 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices and embeddings only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    # the fused kernel: 1.8 ms vs 4.1 ms per step for foreach on this CPU (benchmarks/README.md); usual on CUDA
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda"))


@dataclass
class TrainResult:
    train_curve: list[dict] = field(default_factory=list)  # one row per logged step
    val_curve: list[dict] = field(default_factory=list)  # one row per evaluation
    steps_done: int = 0
    best_step: int = 0
    best_val: float = float("inf")
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time in training steps only (no evals, no saves), summed over resumes
    precision: str = "fp32"  # what the steps ran in: fp32, or bf16 autocast
    stopped_early: bool = False
    resumed_from: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: list[Batch], loss_fn: LossFn, device: torch.device,
                  prefix: str = "val_", dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Item-weighted mean of the loss and of every stat over `batches` (e.g. the whole validation set)."""
    was_training = model.training
    model.eval()
    total: dict[str, torch.Tensor] = {}
    n_items = 0
    with autocast_for(device, dtype):
        for batch in batches:
            batch = to_device(batch, device)
            loss_sum, stats = loss_fn(model, batch)
            for k, v in {"loss": loss_sum, **stats}.items():
                total[k] = total.get(k, 0.0) + v.detach().float()
            n_items += batch["n_items"]
    model.train(was_training)
    return {f"{prefix}{k}": float(v) / max(n_items, 1) for k, v in total.items()}


def lm_metrics(model: nn.Module, *, batches: list[dict], device: torch.device,
               dtype: torch.dtype = torch.float32) -> dict[str, float]:
    """Loss (nats/token) and bits per byte over token windows that carry `target_bytes`."""
    m = evaluate_loss(model, batches, lm_loss, device, dtype=dtype)
    return {"val_loss": m["val_loss"], "val_bpb": m["val_nll_text"] / m["val_bytes"] / math.log(2)}


@dataclass
class BestTracker:
    """The best evaluation so far (lower is better), its weights when kept, and evaluations since."""

    keep_weights: bool
    weights: dict | None = None
    evals_since_best: int = 0

    def update(self, value: float, step: int, result: TrainResult, model: nn.Module) -> None:
        if value < result.best_val:
            result.best_val, result.best_step, self.evals_since_best = value, step, 0
            if self.keep_weights:
                self.weights = {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()}
        else:
            self.evals_since_best += 1


@dataclass
class TrainState:
    """Everything an exact resume needs: weights, optimizer, RNG, counters and curves, the best weights."""

    model: nn.Module  # the plain module (not a DDP or compile wrapper)
    optimizer: torch.optim.Optimizer
    result: TrainResult
    best: BestTracker
    device: torch.device
    dtype: torch.dtype  # autocast dtype (float32: none); weights and optimizer state stay fp32

    def save(self, path: Path, fingerprint: str) -> None:
        cuda = self.device.type == "cuda"
        write_bytes(path, to_bytes({
            "fingerprint": fingerprint, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if cuda else torch.empty(0, dtype=torch.uint8),
            "result": asdict(self.result), "best_model": self.best.weights,
            "evals_since_best": self.best.evals_since_best,
        }))

    def load(self, path: Path, fingerprint: str) -> bool:
        """Continue from a saved state of this very run (same fingerprint); False when there is none."""
        state = read_cache(path, fingerprint)
        if state is None:
            return False
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"])
        if self.device.type == "cuda" and state["cuda_rng"].numel():
            torch.cuda.set_rng_state(state["cuda_rng"])
        self.result = TrainResult(**state["result"])
        self.result.resumed_from = self.result.steps_done
        self.best.weights, self.best.evals_since_best = state["best_model"], state["evals_since_best"]
        return True


def train_step(model: nn.Module, micros: list[Batch], loss_fn: LossFn, state: TrainState, cfg: TrainConfig,
               distributed: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """One optimizer step over this rank's micro-batches: (summed stats, items of the global step, grad norm)."""
    world = dist_info()[1]
    # items weight the loss; tokens are counted over all ranks (their batches differ in length)
    counts = torch.tensor([float(sum(b["n_items"] for b in micros)), float(sum(b.get("tokens", 0) for b in micros))],
                          device=state.device, dtype=torch.float64)
    if distributed:
        dist.all_reduce(counts)
    n_items = counts[0].float()
    state.result.tokens_seen += int(counts[1])
    sums: dict[str, torch.Tensor] = {}
    for i, batch in enumerate(micros):
        batch = to_device(batch, state.device)
        sync = model.no_sync() if distributed and i < len(micros) - 1 else nullcontext()
        with sync, autocast_for(state.device, state.dtype):
            loss_sum, stats = loss_fn(model, batch)
            # DDP averages gradients over ranks; scale by world so the result is sum / global items
            (loss_sum * (world / n_items)).backward()
        for k, v in {"loss": loss_sum, **stats}.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float()
    grad_norm = (torch.nn.utils.clip_grad_norm_(state.model.parameters(), cfg.grad_clip) if cfg.grad_clip > 0
                 else torch.zeros((), device=state.device))
    state.optimizer.step()
    state.optimizer.zero_grad(set_to_none=True)
    return sums, n_items, grad_norm


def log_row(step: int, lr: float, sums: dict, n_items: torch.Tensor, grad_norm: torch.Tensor, distributed: bool,
            desc: str, resume_path: Path | None) -> dict:
    """The train-curve row of a step (means over the global step); NaN/inf stops training with a clear error."""
    if distributed:
        for v in sums.values():
            dist.all_reduce(v)
    row = {"step": step, "lr": lr, **{k: float(v) / float(n_items) for k, v in sums.items()},
           "grad_norm": float(grad_norm)}
    if not math.isfinite(row["loss"]) or not math.isfinite(row["grad_norm"]):
        kept = f" in {resume_path}" if resume_path and resume_path.is_file() else ""
        raise TrainingError(f"{desc}: loss became {row['loss']} (grad norm {row['grad_norm']}) at step {step}; lower "
                            f"the learning rate. Nothing was written; the last good state is kept{kept}")
    return row


def train(model: nn.Module, cfg: TrainConfig, *, total_steps: int, get_batch: Callable[[int], Batch],
          loss_fn: LossFn, evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
          select: str = "val_loss", keep_best: bool = False, resume_path: str | Path | None = None,
          fingerprint: str = "", desc: str = "train") -> TrainResult:
    """Train `model` in place for `total_steps` optimizer steps; return curves and counters.

    `evaluate(model)` runs every `cfg.eval_every` steps and at the end; `select` names its metric (lower is
    better) for `keep_best` (end with the best evaluation's weights) and early stopping (`cfg.patience`).
    Every `cfg.save_every` steps the full state goes to `resume_path`; a rerun with the same `fingerprint`
    continues from it exactly.
    """
    device = resolve_device(cfg.device)
    distributed = init_distributed(device)
    rank, world, _ = dist_info()
    torch.manual_seed(cfg.seed)
    use_fast_cpu_kernels(model.to(device))
    base = unwrap(model)
    dtype = resolve_precision(cfg.precision, device)
    state = TrainState(base, make_optimizer(base, cfg, device), TrainResult(), BestTracker(keep_best), device, dtype)
    resume_path = Path(resume_path) if resume_path else None
    if resume_path and state.load(resume_path, fingerprint):
        log.info("%s: resuming from step %d (%s)", desc, state.result.steps_done, resume_path)
    result = state.result
    result.precision = precision_name(dtype)
    if cfg.compile and device.type == "cuda":
        model = torch.compile(model)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    model.train()
    per_step = cfg.grad_accum * world
    bar = progress_bar(total=total_steps, initial=result.steps_done, desc=desc, disable=not is_main_process(),
                       leave=False)
    step = result.steps_done
    while step < total_steps and not result.stopped_early:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg, total_steps)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        micros = [get_batch(step * per_step + m * world + rank) for m in range(cfg.grad_accum)]
        try:
            sums, n_items, grad_norm = train_step(model, micros, loss_fn, state, cfg, distributed)
        except RuntimeError as e:  # what the batch-size estimate let through: still one line naming the knob
            if not is_out_of_memory(e):
                raise
            raise TrainingError(f"{desc}: out of memory at step {step + 1} with {desc}.batch_size {cfg.batch_size}; "
                                f"lower it (raise {desc}.grad_accum to keep the batch)") from None
        step = result.steps_done = step + 1
        if device.type == "cuda" and step % cfg.log_every == 0:
            torch.cuda.synchronize()
        result.train_seconds += time.perf_counter() - t0
        is_last = step == total_steps
        if is_last or any(step % every == 0 for every in (cfg.log_every, cfg.save_every, cfg.eval_every)):
            row = log_row(step, lr, sums, n_items, grad_norm, distributed, desc, resume_path)
            if step % cfg.log_every == 0 or is_last:
                result.train_curve.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        if evaluate is not None and (step % cfg.eval_every == 0 or is_last):
            metrics = evaluate(base)
            result.val_curve.append({"step": step, **metrics})
            if not math.isfinite(metrics[select]):
                raise TrainingError(f"{desc}: {select} is {metrics[select]} at step {step}; lower the learning rate")
            state.best.update(metrics[select], step, result, base)
            if cfg.patience and state.best.evals_since_best >= cfg.patience:
                result.stopped_early = True
                log.info("%s: early stop at step %d, best %s %.4f at step %d", desc, step, select,
                         result.best_val, result.best_step)
        if resume_path and step % cfg.save_every == 0 and not is_last and is_main_process():
            state.save(resume_path, fingerprint)
        bar.update(1)
    bar.close()
    if keep_best and state.best.weights is not None:
        base.load_state_dict(state.best.weights)
    return result
