"""The evaluation recipe: every checkpoint on the same held-out data and generation specs, scored the same way."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pico.checker_fixtures import checker_accuracy, load_checker_fixtures
from pico.checkpoint import Checkpoint
from pico.config import UNSEEN, EvaluateConfig
from pico.copying import induction_batch
from pico.data import TokenWindows, token_byte_lengths
from pico.device import precision_name, resolve_device, resolve_precision
from pico.errors import DataError
from pico.evaluate import (
    EvalData,
    StyleJudge,
    evaluate_checkpoint,
    implicit_reward_metrics,
    paired_comparison,
    split_prefix,
)
from pico.finetune import encode_dpo_rows, encode_sft_rows, pair_logps
from pico.io import progress_bar
from pico.tokenizer import Tokenizer

log = logging.getLogger(__name__)
LINEAGE = (("base", "sft"), ("sft", "dpo"), ("base", "dpo"))  # (A, B): what each training step did


@dataclass
class Evaluation:
    metrics: dict[str, dict]  # {checkpoint: {metric: value}}, plus the checker's and the style judge's own scores
    records: dict[str, list[dict]]  # per split: one record per (checkpoint, generation)
    summaries: dict[str, dict]  # per split: {checkpoint: pass rates, stats and most frequent failures}
    comparisons: dict[str, dict]  # "sft vs base": {split: paired pass_all difference}


def evaluate(cfg: EvaluateConfig, checkpoints: dict[str, Checkpoint], tok: Tokenizer, *,
             sft_tests: dict[str, list[dict]], dpo_train: list[dict], dpo_test: list[dict],
             gen_rows: dict[str, list[dict]], val_tokens: np.ndarray) -> Evaluation:
    """Every checkpoint: held-out losses, preference accuracy, and generations checked against their specs.

    A DPO checkpoint's implicit reward is measured with the beta and loss type it recorded at training time,
    against its own reference: the checkpoint whose file is its `parent`, when that one is evaluated too.
    """
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    context = min(c.model_cfg.max_seq_len for c in checkpoints.values())
    sft_encoded = {split: encode_sft_rows(tok, rows, context, "left")[0] for split, rows in sft_tests.items()}
    dpo_pairs, _ = encode_dpo_rows(tok, dpo_test, context, "left")
    if not dpo_pairs or not all(sft_encoded.values()):
        raise DataError("no test row fits in the models' context; check the generate and model params")
    val_batches = TokenWindows(val_tokens, min(context, len(val_tokens) - 1), cfg.batch_size, cfg.seed,
                               token_byte_lengths(tok)).eval_batches(cfg.val_batches)
    judge = StyleJudge(seed=cfg.seed).fit([r["chosen"] for r in dpo_train], [r["rejected"] for r in dpo_train])
    data = EvalData(tok, sft_encoded, dpo_pairs, val_batches, gen_rows, judge, induction_batch(val_tokens, length=min(60, context // 2)),
                    sft_tests.get(UNSEEN, []), context)
    logps = {name: pair_logps(c.model, dpo_pairs, cfg.batch_size, device, dtype) for name, c in checkpoints.items()}
    by_digest = {c.digest: name for name, c in checkpoints.items() if c.digest}

    out = Evaluation({}, {split: [] for split in gen_rows}, {split: {} for split in gen_rows}, {})
    for name, ckpt in progress_bar(iterable=list(checkpoints.items()), desc="evaluate", unit="ckpt", leave=False):
        metrics, records, summaries = evaluate_checkpoint(name, ckpt.model, data, cfg, logps[name], device,
                                                          dtype)
        reference = by_digest.get(ckpt.meta.get("parent", ""))
        if ckpt.meta.get("stage") == "dpo":
            if reference is None:
                log.warning("%s: its reference (parent) checkpoint is not evaluated: no implicit-reward metrics", name)
            else:
                reward = implicit_reward_metrics(logps[name], logps[reference], data.n_tokens, ckpt.meta["train_config"])
                metrics.update({k: round(v, 5) for k, v in reward.items()})
        out.metrics[name] = metrics
        for split in gen_rows:
            out.records[split] += records[split]
            out.summaries[split][name] = summaries[split]
        log.info("%s: %s", name, ", ".join(f"{split_prefix(s)}pass_all {metrics.get(split_prefix(s) + 'pass_all')}"
                                            for s in gen_rows))
    for a, b in LINEAGE:
        if a in checkpoints and b in checkpoints:
            out.comparisons[f"{b} vs {a}"] = {
                split: paired_comparison([r for r in out.records[split] if r["checkpoint"] == a],
                                         [r for r in out.records[split] if r["checkpoint"] == b])
                for split in gen_rows}
    out.metrics["precision"] = precision_name(dtype)  # what every forward pass ran in
    out.metrics["checker"] = {k: round(v, 5) for k, v in checker_accuracy(load_checker_fixtures()).items()}
    out.metrics["style_judge"] = {"heldout_accuracy": round(judge.accuracy([r["chosen"] for r in dpo_test],
                                                                           [r["rejected"] for r in dpo_test]), 5),
                                  "train_pairs": len(dpo_train)}
    return out
