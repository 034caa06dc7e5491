"""Evaluation of a checkpoint: held-out losses, preference accuracy, and checked generations.

Each function takes a model and returns numbers; `stages/evaluate.py` loops over checkpoints and writes.
"""

from __future__ import annotations

import math
from collections import Counter

import torch
import torch.nn as nn

from pico.checks import CHECKS, check_story, failed_checks, text_stats
from pico.finetune import sft_batch
from pico.losses import lm_loss
from pico.prompt import Encoded
from pico.spec import Spec
from pico.train import evaluate_loss

# Which way is better for each metric, used by `pico compare` and the bundle.
LOWER_IS_BETTER = ("loss", "bpb", "repeated_4gram_rate")


def lower_is_better(metric: str) -> bool:
    return any(metric.endswith(s) or f"{s}_" in metric for s in LOWER_IS_BETTER)


def lm_metrics(model: nn.Module, batches: list[dict], device: torch.device) -> dict[str, float]:
    """Loss (nats/token) and bits per byte over token windows that carry `target_bytes`."""
    m = evaluate_loss(model, batches, lm_loss, device)
    return {"val_loss": m["val_loss"], "val_bpb": m["val_nll_text"] / m["val_bytes"] / math.log(2)}


def masked_loss(model: nn.Module, encoded: list[Encoded], batch_size: int, device: torch.device) -> float:
    """Mean NLL of response tokens (+EOS) over all rows: the SFT objective on held-out data."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    batches = [sft_batch([encoded[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]
    return evaluate_loss(model, batches, lm_loss, device)["val_loss"]


def preference_metrics(policy: torch.Tensor, reference: torch.Tensor, beta: float) -> dict[str, float]:
    """DPO's implicit reward on held-out pairs: accuracy (margin > 0) and mean margin. (N, 2) log-probs each."""
    margins = beta * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))
    return {"pref_acc": float((margins > 0).float().mean()), "reward_margin": float(margins.mean())}


def check_generation(text: str, spec: Spec) -> dict:
    """Per-generation record: every check, the failed ones, and repetition/diversity stats."""
    checks = check_story(text, spec)
    return {"checks": checks, "failed": failed_checks(checks), "passed_all": not failed_checks(checks),
            **text_stats(text)}


def summarize_generations(records: list[dict], top: int = 5) -> dict:
    """Pass rate of each check and of all checks, mean stats, and the most frequent failures."""
    n = max(len(records), 1)
    rates = {f"pass_{c}": sum(r["checks"][c] for r in records) / n for c in CHECKS}
    failures = Counter(f for r in records for f in r["failed"])
    combos = Counter(" + ".join(r["failed"]) for r in records if r["failed"])
    stats = {k: sum(r[k] for r in records) / n for k in
             ("repeated_4gram_rate", "distinct_1", "distinct_2", "distinct_3", "n_words", "n_paragraphs")}
    return {
        "n": len(records),
        **rates,
        "pass_all": sum(r["passed_all"] for r in records) / n,
        "pass_mean": sum(rates.values()) / len(rates),  # the average check pass rate: partial credit
        **stats,
        "most_frequent_failures": [{"check": k, "count": v} for k, v in failures.most_common(top)],
        "most_frequent_failure_sets": [{"failed": k, "count": v} for k, v in combos.most_common(top)],
    }


class StyleJudge:
    """TF-IDF + logistic regression trained to tell chosen from rejected stories; scores P(chosen-like)."""

    def __init__(self, seed: int = 0):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline

        self.pipeline = make_pipeline(
            TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True),
            LogisticRegression(C=4.0, max_iter=2000, solver="liblinear", random_state=seed),
        )

    def fit(self, chosen: list[str], rejected: list[str]) -> "StyleJudge":
        self.pipeline.fit(chosen + rejected, [1] * len(chosen) + [0] * len(rejected))
        return self

    def accuracy(self, chosen: list[str], rejected: list[str]) -> float:
        return float(self.pipeline.score(chosen + rejected, [1] * len(chosen) + [0] * len(rejected)))

    def scores(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        return [float(p) for p in self.pipeline.predict_proba(texts)[:, 1]]
