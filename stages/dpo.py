"""Stage `dpo`: Direct Preference Optimization of the SFT model on data/dpo, against the frozen SFT
reference, whose log-probs are computed once and saved (-> checkpoints/dpo.pt, checkpoints/dpo_reference.pt)."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
import time
from pathlib import Path

import torch

from pico.checkpoint import load_checkpoint, read_payload_file, to_bytes
from pico.config import load_params
from pico.errors import CheckpointError, DataError, ParamsError
from pico.finetune import BucketedBatches, dpo_batch, encode_dpo_rows, pair_logps, steps_for
from pico.io import read_jsonl, write_bytes
from pico.losses import dpo_batch_loss
from pico.stage import file_digest, fingerprint, finish_training, run_stage
from pico.tokenizer import load_tokenizer
from pico.train import dist_info, evaluate_loss, is_main_process, resolve_device, train

log = logging.getLogger("dpo")
TRL_NAMES = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
             "logps/chosen", "logps/rejected"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--sft", default="checkpoints/sft.pt")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--train", default="data/dpo/train.jsonl")
    ap.add_argument("--valid", default="data/dpo/valid.jsonl")
    ap.add_argument("--out", default="checkpoints/dpo.pt")
    ap.add_argument("--reference-out", default="checkpoints/dpo_reference.pt")
    ap.add_argument("--metrics", default="metrics/dpo.json")
    ap.add_argument("--plots-dir", default="plots/dpo")
    ap.add_argument("--resume", default="checkpoints/resume/dpo.pt")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).dpo
    device = resolve_device(cfg.device)
    started = time.perf_counter()

    tok = load_tokenizer(args.tokenizer)
    sft = load_checkpoint(args.sft, tokenizer_hash=tok.hash)
    if cfg.max_len > sft.model_cfg.max_seq_len:
        raise ParamsError("dpo.max_len", f"is {cfg.max_len} but the SFT model's context is {sft.model_cfg.max_seq_len}")
    required = ("prompt", "chosen", "rejected")
    train_pairs, train_report = encode_dpo_rows(tok, read_jsonl(args.train, required), cfg.max_len, cfg.truncation)
    valid_pairs, valid_report = encode_dpo_rows(tok, read_jsonl(args.valid, required), cfg.max_len, cfg.truncation)
    for pairs, path in ((train_pairs, args.train), (valid_pairs, args.valid)):
        if not pairs:
            raise DataError(f"{path}: no pair fits in dpo.max_len; raise it or shorten the data")

    # the reference is the SFT model, frozen: its log-probs are computed once, never during training
    ref_id = fingerprint("dpo-reference", file_digest(args.sft), file_digest(args.train), file_digest(args.valid),
                         cfg.max_len, cfg.truncation)
    ref = load_reference(args.reference_out, ref_id)
    if ref is None:
        ref = {"train": pair_logps(sft.model, train_pairs, cfg.batch_size, device),
               "valid": pair_logps(sft.model, valid_pairs, cfg.batch_size, device)}
        if is_main_process():
            write_bytes(args.reference_out, to_bytes({"fingerprint": ref_id, **ref}))
    else:
        log.info("reusing reference log-probs from %s", args.reference_out)

    def batches(pairs, ref_logps):
        lengths = [max(len(c.ids), len(r.ids)) for c, r in pairs]
        return BucketedBatches(lengths, cfg.batch_size, cfg.seed,
                               lambda idx: dpo_batch([pairs[i] for i in idx], ref_logps[idx]))

    train_batches = batches(train_pairs, ref["train"])
    valid_batches = batches(valid_pairs, ref["valid"]).all_in_order()
    loss_fn = functools.partial(dpo_batch_loss, beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                                loss_type=cfg.loss_type)
    micro_per_step = cfg.grad_accum * dist_info()[1]
    total = steps_for(train_batches.batches_per_epoch, micro_per_step, cfg.epochs, cfg.max_steps)

    def evaluate(model):
        return evaluate_loss(model, valid_batches, loss_fn, device)

    model = sft.model
    run_id = fingerprint("dpo", dataclasses.asdict(cfg), ref_id)
    result = train(model, cfg, total_steps=total, get_batch=lambda s, m: train_batches.micro(s * micro_per_step + m),
                   loss_fn=loss_fn, evaluate=evaluate, keep_best=True, resume_path=args.resume,
                   fingerprint=run_id, desc="dpo")
    if not is_main_process():  # under torchrun every rank trained in lockstep; rank 0 writes
        return 0
    final = evaluate(model)
    train_final = evaluate_loss(model, batches(train_pairs, ref["train"]).all_in_order(), loss_fn, device, "train_")
    metrics = {
        **{f"val_{k}": round(final[f"val_{k}"], 5) for k in TRL_NAMES},
        "train_loss": round(train_final["train_loss"], 5),
        "train_rewards/accuracies": round(train_final["train_rewards/accuracies"], 5),
        "best_step": result.best_step,
        "steps": result.steps_done,
        "planned_steps": total,
        "stopped_early": result.stopped_early,
        "train_pairs": train_report.as_dict(),
        "valid_pairs": valid_report.as_dict(),
    }
    finish_training(model=model, model_cfg=sft.model_cfg, tokenizer_hash=tok.hash, stage="dpo", result=result,
                    metrics=metrics, started=started, out=args.out, metrics_path=args.metrics,
                    plots_dir=args.plots_dir, resume=args.resume, parent=args.sft,
                    train_columns=["step", *TRL_NAMES, "lr", "grad_norm"],
                    val_columns=["step", *(f"val_{k}" for k in TRL_NAMES)])
    log.info("val loss %.4f, val reward accuracy %.3f, margin %.3f", metrics["val_loss"],
             metrics["val_rewards/accuracies"], metrics["val_rewards/margins"])
    return 0


def load_reference(path: str, ref_id: str) -> dict | None:
    """Saved reference log-probs, if they were computed for this very SFT model, data and max_len."""
    if not Path(path).is_file():
        return None
    try:
        saved = read_payload_file(path)
    except CheckpointError as e:
        log.warning("recomputing reference log-probs: %s", e)
        return None
    if not isinstance(saved, dict) or saved.get("fingerprint") != ref_id:
        return None
    return {"train": saved["train"], "valid": saved["valid"]}


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
