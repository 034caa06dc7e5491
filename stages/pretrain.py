"""Stage `pretrain`: pack the splits into uint16 token files and train the base LM (checkpoints/base.pt)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import time
from pathlib import Path

import torch

from pico.config import load_params
from pico.data import TokenWindows, pack_tokens, save_tokens, token_byte_lengths, unigram_loss
from pico.evaluate import lm_metrics
from pico.losses import lm_loss
from pico.model import build_model, count_params
from pico.stage import finish_training, fingerprint, run_stage
from pico.tinystories import read_prepared
from pico.tokenizer import load_tokenizer
from pico.train import evaluate_loss, is_main_process, resolve_device, train

log = logging.getLogger("pretrain")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--train", default="data/prepared/train.txt")
    ap.add_argument("--val", default="data/prepared/val.txt")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--tokens-dir", default="data/tokens")
    ap.add_argument("--out", default="checkpoints/base.pt")
    ap.add_argument("--metrics", default="metrics/pretrain.json")
    ap.add_argument("--plots-dir", default="plots/pretrain")
    ap.add_argument("--resume", default="checkpoints/resume/pretrain.pt")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg, model_cfg = params.pretrain, params.model
    device = resolve_device(cfg.device)  # fail on an unavailable device before any work
    started = time.perf_counter()

    tok = load_tokenizer(args.tokenizer)
    train_tokens = pack_tokens(tok, read_prepared(args.train))
    val_tokens = pack_tokens(tok, read_prepared(args.val))
    tokens_dir = Path(args.tokens_dir)
    if is_main_process():
        save_tokens(tokens_dir / "train.bin", train_tokens)
        save_tokens(tokens_dir / "val.bin", val_tokens)

    seq_len = cfg.seq_len or model_cfg.max_seq_len
    token_bytes = token_byte_lengths(tok)
    train_windows = TokenWindows(train_tokens, seq_len, cfg.batch_size, cfg.seed, token_bytes)
    val_windows = TokenWindows(val_tokens, seq_len, cfg.batch_size, cfg.seed, token_bytes)
    val_batches = val_windows.eval_batches(cfg.eval_batches)

    def evaluate(model):
        return lm_metrics(model, val_batches, device)

    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, tok.vocab_size)
    run_id = fingerprint("pretrain", dataclasses.asdict(cfg), dataclasses.asdict(model_cfg), tok.hash,
                         hashlib.sha256(train_tokens.tobytes()).hexdigest())
    result = train(model, cfg, total_steps=cfg.max_steps, get_batch=train_windows.train_batch, loss_fn=lm_loss,
                   evaluate=evaluate, resume_path=args.resume, fingerprint=run_id, desc="pretrain")
    if not is_main_process():
        return 0

    final = evaluate(model)
    train_eval = evaluate_loss(model, TokenWindows(train_tokens, seq_len, cfg.batch_size, cfg.seed)
                               .eval_batches(cfg.eval_batches), lm_loss, device, prefix="train_")
    metrics = {
        "train_loss": round(train_eval["train_loss"], 5),
        "val_loss": round(final["val_loss"], 5),
        "val_bpb": round(final["val_bpb"], 5),
        "unigram_val_loss": round(unigram_loss(train_tokens, val_tokens, tok.vocab_size), 5),
        "steps": result.steps_done,
        "tokens_seen": result.tokens_seen,
        "params": count_params(model),
        "train_tokens": int(len(train_tokens)),
        "val_tokens": int(len(val_tokens)),
    }
    metrics = finish_training(model=model, model_cfg=model_cfg, tokenizer_hash=tok.hash, stage="pretrain",
                              result=result, metrics=metrics, started=started, out=args.out,
                              metrics_path=args.metrics, plots_dir=args.plots_dir, resume=args.resume,
                              train_columns=["step", "loss", "lr", "grad_norm"],
                              val_columns=["step", "val_loss", "val_bpb"])
    log.info("val loss %.4f (unigram %.4f), val bpb %.4f, %.0f tok/s", metrics["val_loss"],
             metrics["unigram_val_loss"], metrics["val_bpb"], metrics["speed"]["tokens_per_s"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
