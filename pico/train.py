"""The one training loop. Pretraining, SFT and DPO differ only in the batches and the loss they pass in.

Contract:
- `get_batch(step, micro)` returns the micro-batch `micro` of optimizer step `step`: a dict of tensors
  plus `weight` (how many items the loss sums over: tokens, or pairs). It must be a pure function of its
  arguments, which is what makes resume exact and DDP a matter of handing out micro indices.
- `loss_fn(model, batch)` returns `(loss_sum, stats)`: the loss *summed* over the batch's items and a dict
  of summed statistics. The loop divides by the weight of the whole optimizer step, so gradient
  accumulation and data parallelism give the gradient of one big batch, whatever the padding.
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn as nn

from pico.checkpoint import read_payload_file, to_bytes
from pico.config import TrainConfig
from pico.errors import PicoError, TrainingError
from pico.io import progress_bar, write_bytes
from pico.model import unwrap

log = logging.getLogger(__name__)

Batch = dict[str, Any]
LossFn = Callable[[nn.Module, Batch], tuple[torch.Tensor, dict[str, torch.Tensor]]]


# ----------------------------------------------------------------------------------------------- devices
def resolve_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", dist_info()[2])
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PicoError("device 'cuda' was asked for but no CUDA GPU is available; set device: auto or cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise PicoError("device 'mps' was asked for but MPS is not available; set device: auto or cpu")
    if name == "cuda":
        return torch.device("cuda", dist_info()[2])
    return torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full fp32 elsewhere (CPU bf16 is slower and changes results)."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def init_distributed(device: torch.device) -> bool:
    """Start the process group when launched by torchrun with more than one process (NCCL on GPU, gloo on CPU)."""
    _, world, local_rank = dist_info()
    if world <= 1:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True


def is_main_process() -> bool:
    return dist_info()[0] == 0


# ----------------------------------------------------------------------------------------------- schedule, optimizer
def lr_at(step: int, cfg: TrainConfig, total_steps: int) -> float:
    """Linear warmup to cfg.lr, then cosine decay to cfg.lr * cfg.min_lr_ratio at the last step."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(total_steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    min_lr = cfg.lr * cfg.min_lr_ratio
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - min_lr)


