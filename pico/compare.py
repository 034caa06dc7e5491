"""Metric comparison between two checkpoints or two runs: values, deltas, direction, verdicts, and whether a
difference is more than noise (paired tests over the same specs; Welch's test over seeds)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from pico.stats import paired_difference, seeds_difference

# the metrics a reader of the results needs first, per checkpoint (README table, bars, bundle, compare); the
# headline is the pass rate on specs made of values no training data used
KEY_METRICS = ["unseen_pass_all", "seen_pass_all", "unseen_pass_mean", "sft_test_unseen_loss", "sft_test_loss",
               "pref_acc_logp", "pref_acc_logp_norm", "dpo_test_pref_acc", "dpo_test_reward_margin", "val_bpb",
               "unseen_repeated_4gram_rate", "induction_nll_second", "field_copy_nll_taboo", "field_copy_nll_twist",
               "field_first_acc_taboo", "field_first_acc_twist"]
ALPHA = 0.05  # a difference with p below this is reported as more than noise
# substrings that decide a metric's direction; the first match wins
NEUTRAL = ("n_words", "n_paragraphs", "steps", "params", "tokens", "rows", "pairs", "speed", "seconds", "best_step",
           "stories", "bytes", "vocab", "n_rows", "_chars", "_tokens", "stopped_early", "logps/", "unigram",
           "dropped", "truncated", "kept", "lr", "grad_norm")
LOWER_BETTER = ("loss", "bpb", "repeated_4gram_rate", "perplexity", "rewards/rejected", "nll")


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (sizes, counts, timings, bounds)."""
    name = metric.lower()
    if name.endswith(("_lo", "_hi")):  # interval bounds go with their rate
        return 0
    if "adversarial_pass" in name:  # the checker passing adversarial stories: lower is better
        return -1
    if "pass_" in name:
        return 1
    if any(s in name for s in NEUTRAL):
        return 0
    if any(s in name for s in LOWER_BETTER):
        return -1
    return 1


@dataclass
class Row:
    metric: str
    a: float | None
    b: float | None
    delta: float | None
    rel_delta: float | None  # (b - a) / |a|
    direction: int
    verdict: str  # "better", "worse", "same", "n/a"


def compare_metrics(a: dict[str, float], b: dict[str, float]) -> list[Row]:
    """One row per metric in either dict, B judged against A; the key metrics first."""
    rows = []
    names = list(a) + [m for m in b if m not in a]
    for metric in [m for m in KEY_METRICS if m in names] + [m for m in names if m not in KEY_METRICS]:
        va, vb = _num(a.get(metric)), _num(b.get(metric))
        d = direction(metric)
        if va is None or vb is None:
            rows.append(Row(metric, va, vb, None, None, d, "n/a"))
            continue
        delta = vb - va
        rel = delta / abs(va) if va != 0 else None
        if d == 0:
            verdict = "n/a"
        elif math.isclose(va, vb, rel_tol=1e-9, abs_tol=1e-12):
            verdict = "same"
        else:
            verdict = "better" if delta * d > 0 else "worse"
        rows.append(Row(metric, va, vb, delta, rel, d, verdict))
    return rows


def _num(v) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v)


def summarize(rows: list[Row]) -> dict:
    """Improvements, regressions, and the average signed relative improvement (positive = better)."""
    better = [r.metric for r in rows if r.verdict == "better"]
    worse = [r.metric for r in rows if r.verdict == "worse"]
    gains = [r.rel_delta * r.direction for r in rows
             if r.verdict in ("better", "worse", "same") and r.rel_delta is not None]
    return {"improvements": better, "regressions": worse,
            "average_improvement": sum(gains) / len(gains) if gains else None, "compared": len(gains)}


def flatten(metrics: dict, prefix: str = "") -> dict[str, float]:
    """{"a": {"b": 1}} -> {"a.b": 1}, numbers only."""
    out: dict[str, float] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{key}."))
        elif _num(v) is not None:
            out[key] = float(v)
    return out


