"""The scaling study: unseen_pass_all of SFT and DPO against training compute, from DVC's own records.

    python benchmarks/scaling_study.py                       # experiments with experiment.purpose scaling_study
    python benchmarks/scaling_study.py --purpose pair_mix --x pair_difficulty
    python benchmarks/scaling_study.py --input exp_show.json  # a saved `dvc exp show --json`
    python benchmarks/scaling_study.py --runs scale-120,scale-600 # only these runs of the purpose
    python benchmarks/scaling_study.py --all-commits --recheck  # runs of older commits too, re-scored (below)

Reads `dvc exp show --json` (every run of the workspace, its experiments and queue), keeps the runs of one
`experiment.purpose`, and writes a Markdown table and a PNG plot (pass rates with their Wilson 95% intervals)
into benchmarks/results/. Training FLOPs are counted as 6 x parameters x tokens processed (forward and
backward, the standard estimate), summed over the stages a checkpoint went through: pretraining tokens for
every checkpoint, plus SFT tokens for sft, plus DPO tokens (chosen and rejected rows) for dpo.

`--recheck` re-scores each run's own stored generations (`eval/generations_<split>.jsonl` at the run's revision,
read from the DVC cache) with the checker of this checkout: the same stories, today's checks. Use it when the
checker has changed since the runs were made; the sampled stories are not redrawn.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pico.runs import Run, get_path, load_runs, parse_exp_show  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PARAMS = ["model.d_model", "model.n_layer", "pretrain.max_steps", "sft.epochs", "sft.max_steps", "dpo.epochs",
          "generate.pair_difficulty", "generate.sft_splits.train", "generate.fresh_names"]


def stage_metrics(run: Run, stage: str) -> dict:
    return run.metrics.get(f"metrics/{stage}.json", {})


def training_flops(run: Run) -> dict[str, float] | None:
    """6 N D per stage, cumulative: {"base": ..., "sft": ..., "dpo": ...}; None when a stage's counts are missing."""
    pre, sft, dpo = (stage_metrics(run, s) for s in ("pretrain", "sft", "dpo"))
    n = pre.get("params")
    tokens = [pre.get("tokens_seen"), sft.get("tokens_seen"), dpo.get("tokens_seen")]
    if n is None or None in tokens:
        return None
    base = 6 * n * tokens[0]
    return {"base": base, "sft": base + 6 * n * tokens[1], "dpo": base + 6 * n * (tokens[1] + tokens[2])}


def rows_of(runs: list[Run]) -> list[dict]:
    rows = []
    for run in runs:
        flops, evaluate = training_flops(run), run.metrics.get("metrics/evaluate.json", {})
        if flops is None or not evaluate:
            continue
        row = {"run": run.name, "params": stage_metrics(run, "pretrain").get("params"),
               **{p: get_path(run.params, p) for p in PARAMS}}
        for ckpt in ("sft", "dpo"):
            m = evaluate.get(ckpt, {})
            row[f"{ckpt}_flops"] = flops[ckpt]
            for key in ("unseen_pass_all", "unseen_pass_all_lo", "unseen_pass_all_hi", "seen_pass_all"):
                row[f"{ckpt}_{key}"] = m.get(key)
        row["base_val_bpb"] = stage_metrics(run, "pretrain").get("val_bpb")
        rows.append(row)
    return sorted(rows, key=lambda r: r["dpo_flops"])


def rechecked_rates(run: Run, split: str) -> dict[str, dict[str, float]]:
    """{ckpt: rate_with_interval("pass_all", k, n)} of the run's stored `split` generations under today's checker."""
    import dvc.api

    from pico.evaluate import check_generation, rate_with_interval
    from pico.spec import Spec

    counts: dict[str, list[int]] = {}
    text = dvc.api.read(f"eval/generations_{split}.jsonl", rev=run.rev)
    for line in text.splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        k_n = counts.setdefault(rec["checkpoint"], [0, 0])
        k_n[0] += bool(check_generation(rec["response"], Spec.from_dict(rec["spec"]))["passed_all"])
        k_n[1] += 1
    return {ckpt: rate_with_interval("pass_all", k, n) for ckpt, (k, n) in counts.items()}


def recheck(rows: list[dict], runs: list[Run]) -> list[dict]:
    """The rows with their pass rates (and intervals) replaced by today's checker's verdicts on the same stories."""
    by_name = {r.name: r for r in runs}
    for row in rows:
        for split, prefix in (("test_unseen", "unseen"), ("test", "seen")):
            rates = rechecked_rates(by_name[row["run"]], split)
            for ckpt in ("sft", "dpo"):
                for key, value in rates.get(ckpt, {}).items():
                    name = key.replace("pass_all", f"{prefix}_pass_all")
                    if prefix == "unseen" or name == "seen_pass_all":
                        row[f"{ckpt}_{name}"] = round(value, 5)
        row["rechecked"] = True
    return rows