def make_optimizer(model: nn.Module, cfg: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW with decoupled weight decay on matrices and embeddings only (not on norms and biases)."""
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # the fused kernel: 1.8 ms vs 4.1 ms per step for foreach on this CPU (benchmarks/README.md); usual on CUDA
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type in ("cpu", "cuda"))


# ----------------------------------------------------------------------------------------------- results
@dataclass
class TrainResult:
    train_curve: list[dict] = field(default_factory=list)  # one row per logged step
    val_curve: list[dict] = field(default_factory=list)  # one row per evaluation
    steps_done: int = 0
    best_step: int = 0
    best_val: float = float("inf")
    tokens_seen: int = 0
    train_seconds: float = 0.0  # time in training steps only (no evals, no saves), summed over resumes
    stopped_early: bool = False
    resumed_from: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens_seen / self.train_seconds if self.train_seconds > 0 else 0.0


def _to_device(batch: Batch, device: torch.device) -> Batch:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: list[Batch], loss_fn: LossFn, device: torch.device,
                  prefix: str = "val_") -> dict[str, float]:
    """Weighted mean of the loss and of every stat over `batches` (e.g. the whole validation set)."""
    was_training = model.training
    model.eval()
    total: dict[str, torch.Tensor] = {}
    weight = 0
    with autocast_for(device):
        for batch in batches:
            batch = _to_device(batch, device)
            loss_sum, stats = loss_fn(model, batch)
            for k, v in {"loss": loss_sum, **stats}.items():
                total[k] = total.get(k, 0.0) + v.detach().float()
            weight += batch["weight"]
    model.train(was_training)
    return {f"{prefix}{k}": float(v) / max(weight, 1) for k, v in total.items()}


# ----------------------------------------------------------------------------------------------- the loop
def train(
    model: nn.Module,
    cfg: TrainConfig,
    *,
    total_steps: int,
    get_batch: Callable[[int, int], Batch],
    loss_fn: LossFn,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    select: str = "val_loss",
    keep_best: bool = False,
    resume_path: str | Path | None = None,
    fingerprint: str = "",
    desc: str = "train",
) -> TrainResult:
    """Train `model` in place for `total_steps` optimizer steps; return curves and counters.

    `evaluate(model)` runs every `cfg.eval_every` steps and at the end; `select` names the metric (lower is
    better) for `keep_best` and early stopping (`cfg.patience`). With `keep_best`, the model ends with the
    weights of its best evaluation. Every `cfg.save_every` steps the full state (weights, optimizer, RNG,
    curves) goes to `resume_path`; a rerun with the same `fingerprint` continues from it exactly.
    """
    device = resolve_device(cfg.device)
    distributed = init_distributed(device)
    rank, world, _ = dist_info()
    torch.manual_seed(cfg.seed)
    model.to(device)
    base = unwrap(model)
    optimizer = make_optimizer(base, cfg, device)
    result = TrainResult()
    best_state: dict | None = None
    evals_since_best = 0
    resume_path = Path(resume_path) if resume_path else None

    if resume_path and resume_path.is_file():
        state = _load_resume(resume_path, fingerprint)
        if state is not None:
            base.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            torch.set_rng_state(state["rng"])
            if device.type == "cuda" and state["cuda_rng"].numel():
                torch.cuda.set_rng_state(state["cuda_rng"])
            result = TrainResult(**state["result"])
            result.resumed_from = result.steps_done
            best_state = state.get("best_model")
            evals_since_best = state["evals_since_best"]
            log.info("%s: resuming from step %d (%s)", desc, result.steps_done, resume_path)

    train_model: nn.Module = model
    if cfg.compile and device.type == "cuda":
        train_model = torch.compile(model)
    if distributed:
        train_model = nn.parallel.DistributedDataParallel(train_model, device_ids=[device.index] if device.type == "cuda" else None)

    def save_resume() -> None:
        if resume_path is None or not is_main_process():
            return
        state = {
            "fingerprint": fingerprint,
            "model": base.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state() if device.type == "cuda" else torch.empty(0, dtype=torch.uint8),
            "result": asdict(result),
            "best_model": best_state,
            "evals_since_best": evals_since_best,
        }
        write_bytes(resume_path, to_bytes(state))

    def run_eval(step: int) -> bool:
        """Evaluate, track the best; return True when patience has run out."""
        nonlocal best_state, evals_since_best
        if evaluate is None:
            return False
        metrics = evaluate(base)
        row = {"step": step, **metrics}
        result.val_curve.append(row)
        value = metrics[select]
        if not math.isfinite(value):
            raise TrainingError(f"{desc}: {select} is {value} at step {step}; lower the learning rate. The last "
                                f"good state is kept in {resume_path}")
        if value < result.best_val:
            result.best_val, result.best_step, evals_since_best = value, step, 0
            if keep_best:
                best_state = {k: v.detach().to("cpu").clone() for k, v in base.state_dict().items()}
        else:
            evals_since_best += 1
        return bool(cfg.patience) and evals_since_best >= cfg.patience

    model.train()
    micro_per_rank = cfg.grad_accum
    bar = progress_bar(total=total_steps, initial=result.steps_done, desc=desc, disable=not is_main_process(),
                       leave=False)
    step = result.steps_done
    while step < total_steps and not result.stopped_early:
        t0 = time.perf_counter()
        lr = lr_at(step, cfg, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # every rank takes its own micro-batches of this step; all of them together form the global batch
        micros = [get_batch(step, m * world + rank) for m in range(micro_per_rank)]
        weight = torch.tensor(float(sum(b["weight"] for b in micros)), device=device)
        if distributed:
            dist.all_reduce(weight)
        sums: dict[str, torch.Tensor] = {}
        for i, batch in enumerate(micros):
            batch = _to_device(batch, device)
            sync = nullcontext() if (not distributed or i == len(micros) - 1) else train_model.no_sync()
            with sync, autocast_for(device):
                loss_sum, stats = loss_fn(train_model, batch)
                # DDP averages gradients over ranks; scale by world so the result is sum / global weight
                (loss_sum * (world / weight)).backward()
            for k, v in {"loss": loss_sum, **stats}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float()
            result.tokens_seen += int(batch.get("tokens", 0)) * world
        if cfg.grad_clip > 0:
            grad_norm = torch.nn.utils.clip_grad_norm_(base.parameters(), cfg.grad_clip)
        else:
            grad_norm = torch.zeros((), device=device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        result.steps_done = step
        if device.type == "cuda" and (step % cfg.log_every == 0):
            torch.cuda.synchronize()
        result.train_seconds += time.perf_counter() - t0

        is_last = step == total_steps
        if step % cfg.log_every == 0 or step % cfg.save_every == 0 or step % cfg.eval_every == 0 or is_last:
            if distributed:
                for v in sums.values():
                    dist.all_reduce(v)
            total_weight = float(weight)
            row = {"step": step, "lr": lr, **{k: float(v) / total_weight for k, v in sums.items()},
                   "grad_norm": float(grad_norm)}
            if not math.isfinite(row["loss"]) or not math.isfinite(row["grad_norm"]):
                raise TrainingError(
                    f"{desc}: loss became {row['loss']} (grad norm {row['grad_norm']}) at step {step}; lower the "
                    f"learning rate. Nothing was written; the last good state is kept"
                    + (f" in {resume_path}" if resume_path else "")
                )
            if step % cfg.log_every == 0 or is_last:
                result.train_curve.append(row)
            bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}", refresh=False)
        if step % cfg.eval_every == 0 or is_last:
            if run_eval(step):
                result.stopped_early = True
                log.info("%s: early stop at step %d, best %s %.4f at step %d", desc, step, select,
                         result.best_val, result.best_step)
        if step % cfg.save_every == 0 and not is_last:
            save_resume()
        bar.update(1)
    bar.close()
    if keep_best and best_state is not None:
        base.load_state_dict(best_state)
    return result


def _load_resume(path: Path, fingerprint: str) -> dict | None:
    try:
        state = read_payload_file(path)
    except PicoError as e:
        log.warning("ignoring unreadable resume state %s: %s", path, e)
        return None
    if state.get("fingerprint") != fingerprint:
        log.info("resume state %s belongs to other params or data; starting fresh", path)
        return None
    return state