def _fmt(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{v:.4g}"


def to_markdown(sections: dict[str, list[Row]], label_a: str, label_b: str) -> str:
    lines = []
    for title, rows in sections.items():
        if title:
            lines += [f"### {title}", ""]
        lines += [f"| metric | {label_a} | {label_b} | Δ | rel Δ | |", "|---|---:|---:|---:|---:|---|"]
        for r in rows:
            rel = f"{r.rel_delta:+.1%}" if r.rel_delta is not None else "-"
            delta = f"{r.delta:+.4g}" if r.delta is not None else "-"
            mark = {"better": "▲ better", "worse": "▼ worse", "same": "= same", "n/a": ""}[r.verdict]
            lines.append(f"| {r.metric} | {_fmt(r.a)} | {_fmt(r.b)} | {delta} | {rel} | {mark} |")
        s = summarize(rows)
        avg = f"{s['average_improvement']:+.1%}" if s["average_improvement"] is not None else "n/a"
        lines += ["", f"Improvements ({len(s['improvements'])}): {', '.join(s['improvements']) or 'none'}",
                  f"Regressions ({len(s['regressions'])}): {', '.join(s['regressions']) or 'none'}",
                  f"Average improvement over {s['compared']} comparable metrics: {avg}", ""]
    return "\n".join(lines)


def to_json(sections: dict[str, list[Row]], label_a: str, label_b: str) -> dict:
    return {"a": label_a, "b": label_b,
            "sections": {t: {"rows": [asdict(r) for r in rows], **summarize(rows)} for t, rows in sections.items()}}


# ----------------------------------------------------------------------------------------------- more than noise?
def significance(records_a: list[dict], records_b: list[dict], checks: list[str]) -> list[dict]:
    """B against A on the same specs: per split, pass_all and each check, the paired difference with its 95%
    interval and McNemar's exact p-value. Records are evaluate's generation records (split, index, checks)."""
    rows = []
    for split in sorted({r["split"] for r in records_a} & {r["split"] for r in records_b}):
        a = {r["index"]: r for r in records_a if r["split"] == split}
        b = {r["index"]: r for r in records_b if r["split"] == split}
        common = sorted(set(a) & set(b))
        for check in ["pass_all", *checks]:
            def passed(r, check=check):
                return r["passed_all"] if check == "pass_all" else r["checks"][check]

            d = paired_difference([passed(a[i]) for i in common], [passed(b[i]) for i in common])
            rows.append({"split": split, "metric": check, **d.as_dict(), "significant": d.p_value < ALPHA})
    return rows


def across_seeds(a_runs: list[dict[str, float]], b_runs: list[dict[str, float]]) -> list[dict]:
    """Metrics of several runs (seeds) per side: means, spreads, the difference and Welch's p-value."""
    names = [m for m in a_runs[0] if all(m in r for r in a_runs + b_runs)] if a_runs else []
    names = [m for m in KEY_METRICS if m in names] + [m for m in names if m not in KEY_METRICS]
    rows = []
    for metric in names:
        values_a, values_b = [_num(r[metric]) for r in a_runs], [_num(r[metric]) for r in b_runs]
        if None in values_a or None in values_b or direction(metric) == 0:
            continue
        s = seeds_difference(values_a, values_b)
        rows.append({"metric": metric, **s.as_dict(), "direction": direction(metric),
                     "significant": bool(math.isfinite(s.p_value) and s.p_value < ALPHA)})
    return rows


def significance_markdown(rows: list[dict], label_a: str, label_b: str) -> str:
    lines = ["Is it more than noise? Paired over the same specs (McNemar's exact test; 95% interval of the "
             "difference).",
             "", f"| split | metric | {label_a} | {label_b} | Δ [95% CI] | only {label_a} / only {label_b} | p | |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['metric']} | {r['rate_a']:.3f} | {r['rate_b']:.3f} | {r['diff']:+.3f} "
                     f"[{r['lo']:+.3f}, {r['hi']:+.3f}] | {r['a_only']} / {r['b_only']} | {r['p_value']:.3g} | "
                     f"{'significant' if r['significant'] else 'noise'} |")
    return "\n".join(lines) + "\n"


def seeds_markdown(rows: list[dict], label_a: str, label_b: str) -> str:
    lines = ["Across seeds: mean ± standard deviation per side, Welch's t-test.", "",
             f"| metric | {label_a} | {label_b} | Δ | p | |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        better = r["diff"] * r["direction"] > 0
        verdict = ("better" if better else "worse") if r["significant"] else "noise"
        p = f"{r['p_value']:.3g}" if isinstance(r["p_value"], float) and math.isfinite(r["p_value"]) else "-"
        lines.append(f"| {r['metric']} | {r['mean_a']:.4g} ± {_fmt(r['std_a'])} (n={r['n_a']}) | "
                     f"{r['mean_b']:.4g} ± {_fmt(r['std_b'])} (n={r['n_b']}) | {r['diff']:+.4g} | {p} | {verdict} |")
    return "\n".join(lines) + "\n"
