"""Metric comparison between two checkpoints or two runs: values, deltas, direction, verdicts."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

# the metrics a reader of the results needs first, per checkpoint (README table, bars, bundle)
KEY_METRICS = ["sft_test_loss", "dpo_test_pref_acc", "dpo_test_reward_margin", "val_loss", "val_bpb", "pass_mean",
               "pass_all", "style_score", "repeated_4gram_rate"]
# substrings that decide a metric's direction; the first match wins
NEUTRAL = ("n_words", "n_paragraphs", "steps", "params", "tokens", "rows", "pairs", "speed", "seconds", "best_step",
           "stories", "bytes", "vocab", "n_rows", "_chars", "_tokens", "stopped_early", "logps/", "unigram",
           "dropped", "truncated", "kept", "lr", "grad_norm")
LOWER_BETTER = ("loss", "bpb", "repeated_4gram_rate", "perplexity", "rewards/rejected")


def direction(metric: str) -> int:
    """+1 when higher is better, -1 when lower is better, 0 when neither (sizes, counts, timings)."""
    name = metric.lower()
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
    """One row per metric in either dict, B judged against A."""
    rows = []
    for metric in list(a) + [m for m in b if m not in a]:
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
    gains = [r.rel_delta * r.direction for r in rows if r.verdict in ("better", "worse", "same") and r.rel_delta is not None]
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
    if v is None:
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