def markdown(rows: list[dict]) -> str:
    head = ("| run | params | d_model x layers | pretrain steps | fresh_names | SFT FLOPs | SFT unseen_pass_all [95% CI] | "
            "DPO FLOPs | DPO unseen_pass_all [95% CI] | SFT / DPO seen_pass_all | base val bpb |")
    lines = [head, "|---|---:|---|---:|---:|---:|---|---:|---|---|---:|"]
    for r in rows:
        def seen(ckpt):
            v = r[f"{ckpt}_seen_pass_all"]
            return "-" if v is None else f"{v:.3f}"

        def rate(ckpt):
            v = r[f"{ckpt}_unseen_pass_all"]
            return "-" if v is None else f"{v:.3f} [{r[f'{ckpt}_unseen_pass_all_lo']:.3f}, " \
                                         f"{r[f'{ckpt}_unseen_pass_all_hi']:.3f}]"
        lines.append(f"| {r['run']} | {r['params']:,} | {r['model.d_model']} x {r['model.n_layer']} | "
                     f"{r['pretrain.max_steps']} | {fresh_names(r)} | {r['sft_flops']:.2e} | {rate('sft')} | {r['dpo_flops']:.2e} | "
                     f"{rate('dpo')} | {seen('sft')} / {seen('dpo')} | {r['base_val_bpb']} |")
    return "\n".join(lines) + "\n"


def fresh_names(row: dict) -> float:
    return float(row.get("generate.fresh_names") or 0.0)  # runs from before the knob had none


def plot(rows: list[dict], path: Path, title: str) -> list[str]:
    """One line per checkpoint, data recipe (`fresh_names`) and model width: points of different data or shape
    are not one curve. Returns the lines' labels."""
    labels = []
    fig, ax = plt.subplots(figsize=(7, 4.2))
    groups = sorted({(fresh_names(r), r["model.d_model"] or 0) for r in rows}, key=lambda g: (g[0], -g[1]))
    series = [(ckpt, group) for group in groups for ckpt in ("sft", "dpo")]
    for i, (ckpt, (share, width)) in enumerate(series):
        color = {"sft": "#4c72b0", "dpo": "#c44e52"}[ckpt]
        pts = [r for r in rows if r[f"{ckpt}_unseen_pass_all"] is not None
               and (fresh_names(r), r["model.d_model"] or 0) == (share, width)]
        if not pts:
            continue
        xs = [r[f"{ckpt}_flops"] for r in pts]
        ys = [r[f"{ckpt}_unseen_pass_all"] for r in pts]
        err = [[y - r[f"{ckpt}_unseen_pass_all_lo"] for y, r in zip(ys, pts)],
               [r[f"{ckpt}_unseen_pass_all_hi"] - y for y, r in zip(ys, pts)]]
        label = ckpt.upper()
        if len({g[0] for g in groups}) > 1:
            label += f", fresh_names {share:g}"
        if len({g[1] for g in groups}) > 1:
            label += f", d_model {width}"
        labels.append(label)
        ax.errorbar(xs, ys, yerr=err, fmt="os^v"[i // 2 % 4] + ("-" if i < 2 else "--"), color=color, capsize=3,
                    label=label, alpha=1.0 if i < 2 else 0.75)
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("training FLOPs (6 x params x tokens, all stages so far)")
    ax.set_ylabel("unseen_pass_all (95% Wilson interval)")
    ax.set_title(title, fontsize=10)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, metadata={"Software": None})
    plt.close(fig)
    return labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--purpose", default="scaling_study")
    ap.add_argument("--input", help="a saved `dvc exp show --json` instead of asking DVC")
    ap.add_argument("--name", default=None, help="output file stem (default: the purpose)")
    ap.add_argument("--runs", default=None, help="only these runs, comma-separated names (e.g. one sweep's)")
    ap.add_argument("--out-dir", default=str(RESULTS))
    ap.add_argument("--all-commits", action="store_true", help="experiments of every commit, not only HEAD's")
    ap.add_argument("--recheck", action="store_true",
                    help="re-score each run's stored generations with this checkout's checker")
    args = ap.parse_args()
    runs = parse_exp_show(json.loads(Path(args.input).read_text())) if args.input else \
        load_runs(all_commits=args.all_commits)
    keep = set(args.runs.split(",")) if args.runs else None
    chosen = [r for r in runs if r.purpose == args.purpose and not r.error
              and r.state in ("", "success")  # not queued, running or failed: their metrics are another run's
              and (keep is None or r.name in keep)]
    rows = rows_of(chosen)
    if args.recheck:
        rows = recheck(rows, chosen)
    if not rows:
        raise SystemExit(f"no finished runs with experiment.purpose {args.purpose!r} (see `pico runs`)")
    name, out = args.name or args.purpose, Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.md").write_text(markdown(rows))
    (out / f"{name}.json").write_text(json.dumps(rows, indent=2) + "\n")
    checker = " (today's checker)" if args.recheck else ""
    plot(rows, out / f"{name}.png", f"{args.purpose}: unseen-spec stories passing every check{checker}")
    print(markdown(rows))


if __name__ == "__main__":
    main()
