"""The evaluation recipe: every checkpoint on the same held-out data and generation specs, scored the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pico.checkpoint import Checkpoint
from pico.config import EvaluateConfig
from pico.data import TokenWindows, token_byte_lengths
from pico.device import resolve_device
from pico.errors import DataError
from pico.evaluate import EvalData, StyleJudge, evaluate_checkpoint
from pico.finetune import encode_dpo_rows, encode_sft_rows, pair_logps
from pico.io import progress_bar
from pico.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass
class Evaluation:
    metrics: dict[str, dict]  # {checkpoint: {metric: value}}, plus the style judge's own accuracy
    records: dict[str, list[dict]]  # per split: one record per (checkpoint, generation)
    summaries: dict[str, dict]  # per split: {checkpoint: pass rates, stats and most frequent failures}


def evaluate(cfg: EvaluateConfig, checkpoints: dict[str, Checkpoint], tok: Tokenizer, *, sft_test: list[dict],
             dpo_train: list[dict], dpo_test: list[dict], gen_rows: dict[str, list[dict]], val_tokens: np.ndarray,
             beta: float) -> Evaluation:
    """Every checkpoint on the same held-out data and the same generation specs, scored the same way."""
    device = resolve_device(cfg.device)
    context = min(c.model_cfg.max_seq_len for c in checkpoints.values())
    sft_encoded, _ = encode_sft_rows(tok, sft_test, context, "left")
    dpo_pairs, _ = encode_dpo_rows(tok, dpo_test, context, "left")
    if not sft_encoded or not dpo_pairs:
        raise DataError("no test row fits in the models' context; check the generate and model params")
    val_batches = TokenWindows(val_tokens, min(context, len(val_tokens) - 1), cfg.batch_size, cfg.seed,
                               token_byte_lengths(tok)).eval_batches(cfg.val_batches)
    judge = StyleJudge(seed=cfg.seed).fit([r["chosen"] for r in dpo_train], [r["rejected"] for r in dpo_train])
    data = EvalData(tok, sft_encoded, dpo_pairs, val_batches, gen_rows, judge,
                    reference=pair_logps(checkpoints["sft"].model, dpo_pairs, cfg.batch_size, device))
    out = Evaluation({}, {split: [] for split in gen_rows}, {split: {} for split in gen_rows})
    for name, ckpt in progress_bar(iterable=list(checkpoints.items()), desc="evaluate", unit="ckpt", leave=False):
        metrics, records, summaries = evaluate_checkpoint(name, ckpt.model, data, cfg, beta, device)
        log.info("%s: sft test loss %.3f, pass_all %s", name, metrics["sft_test_loss"], metrics.get("pass_all"))
        out.metrics[name] = metrics
        for split in gen_rows:
            out.records[split] += records[split]
            out.summaries[split][name] = summaries[split]
    out.metrics["style_judge"] = {"heldout_accuracy": round(judge.accuracy([r["chosen"] for r in dpo_test],
                                                                           [r["rejected"] for r in dpo_test]), 5),
                                  "train_pairs": len(dpo_train)}
    return out
