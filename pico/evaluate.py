"""Evaluation of a checkpoint: held-out losses, preference accuracy, and checked generations.

Each function takes a model and returns numbers; `pico.recipes.evaluate` runs them for every checkpoint.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn as nn

from pico.checks import CHECKS, check_story, failed_checks, text_stats
from pico.config import EvaluateConfig
from pico.copying import field_copy_metrics, induction_nll
from pico.finetune import Pair, sft_batch
from pico.losses import lm_loss
from pico.prompt import Encoded, encode_prompt
from pico.sampling import SamplingConfig, sample
from pico.spec import Spec
from pico.stats import paired_difference, wilson
from pico.tokenizer import Tokenizer
from pico.train import evaluate_loss, lm_metrics


def masked_loss(model: nn.Module, encoded: list[Encoded], batch_size: int, device: torch.device,
                dtype: torch.dtype = torch.float32) -> float:
    """Mean NLL of response tokens (+EOS) over all rows: the SFT objective on held-out data."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].ids))
    batches = [sft_batch([encoded[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]
    return evaluate_loss(model, batches, lm_loss, device, dtype=dtype)["val_loss"]


def preference_accuracy(logps: torch.Tensor, n_tokens: torch.Tensor) -> dict[str, float]:
    """How often a model itself gives the chosen story more probability than the rejected one, on held-out
    pairs: by summed log-probs and by per-token averages (length-fair). Ties count one half. (N, 2) each."""
    return {"pref_acc_logp": _win_rate(logps[:, 0] - logps[:, 1]),
            "pref_acc_logp_norm": _win_rate(logps[:, 0] / n_tokens[:, 0] - logps[:, 1] / n_tokens[:, 1])}


def implicit_reward_metrics(policy: torch.Tensor, reference: torch.Tensor, n_tokens: torch.Tensor,
                            train_config: dict) -> dict[str, float]:
    """DPO's implicit reward β·(π − ref) on held-out pairs, with the beta, loss type and reference the checkpoint
    was trained with: accuracy (chosen above rejected; ties one half) and mean margin. (N, 2) each."""
    if train_config["loss_type"] == "ipo":  # IPO's log-probs are per-token averages
        policy, reference = policy / n_tokens, reference / n_tokens
    margins = train_config["beta"] * ((policy[:, 0] - reference[:, 0]) - (policy[:, 1] - reference[:, 1]))
    return {"dpo_test_pref_acc": _win_rate(margins), "dpo_test_reward_margin": float(margins.mean())}


def _win_rate(diff: torch.Tensor) -> float:
    return float(((diff > 0).float() + 0.5 * (diff == 0).float()).mean())


def check_generation(text: str, spec: Spec) -> dict:
    """Per-generation record: every check, the failed ones, and repetition/diversity stats."""
    checks = check_story(text, spec)
    return {"checks": checks, "failed": failed_checks(checks), "passed_all": not failed_checks(checks),
            **text_stats(text)}


def rate_with_interval(name: str, k: int, n: int) -> dict[str, float]:
    """{name: k/n, name_lo, name_hi}: a pass rate and its Wilson 95% interval."""
    lo, hi = wilson(k, n)
    return {name: k / n if n else 0.0, f"{name}_lo": lo, f"{name}_hi": hi}


def summarize_generations(records: list[dict], top: int = 5) -> dict:
    """Pass rate (with its 95% interval) of each check and of all checks, mean stats, the most frequent failures."""
    n = len(records)
    rates: dict[str, float] = {}
    for c in CHECKS:
        rates.update(rate_with_interval(f"pass_{c}", sum(r["checks"][c] for r in records), n))
    failures = Counter(f for r in records for f in r["failed"])
    combos = Counter(" + ".join(r["failed"]) for r in records if r["failed"])
    stats = {k: sum(r[k] for r in records) / max(n, 1) for k in
             ("repeated_4gram_rate", "distinct_1", "distinct_2", "distinct_3", "n_words", "n_paragraphs")}
    return {
        "n": n,
        **rate_with_interval("pass_all", sum(r["passed_all"] for r in records), n),
        **rates,
        "pass_mean": sum(rates[f"pass_{c}"] for c in CHECKS) / len(CHECKS),  # partial credit
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


SPLIT_PREFIX = {"test_unseen": "unseen_", "test": "seen_"}  # metric prefixes; other splits use their name


def split_prefix(split: str) -> str:
    return SPLIT_PREFIX.get(split, f"{split}_")


@dataclass
class EvalData:
    """What every checkpoint is evaluated on: the same rows, windows, specs and judge for all of them."""

    tok: Tokenizer
    sft_tests: dict[str, list[Encoded]]  # per SFT split: references, for the teacher-forced response loss
    dpo_test: list[Pair]
    val_batches: list[dict]
    gen_rows: dict[str, list[dict]]  # per SFT split: rows whose specs are generated for
    judge: StyleJudge
    induction: torch.Tensor  # (n, 2L) shuffled validation windows, each repeated once (pico/copying.py)
    copy_rows: list[dict]  # SFT references of unseen specs, for field copying under teacher forcing
    context: int  # tokens every evaluated model takes

    @property
    def n_tokens(self) -> torch.Tensor:
        return torch.tensor([p.n_tokens for p in self.dpo_test], dtype=torch.float32)


def generation_records(name: str, model: nn.Module, rows: list[dict], split: str, data: EvalData,
                       cfg: EvaluateConfig, device: torch.device,
                       dtype: torch.dtype = torch.float32) -> tuple[list[dict], list[float]]:
    """One sampled story per row, with its spec, sampling settings, checks and style score; and the scores."""
    sampling = SamplingConfig.of(cfg)
    prompts = [encode_prompt(data.tok, r["prompt"]) for r in rows]
    outputs = sample(model, prompts, sampling, data.tok.eot_id, batch_size=cfg.sample_batch_size, device=device,
                     dtype=dtype)
    texts = [data.tok.decode(ids) for ids in outputs]
    scores = data.judge.scores(texts)
    return [{"checkpoint": name, "split": split, "index": i, "prompt": row["prompt"], "response": text,
             "spec": row["spec"], "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
             "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "new_tokens": len(outputs[i]),
             "style_score": round(score, 5), **check_generation(text, Spec.from_dict(row["spec"]))}
            for i, (row, text, score) in enumerate(zip(rows, texts, scores))], scores


def evaluate_checkpoint(name: str, model: nn.Module, data: EvalData, cfg: EvaluateConfig, logps: torch.Tensor,
                        device: torch.device,
                        dtype: torch.dtype = torch.float32) -> tuple[dict, dict[str, list[dict]], dict[str, dict]]:
    """(metrics, generation records per split, summary per split) of one checkpoint; `logps` (N, 2) are its
    log-probs of the DPO test pairs."""
    m: dict[str, float] = {f"sft_{split}_loss": masked_loss(model, encoded, cfg.batch_size, device, dtype)
                           for split, encoded in data.sft_tests.items()}
    m.update(preference_accuracy(logps, data.n_tokens))
    m.update(lm_metrics(model, batches=data.val_batches, device=device, dtype=dtype))
    m.update(induction_nll(model, data.induction, dtype))
    m.update(field_copy_metrics(model, data.tok, data.copy_rows, data.context, batch_size=cfg.batch_size, dtype=dtype))
    records, summaries = {}, {}
    for split, rows in data.gen_rows.items():
        prefix = split_prefix(split)
        records[split], style = generation_records(name, model, rows, split, data, cfg, device, dtype)
        summaries[split] = summarize_generations(records[split])
        m.update({f"{prefix}{k}": v for k, v in summaries[split].items() if isinstance(v, float)})
        m[f"{prefix}style_score"] = sum(style) / max(len(style), 1)
    return {k: round(v, 5) for k, v in m.items()}, records, summaries


def paired_comparison(a: list[dict], b: list[dict]) -> dict:
    """B against A on the same specs (records matched by index): the pass_all difference with its 95%
    interval and McNemar's exact p-value."""
    by_index = {r["index"]: r["passed_all"] for r in a}
    common = [r for r in b if r["index"] in by_index]
    return paired_difference([by_index[r["index"]] for r in common], [r["passed_all"] for r in common]).as_dict()
