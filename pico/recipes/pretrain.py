"""The pretraining recipe: a fresh model trained on random windows of the packed TinyStories stream."""

from __future__ import annotations

import functools
import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from pico.config import ModelConfig, PretrainConfig
from pico.copy_rows import CopyRows
from pico.data import TokenWindows, token_byte_lengths, unigram_loss
from pico.device import resolve_device, resolve_precision
from pico.losses import lm_loss
from pico.model import build_model, count_params
from pico.recipes import Trained, fingerprint
from pico.tokenizer import Tokenizer
from pico.train import evaluate_loss, lm_metrics, train


def pretrain(cfg: PretrainConfig, model_cfg: ModelConfig, tok: Tokenizer, train_tokens: np.ndarray,
             val_tokens: np.ndarray, resume: Path | None = None) -> Trained:
    """A fresh model trained on random windows of the packed TinyStories stream."""
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    seq_len, token_bytes = cfg.seq_len or model_cfg.max_seq_len, token_byte_lengths(tok)
    train_windows = TokenWindows(train_tokens, seq_len, cfg.batch_size, cfg.seed, token_bytes)
    val_windows = TokenWindows(val_tokens, seq_len, cfg.batch_size, cfg.seed, token_bytes)
    val_batches = val_windows.eval_batches(cfg.eval_batches)
    evaluate = functools.partial(lm_metrics, batches=val_batches, device=device, dtype=dtype)
    torch.manual_seed(cfg.seed)
    model = build_model(model_cfg, tok.vocab_size)
    if getattr(model, "copy", None) is not None and not model_cfg.copy_line_breaks:  # a transformer's copy head
        model.block_copies(tok.line_break_ids())
    run_id = fingerprint("pretrain", asdict(cfg), asdict(model_cfg), tok.hash, hashlib.sha256(train_tokens).hexdigest())
    get_batch = train_windows.train_batch
    if cfg.copy_share > 0:
        get_batch = CopyRows(train_windows, tok, cfg.copy_share, cfg.seed).train_batch
    result = train(model, cfg, total_steps=cfg.max_steps, get_batch=get_batch, loss_fn=lm_loss,
                   evaluate=evaluate, resume_path=resume, fingerprint=run_id, desc="pretrain")
    final = evaluate(model)
    train_batches = TokenWindows(train_tokens, seq_len, cfg.batch_size, cfg.seed).eval_batches(cfg.eval_batches)
    metrics = {
        "train_loss": round(evaluate_loss(model, train_batches, lm_loss, device, "train_", dtype)["train_loss"], 5),
        "val_loss": round(final["val_loss"], 5),
        "val_bpb": round(final["val_bpb"], 5),
        "unigram_val_loss": round(unigram_loss(train_tokens, val_tokens, tok.vocab_size), 5),
        "steps": result.steps_done,
        "tokens_seen": result.tokens_seen,
        "params": count_params(model),
        "train_tokens": int(len(train_tokens)),
        "val_tokens": int(len(val_tokens)),
    }
    return Trained(model, model_cfg, metrics, result, ["step", "loss", "lr", "grad_norm"],
                   ["step", "val_loss", "val_bpb"], asdict(cfg))
