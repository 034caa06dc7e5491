"""The SFT and DPO recipes: from a checkpoint, on (prompt, response) rows or preference pairs.

Both share one driver (`_fine_tune`): the one training loop, keeping the weights of the best validation loss.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn as nn

from pico.checkpoint import Checkpoint, read_cache, to_bytes
from pico.config import DPOConfig, FinetuneConfig, SFTConfig
from pico.copy_rows import with_copy_replay
from pico.device import is_main_process, resolve_device, resolve_precision
from pico.errors import DataError, ParamsError
from pico.finetune import (
    BucketedBatches,
    dpo_batch,
    encode_dpo_rows,
    encode_sft_rows,
    pair_logps,
    planned_steps,
    sft_batch,
    with_reference,
)
from pico.io import write_bytes
from pico.losses import dpo_batch_loss, lm_loss
from pico.model import build_model, disable_dropout, unwrap
from pico.recipes import Trained, fingerprint
from pico.tokenizer import Tokenizer
from pico.train import LossFn, TrainResult, evaluate_loss, train

log = logging.getLogger(__name__)
DPO_STATS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies", "logps/chosen",
             "logps/rejected"]  # TRL's names


def _fine_tune(cfg: FinetuneConfig, model: nn.Module, train_batches: BucketedBatches, loss_fn: LossFn, evaluate,
               resume: Path | None, run_id: str, get_batch=None) -> tuple[TrainResult, dict]:
    """The driver SFT and DPO share: train from a checkpoint, keep the best validation weights."""
    total = planned_steps(train_batches.batches_per_epoch, cfg.grad_accum, cfg.epochs, cfg.max_steps)
    result = train(model, cfg, total_steps=total, get_batch=get_batch or train_batches.micro, loss_fn=loss_fn,
                   evaluate=evaluate,
                   keep_best=True, resume_path=resume, fingerprint=run_id, desc=cfg.KEY)
    counts = {"best_step": result.best_step, "steps": result.steps_done, "planned_steps": total,
              "stopped_early": result.stopped_early, "tokens_seen": result.tokens_seen}
    return result, counts


def _encode(cfg: FinetuneConfig, parent: Checkpoint, encode, tok: Tokenizer, splits: dict[str, list[dict]]):
    """{split: (encoded items, report)}, checked: max_len fits the model, and every split keeps a row."""
    if cfg.max_len > parent.model_cfg.max_seq_len:
        raise ParamsError(f"{cfg.KEY}.max_len", f"is {cfg.max_len} but the model's context is "
                          f"{parent.model_cfg.max_seq_len}")
    out = {split: encode(tok, rows, cfg.max_len, cfg.truncation) for split, rows in splits.items()}
    for split, (items, _) in out.items():
        if not items:
            raise DataError(f"{cfg.KEY} {split} rows: no row fits in {cfg.KEY}.max_len; raise it or shorten the data")
    return out


def without_line_break_copies(parent: Checkpoint, tok: Tokenizer) -> Checkpoint:
    """The parent model with a copy head that hands line breaks to the vocabulary side (`model.copy_line_breaks:
    false`), the same weights otherwise; a parent without a copy head, or already blocking them, is returned as
    it is."""
    head = getattr(unwrap(parent.model), "copy", None)  # None: no copy head (an LSTM or k-gram model has none)
    if head is None or head.blocked is not None:
        return parent
    cfg = replace(parent.model_cfg, copy_line_breaks=False)
    model = build_model(cfg, unwrap(parent.model).vocab_size)
    missing, unexpected = model.load_state_dict(unwrap(parent.model).state_dict(), strict=False)
    if missing != ["copy.blocked"] or unexpected:  # only the new buffer may differ
        raise RuntimeError(f"without_line_break_copies: weights missing {missing}, unexpected {unexpected}")
    model.block_copies(tok.line_break_ids())
    return Checkpoint(model.to(unwrap(parent.model).wte.weight.device), cfg, parent.meta, parent.digest)


def with_copy_match(parent: Checkpoint, n: int) -> Checkpoint:
    """The parent model with exact-match terms of order n in its copy head (`model.copy_match`), their gates at
    zero, so it gives the parent's distribution until trained; a parent without a copy head, or with match terms
    already, is returned as it is."""
    head = getattr(unwrap(parent.model), "copy", None)
    if head is None or head.match_gate is not None:
        return parent
    cfg = replace(parent.model_cfg, copy_match=n)
    model = build_model(cfg, unwrap(parent.model).vocab_size)
    missing, unexpected = model.load_state_dict(unwrap(parent.model).state_dict(), strict=False)
    if sorted(missing) != ["copy.match_gate.bias", "copy.match_gate.weight"] or unexpected:
        raise RuntimeError(f"with_copy_match: weights missing {missing}, unexpected {unexpected}")
    with torch.no_grad():
        model.copy.match_gate.weight.zero_()
        model.copy.match_gate.bias.zero_()
    return Checkpoint(model.to(unwrap(parent.model).wte.weight.device), cfg, parent.meta, parent.digest)


def sft(cfg: SFTConfig, base: Checkpoint, tok: Tokenizer, train_rows: list[dict], valid_rows: list[dict], *,
        inputs_id: tuple = (), resume: Path | None = None) -> Trained:
    """Prompt-masked supervised fine-tuning: the loss covers the response tokens and EOS only.

    `inputs_id` identifies the base model and rows (e.g. their files' digests): a resume state is reused
    only for the same inputs and config.
    """
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    if not cfg.copy_line_breaks:
        base = without_line_break_copies(base, tok)
    if cfg.copy_match:
        base = with_copy_match(base, cfg.copy_match)
    weights = (cfg.copy_start_weight, cfg.copy_continue_weight)
    encode = functools.partial(encode_sft_rows, mark_copies=weights != (1, 1))
    encoded = _encode(cfg, base, encode, tok, {"train": train_rows, "valid": valid_rows})
    (train_enc, train_report), (valid_enc, valid_report) = encoded["train"], encoded["valid"]

    def batches(encoded, *weights: float):  # validation and the reported losses: every token once
        return BucketedBatches([len(e.ids) for e in encoded], cfg.batch_size, cfg.seed,
                               lambda idx: sft_batch([encoded[i] for i in idx], *weights))

    valid_batches = batches(valid_enc).all_in_order()

    def evaluate(model):
        return {"val_loss": evaluate_loss(model, valid_batches, lm_loss, device, dtype=dtype)["val_loss"]}

    run_id = fingerprint("sft", asdict(cfg), *inputs_id)
    train_batches = batches(train_enc, *weights)
    get_batch = train_batches.micro
    if cfg.copy_share > 0:  # induction rows from the train rows' own tokens keep the base model's copying
        stream = torch.tensor([i for e in train_enc for i in e.ids])

        def replayed(k: int) -> dict:
            return with_copy_replay(train_batches.micro(k), stream, cfg.copy_share, tok.eot_id, cfg.seed, k,
                                    cfg.copy_stop)
        get_batch = replayed
    result, counts = _fine_tune(cfg, base.model, train_batches, lm_loss, evaluate, resume, run_id, get_batch)
    model = base.model
    metrics = {
        "val_loss": round(evaluate(model)["val_loss"], 5),
        "train_loss": round(evaluate_loss(model, batches(train_enc).all_in_order(), lm_loss, device, "train_",
                                          dtype)["train_loss"], 5),
        **counts,
        "train_rows": train_report.as_dict(),
        "valid_rows": valid_report.as_dict(),
    }
    return Trained(model, base.model_cfg, metrics, result, ["step", "loss", "lr", "grad_norm"], ["step", "val_loss"],
                   asdict(cfg))


def dpo(cfg: DPOConfig, sft_ckpt: Checkpoint, tok: Tokenizer, train_rows: list[dict], valid_rows: list[dict], *,
        reference_cache: Path, inputs_id: tuple = (), resume: Path | None = None) -> Trained:
    """Direct Preference Optimization against the frozen SFT model, whose log-probs are computed once and
    cached in `reference_cache` while the inputs (`inputs_id`: the SFT model's and rows' digests) stay."""
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    encode = functools.partial(encode_dpo_rows, skip_copies=cfg.skip_copies, skip_rejected_end=cfg.skip_rejected_end,
                               skip_rejected_copies=cfg.skip_rejected_copies)
    encoded = _encode(cfg, sft_ckpt, encode, tok, {"train": train_rows, "valid": valid_rows})
    (train_pairs, train_report), (valid_pairs, valid_report) = encoded["train"], encoded["valid"]

    # the reference is the SFT model, frozen: its log-probs go with the pairs, cached while model and data stay
    ref_id = fingerprint("dpo-reference", *inputs_id, cfg.max_len, cfg.truncation, cfg.skip_copies,
                         cfg.skip_rejected_end, cfg.skip_rejected_copies)
    ref = read_cache(reference_cache, ref_id)
    if ref is not None:
        log.info("reusing reference log-probs from %s", reference_cache)
    else:
        ref = {"train": pair_logps(sft_ckpt.model, train_pairs, cfg.batch_size, device, dtype),
               "valid": pair_logps(sft_ckpt.model, valid_pairs, cfg.batch_size, device, dtype)}
        if is_main_process():
            write_bytes(reference_cache, to_bytes({"fingerprint": ref_id, **ref}))
    train_pairs, valid_pairs = with_reference(train_pairs, ref["train"]), with_reference(valid_pairs, ref["valid"])

    def batches(pairs):
        return BucketedBatches([p.length for p in pairs], cfg.batch_size, cfg.seed,
                               lambda idx: dpo_batch([pairs[i] for i in idx]))

    loss_fn = functools.partial(dpo_batch_loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                                loss_type=cfg.loss_type, rpo_alpha=cfg.rpo_alpha)
    valid_batches = batches(valid_pairs).all_in_order()
    evaluate = functools.partial(evaluate_loss, batches=valid_batches, loss_fn=loss_fn, device=device, dtype=dtype)
    disable_dropout(sft_ckpt.model)
    result, counts = _fine_tune(cfg, sft_ckpt.model, batches(train_pairs), loss_fn, evaluate, resume,
                                fingerprint("dpo", asdict(cfg), ref_id))
    model = sft_ckpt.model
    final = evaluate(model)
    train_final = evaluate_loss(model, batches(train_pairs).all_in_order(), loss_fn, device, "train_", dtype)
    metrics = {
        **{f"val_{k}": round(final[f"val_{k}"], 5) for k in DPO_STATS},
        "train_loss": round(train_final["train_loss"], 5),
        "train_rewards/accuracies": round(train_final["train_rewards/accuracies"], 5),
        **counts,
        "train_pairs": train_report.as_dict(),
        "valid_pairs": valid_report.as_dict(),
    }
    return Trained(model, sft_ckpt.model_cfg, metrics, result, ["step", *DPO_STATS, "lr", "grad_norm"],
                   ["step", *(f"val_{k}" for k in DPO_STATS)], asdict(cfg))
