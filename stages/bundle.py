"""Stage `bundle`: the poster-ready results package in results/ (README, figures, tables, samples,
run snapshot, self-contained report.html)."""

from __future__ import annotations

import argparse
import datetime as dt
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from pico import bundle as B
from pico.config import PURPOSES, load_params
from pico.errors import PicoError
from pico.io import read_json, read_jsonl, write_json, write_text
from pico.stage import file_digest, run_stage

log = logging.getLogger("bundle")
METRICS = ["prepare", "tokenizer", "generate", "pretrain", "sft", "dpo", "evaluate"]


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def read_curves(plots_dir: Path) -> dict:
    curves = {}
    for stage in ("pretrain", "sft", "dpo"):
        curves[stage] = {part: pd.read_csv(plots_dir / stage / f"{part}.csv")
                         if (plots_dir / stage / f"{part}.csv").is_file() else None for part in ("train", "val")}
    return curves


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", default="metrics")
    ap.add_argument("--plots-dir", default="plots")
    ap.add_argument("--eval-dir", default="eval")
    ap.add_argument("--dataset", default="data/dataset.json")
    ap.add_argument("--dvc-yaml", default="dvc.yaml")
    ap.add_argument("--dvc-lock", default="dvc.lock")
    ap.add_argument("--out", default="results")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg, experiment = params.bundle, params.experiment
    if experiment.purpose == "uncategorized":
        log.warning("experiment.purpose is 'uncategorized'; say why this run exists (%s) so `pico runs` can "
                    "group it", ", ".join(PURPOSES[:-1]))

    metrics = {name: read_json(Path(args.metrics_dir) / f"{name}.json") for name in METRICS}
    dataset = read_json(args.dataset)
    table = B.checkpoint_table(metrics["evaluate"])
    curves = read_curves(Path(args.plots_dir))
    generations = read_jsonl(Path(args.eval_dir) / "generations_test.jsonl") if (
        Path(args.eval_dir) / "generations_test.jsonl").is_file() else []

    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    figures = tmp / "figures"
    B.fig_checkpoint_bars(table, figures / "checkpoint_bars.png", cfg.dpi)
    B.fig_check_pass_rates(table, figures / "check_pass_rates.png", cfg.dpi)
    B.fig_training_curves(curves, figures / "training_curves.png", cfg.dpi)

    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    teacher = dataset.get("teacher")
    facts = [
        f"purpose: {experiment.purpose}" + (f" - {experiment.description}" if experiment.description else ""),
        f"git {commit[:12]}{' (uncommitted changes)' if dirty else ''}, made {now}",
        f"model: {params.model.type} d{params.model.d_model} L{params.model.n_layer}, "
        f"{metrics['pretrain'].get('params', '?')} params, context {params.model.max_seq_len}",
        f"pretraining: {metrics['pretrain']['tokens_seen']} tokens of TinyStories, val {metrics['pretrain']['val_bpb']:.3f}"
        f" bits/byte (unigram baseline {metrics['pretrain']['unigram_val_loss']:.2f} nats/token)",
        f"data: {dataset['provider']} provider" + (f" (teacher {teacher['model']})" if teacher else "")
        + f", {dataset['pair_difficulty']} pairs, purpose {dataset['purpose']}",
        f"DPO: beta {params.dpo.beta}, {params.dpo.loss_type}, label smoothing {params.dpo.label_smoothing}",
    ]
    B.fig_summary(cfg.title, table, curves, facts, figures / "summary.png", cfg.dpi)

    tables = tmp / "tables"
    tables.mkdir(parents=True)
    table.to_csv(tables / "checkpoint_metrics.csv", float_format="%.6g", index_label="checkpoint")
    write_text(tables / "checkpoint_metrics.md", B.markdown_table(table) + "\n")
    stats = B.stats_table(metrics["generate"])
    write_text(tables / "dataset_stats.md", B.markdown_table(stats, index_name="split") + "\n")
    stats.to_csv(tables / "dataset_stats.csv", index_label="split")

    write_text(tmp / "samples" / "generations.md", B.samples_markdown(generations, cfg.n_samples))

    snapshot = tmp / "run_snapshot"
    (snapshot / "metrics").mkdir(parents=True)
    shutil.copy(args.params, snapshot / "params.yaml")
    for name in METRICS:
        shutil.copy(Path(args.metrics_dir) / f"{name}.json", snapshot / "metrics" / f"{name}.json")
    shutil.copy(args.dataset, snapshot / "dataset.json")
    if Path(args.dvc_lock).is_file():
        shutil.copy(args.dvc_lock, snapshot / "dvc.lock")
    data_hashes = {}
    if Path(args.dvc_lock).is_file():
        lock = yaml.safe_load(Path(args.dvc_lock).read_text()) or {}
        for stage in lock.get("stages", {}).values():
            for o in stage.get("outs", []):
                data_hashes[o["path"]] = o.get("md5")
    experiment_config = {
        "timestamp": now,
        "experiment": {"purpose": experiment.purpose, "description": experiment.description,
                       "name": B.safe_environment().get("DVC_EXP_NAME", "")},
        "git": {"commit": commit, "dirty": dirty, "branch": git("rev-parse", "--abbrev-ref", "HEAD")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": params.to_dict()["model"],
        "data": {"dataset": dataset, "paths_md5": data_hashes, "params_sha256": file_digest(args.params)},
        "hyperparameters": {k: v for k, v in params.to_dict().items() if k not in ("model", "experiment", "bundle")},
        "libraries": B.library_versions(),
        "device": B.device_info(),
        "environment": B.safe_environment(),
    }
    write_text(snapshot / "experiment_config.yaml", yaml.safe_dump(experiment_config, sort_keys=False, allow_unicode=True))

    key_cols = [c for c in B.KEY_METRICS if c in table.columns]
    readme = "\n".join([
        f"# {cfg.title}", "",
        *[f"- {f}" for f in facts], "",
        "## Pipeline", "", "```mermaid", B.mermaid_dag(yaml.safe_load(Path(args.dvc_yaml).read_text())), "```", "",
        "## Data", "",
        f"Provider **{dataset['provider']}**" + (f", teacher `{teacher['model']}` at `{teacher['base_url']}`"
                                                 if teacher else "") + f"; data purpose `{dataset['purpose']}`"
        + (f" ({dataset['description']})" if dataset.get("description") else "") + ".", "",
        B.markdown_table(stats, index_name="split"), "",
        "## Metrics per checkpoint", "",
        B.markdown_table(table, key_cols), "",
        f"Style judge (TF-IDF + logistic regression, chosen vs rejected) held-out accuracy: "
        f"{metrics['evaluate'].get('style_judge', {}).get('heldout_accuracy', float('nan')):.3f}.", "",
        "![summary](figures/summary.png)", "", "![checkpoints](figures/checkpoint_bars.png)", "",
        "![checks](figures/check_pass_rates.png)", "", "![curves](figures/training_curves.png)", "",
        "## Files", "",
        "- [report.html](report.html): everything on one page, works offline",
        "- [tables/checkpoint_metrics.csv](tables/checkpoint_metrics.csv), "
        "[tables/checkpoint_metrics.md](tables/checkpoint_metrics.md), [tables/dataset_stats.md](tables/dataset_stats.md)",
        "- [samples/generations.md](samples/generations.md): the same prompts side by side",
        "- [run_snapshot/](run_snapshot/): params, metrics, dataset stats, dvc.lock, experiment_config.yaml", "",
    ])
    write_text(tmp / "README.md", readme)
    sections = [
        ("Metrics per checkpoint", B.html_table(table, key_cols)),
        ("All metrics", B.html_table(table)),
        ("Data", B.html_table(stats, index_name="split")),
        ("Sample generations", B.samples_html(generations, cfg.n_samples)),
    ]
    figs = [("One-page summary", figures / "summary.png"), ("Metrics per checkpoint", figures / "checkpoint_bars.png"),
            ("Constraint checks", figures / "check_pass_rates.png"), ("Training curves", figures / "training_curves.png")]
    write_text(tmp / "report.html", B.report_html(cfg.title, facts, sections, figs))
    write_json(tmp / "run_snapshot" / "bundle_files.json",
               sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file()))

    leaked = B.find_secrets([tmp], B.secret_values())
    if leaked:
        shutil.rmtree(tmp)
        raise PicoError(f"refusing to write the bundle: a secret from the environment appears in {', '.join(leaked)}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the bundle appears whole or not at all
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
