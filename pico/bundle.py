"""The results bundle: figures, tables, samples, a run snapshot and a self-contained HTML report.

`write_bundle` fills a folder from already-loaded inputs (`BundleInputs`); `stages/bundle.py` reads them,
checks the folder for secrets and puts it in place whole.
"""

from __future__ import annotations

import base64
import dataclasses
import html
import os
import platform
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import yaml

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from pico.checks import CHECKS, object_core  # noqa: E402
from pico.compare import KEY_METRICS, direction  # noqa: E402
from pico.config import Params  # noqa: E402
from pico.errors import SECRET_NAME, URL_USERINFO, secret_values  # noqa: E402, F401 (secret_values: stages/bundle.py)
from pico.io import write_json, write_text  # noqa: E402

# environment variables a snapshot may record; anything that looks like a secret is dropped even if listed
ENV_ALLOW = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONHASHSEED", "WORLD_SIZE", "RANK",
             "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_JOB_ID", "SLURM_NNODES", "DVC_EXP_NAME",
             "DVC_EXP_BASELINE_REV", "DVC_ROOT", "CI", "PICO_TINYSTORIES")


# ----------------------------------------------------------------------------------------------- pipeline
def _paths(entries) -> list[str]:
    out = []
    for e in entries or []:
        out += list(e) if isinstance(e, dict) else [e]
    return out


def stage_edges(dvc_yaml: dict) -> set[tuple[str, str]]:
    """(producer, consumer) wherever a stage depends on (a path under) another stage's output."""
    stages = dvc_yaml.get("stages", {})
    outs = {name: _paths(s.get("outs")) + _paths(s.get("metrics")) + _paths(s.get("plots")) for name, s in stages.items()}
    edges = set()
    for name, stage in stages.items():
        for producer, produced in outs.items():
            if producer != name and any(
                    dep == o or dep.startswith(o.rstrip("/") + "/") or o.startswith(dep.rstrip("/") + "/")
                    for dep in _paths(stage.get("deps")) for o in produced):
                edges.add((producer, name))
    return edges


def mermaid_dag(dvc_yaml: dict) -> str:
    """A mermaid flowchart of the stages, without the edges implied by longer paths (transitive reduction)."""
    stages = list(dvc_yaml.get("stages", {}))
    edges = stage_edges(dvc_yaml)
    succ = {s: {b for a, b in edges if a == s} for s in stages}

    def reachable(a: str, b: str, skip: tuple[str, str]) -> bool:
        seen, todo = set(), [a]
        while todo:
            x = todo.pop()
            for y in succ[x]:
                if (x, y) != skip and y not in seen:
                    if y == b:
                        return True
                    seen.add(y)
                    todo.append(y)
        return False

    kept = [(a, b) for a in stages for b in stages if (a, b) in edges and not reachable(a, b, (a, b))]
    return "\n".join(["flowchart LR", *[f"  {s}([{s}])" for s in stages], *[f"  {a} --> {b}" for a, b in kept]])


# ----------------------------------------------------------------------------------------------- tables
def checkpoint_table(evaluate: dict) -> pd.DataFrame:
    """Rows: checkpoints; columns: every numeric metric evaluate wrote for them."""
    rows = {name: m for name, m in evaluate.items()
            if name not in ("style_judge", "checker") and isinstance(m, dict)}
    return pd.DataFrame.from_dict(rows, orient="index")


def markdown_table(df: pd.DataFrame, columns: list[str] | None = None, index_name: str = "checkpoint") -> str:
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    head = f"| {index_name} | " + " | ".join(cols) + " |"
    sep = "|---|" + "---:|" * len(cols)
    body = [f"| {idx} | " + " | ".join(_cell(df.loc[idx, c]) for c in cols) + " |" for idx in df.index]
    return "\n".join([head, sep, *body])


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def stats_table(generate_metrics: dict) -> pd.DataFrame:
    """Dataset quick stats: one row per dataset/split, the p50 and max of each measure."""
    rows = {}
    for dataset in ("sft", "dpo"):
        for split, s in generate_metrics.get(dataset, {}).items():
            row = {"n_rows": s["n_rows"]}
            for measure in ("prompt_chars", "answer_chars", "prompt_tokens", "answer_tokens"):
                if measure in s:
                    row[f"{measure} p50"] = s[measure]["p50"]
                    row[f"{measure} max"] = s[measure]["max"]
            rows[f"{dataset}/{split}"] = row
    return pd.DataFrame.from_dict(rows, orient="index")


# ----------------------------------------------------------------------------------------------- figures
def _save(fig, path: Path, dpi: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)


def _bar(ax, table: pd.DataFrame, metric: str) -> None:
    values = table[metric].astype(float)
    colors = ["#7a7a7a", "#4c72b0", "#c44e52", "#55a868", "#8172b2", "#937860"][: len(values)]
    errors = None
    if f"{metric}_lo" in table.columns and f"{metric}_hi" in table.columns:  # a rate with its 95% interval
        errors = [values - table[f"{metric}_lo"].astype(float), table[f"{metric}_hi"].astype(float) - values]
    ax.bar(values.index.astype(str), values.values, color=colors, yerr=errors, capsize=4 if errors else 0)
    arrow = {1: "higher is better", -1: "lower is better", 0: ""}[direction(metric)]
    ax.set_title(f"{metric}\n({arrow}{', 95% interval' if errors else ''})" if arrow else metric, fontsize=9)
    ax.tick_params(labelsize=8)
    if is_rate(metric):
        ax.set_ylim(0, 1.08)  # rates: the whole [0, 1] scale, so an all-zero row still reads right
    elif (values >= 0).all():
        ax.set_ylim(bottom=0)
    for i, v in enumerate(values.values):
        ax.annotate(f"{v:.3g}", (i, v), ha="center", va="bottom", fontsize=7)


def fig_checkpoint_bars(table: pd.DataFrame, path: Path, dpi: int) -> None:
    metrics = [m for m in KEY_METRICS if m in table.columns][:9]
    n_cols = 3
    n_rows = max(1, -(-len(metrics) // n_cols))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(11, 3.2 * n_rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _bar(ax, table, metric)
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    fig.suptitle("What each training step did: metrics per checkpoint", fontsize=12)
    fig.tight_layout()
    _save(fig, path, dpi)


def is_rate(metric: str) -> bool:
    return "pass_" in metric or "pref_acc" in metric or "style_score" in metric


def fig_headline(table: pd.DataFrame, path: Path, dpi: int) -> None:
    """What the pipeline exists to show: stories that follow specs made of values no training data used."""
    metrics = [m for m in ("unseen_pass_all", "seen_pass_all") if m in table.columns]
    fig, axes = plt.subplots(1, max(len(metrics), 1), figsize=(4.2 * max(len(metrics), 1), 3.4), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        _bar(ax, table, metric)
    fig.suptitle("Stories passing every check, per checkpoint (unseen: specs of held-out values)", fontsize=10)
    fig.tight_layout()
    _save(fig, path, dpi)


def fig_check_pass_rates(table: pd.DataFrame, path: Path, dpi: int, prefix: str = "unseen_") -> None:
    cols = [f"{prefix}pass_{c}" for c in CHECKS if f"{prefix}pass_{c}" in table.columns]
    cols += [f"{prefix}pass_all"] if f"{prefix}pass_all" in table else []
    fig, ax = plt.subplots(figsize=(11, 3.8))
    if cols:
        width = 0.8 / max(len(table.index), 1)
        for i, name in enumerate(table.index):
            xs = [j + i * width for j in range(len(cols))]
            ax.bar(xs, table.loc[name, cols].astype(float).values, width=width, label=str(name))
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(cols))])
        ax.set_xticklabels([c.removeprefix(f"{prefix}pass_") for c in cols], rotation=20, fontsize=8)
        ax.set_ylim(0, 1.05)
        ax.legend(fontsize=8)
    ax.set_title(f"Generations passing each check ({prefix.rstrip('_')} test specs)")
    _save(fig, path, dpi)


def _curve(ax, df: pd.DataFrame | None, y: str, label: str, **kw) -> None:
    if df is not None and y in df.columns and len(df):
        ax.plot(df["step"], df[y], label=label, **kw)


def fig_training_curves(curves: dict[str, dict[str, pd.DataFrame | None]], path: Path, dpi: int) -> None:
    """Pretrain, SFT and DPO loss, DPO rewards (chosen/rejected/margins) and reward accuracy."""
    fig, axes = plt.subplots(1, 4, figsize=(17, 3.6))
    for ax, stage in zip(axes[:3], ("pretrain", "sft", "dpo")):
        train, val = curves.get(stage, {}).get("train"), curves.get(stage, {}).get("val")
        _curve(ax, train, "loss", "train", alpha=0.6, linewidth=0.9)
        _curve(ax, val, "val_loss", "val", marker="o", markersize=3)
        ax.set_title(f"{stage} loss", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
    ax = axes[3]
    train = curves.get("dpo", {}).get("train")
    for name in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        _curve(ax, train, name, name.split("/")[1], linewidth=1)
    ax.set_title("DPO rewards (train)", fontsize=10)
    ax.set_xlabel("step")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path, dpi)


def fig_summary(title: str, table: pd.DataFrame, curves: dict, facts: list[str], path: Path, dpi: int) -> None:
    """One page for a poster: facts, the three training curves, and the checkpoint comparison."""
    fig = plt.figure(figsize=(11.7, 8.3))  # A4 landscape
    grid = fig.add_gridspec(3, 3, height_ratios=[0.5, 1, 1])
    head = fig.add_subplot(grid[0, :])
    head.axis("off")
    head.text(0, 0.95, title, fontsize=14, weight="bold", va="top")
    head.text(0, 0.55, "\n".join(facts), fontsize=8.5, va="top", family="monospace")
    for i, stage in enumerate(("pretrain", "sft", "dpo")):
        ax = fig.add_subplot(grid[1, i])
        _curve(ax, curves.get(stage, {}).get("train"), "loss", "train", alpha=0.6, linewidth=0.8)
        _curve(ax, curves.get(stage, {}).get("val"), "val_loss", "val", marker="o", markersize=2.5)
        ax.set_title(f"{stage} loss", fontsize=9)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7)
    for i, metric in enumerate([m for m in ("unseen_pass_all", "sft_test_unseen_loss", "pref_acc_logp")
                                if m in table.columns]):
        _bar(fig.add_subplot(grid[2, i]), table, metric)
    fig.tight_layout()
    _save(fig, path, dpi)


# ----------------------------------------------------------------------------------------------- samples
def samples_markdown(records: list[dict], n: int) -> str:
    """The same prompts, side by side across checkpoints."""
    by_index: dict[int, list[dict]] = {}
    for r in records:
        by_index.setdefault(r["index"], []).append(r)
    parts = ["# Sample generations", "",
             "The same test specs for every checkpoint, sampled with the same seed. "
             "Failed checks are listed under each story.", ""]
    for index in sorted(by_index)[:n]:
        rows = by_index[index]
        spec = rows[0]["spec"]
        first = rows[0]
        parts += [f"## Spec {index + 1}: {spec['title']}", "",
                  *[f"- **{k}**: {v}" for k, v in spec.items() if k != "title"], "",
                  f"_temperature {first['temperature']}, top-p {first['top_p']}, max {first['max_new_tokens']} new "
                  f"tokens, seed {first['seed']}_", ""]
        for r in rows:
            parts += story_block(r["checkpoint"], r["response"].strip(), r["failed"],
                                 f" Style score {r['style_score']:.2f}.")
    return "\n".join(parts)


def story_block(name: str, story: str, failed: list[str], note: str = "") -> list[str]:
    """A checkpoint's story as a Markdown quote (paragraphs kept), then the checks it failed."""
    verdict = ", ".join(failed) if failed else "none (passes every check)"
    return [f"### {name}", "", *["> " + line if line else ">" for line in (story or "(empty)").split("\n")], "",
            f"Failed checks: {verdict}.{note}", ""]


def highlighted(story: str, spec: dict) -> str:
    """The story with the spec's object (its core), taboo and twist in bold wherever it says them word for word."""
    phrases = [object_core(spec.get("object", "")), spec.get("taboo", ""), spec.get("twist", "")]
    spans: list[tuple[int, int]] = []
    for phrase in sorted((p for p in phrases if p.strip()), key=len, reverse=True):
        for m in re.finditer(re.escape(phrase.strip()), story, flags=re.IGNORECASE):
            if all(m.end() <= a or m.start() >= b for a, b in spans):  # the longest phrase wins an overlap
                spans.append(m.span())
    out, at = [], 0
    for a, b in sorted(spans):
        out += [story[at:a], "**", story[a:b], "**"]
        at = b
    return "".join(out + [story[at:]])


def passing_markdown(records: list[dict], checkpoint: str = "dpo", contrast: str = "sft") -> str:
    """Every spec whose `checkpoint` story passes every check, its spec's values in bold where the story says
    them word for word, beside the `contrast` checkpoint's story for the same spec."""
    by_index: dict[int, dict[str, dict]] = {}
    for r in records:
        by_index.setdefault(r["index"], {})[r["checkpoint"]] = r
    scored = [i for i in sorted(by_index) if checkpoint in by_index[i]]
    passing = [i for i in scored if not by_index[i][checkpoint]["failed"]]
    parts = [f"# Unseen specs whose {checkpoint} story passes every check", "",
             f"{len(passing)} of {len(scored)} unseen specs (values held out of all training data), all of them, in "
             f"spec order. The spec's object, taboo and twist are in **bold** where the story says them word for "
             f"word (the checker also accepts a sentence that states them in other words); the {contrast} model's "
             f"story for the same spec follows.", ""]
    for index in passing:
        rows = by_index[index]
        spec = rows[checkpoint]["spec"]
        parts += [f"## Spec {index + 1}: {spec['title']}", "",
                  *[f"- **{k}**: {v}" for k, v in spec.items() if k != "title"], ""]
        for name in (checkpoint, contrast):
            r = rows.get(name)
            if r is None:
                continue
            parts += story_block(name, highlighted(r["response"].strip(), spec), r["failed"])
    return "\n".join(parts)


# ----------------------------------------------------------------------------------------------- snapshot
def safe_environment(env: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ if env is None else env)
    return {k: env[k] for k in ENV_ALLOW if k in env and not SECRET_NAME.search(k)}


def find_secrets(paths: list[Path], secrets: list[str]) -> list[str]:
    """Files under `paths` that contain any of `secrets`, or a URL with user info (`https://user:pw@host`):
    the bundle must never hold one."""
    hits = []
    needles = [s.encode() for s in secrets]
    userinfo = re.compile(URL_USERINFO.pattern.encode())
    for root in paths:
        for path in [root] if root.is_file() else sorted(p for p in root.rglob("*") if p.is_file()):
            data = path.read_bytes()
            if any(n in data for n in needles) or userinfo.search(data):
                hits.append(str(path))
    return hits


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "dvc", "tiktoken", "rustbpe", "numpy", "pandas", "matplotlib", "scikit-learn",
                 "jsonlines", "pyyaml", "pico"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def device_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cuda_available": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["cuda_device"] = torch.cuda.get_device_name(0)
        info["cuda_version"] = torch.version.cuda
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    return info


# ----------------------------------------------------------------------------------------------- report
def image_data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def html_table(df: pd.DataFrame, columns: list[str] | None = None, index_name: str = "checkpoint") -> str:
    cols = [c for c in (columns or list(df.columns)) if c in df.columns]
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [index_name, *cols])
    rows = "".join("<tr><th>" + html.escape(str(i)) + "</th>" + "".join(
        f"<td>{html.escape(_cell(df.loc[i, c]))}</td>" for c in cols) + "</tr>" for i in df.index)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def report_html(title: str, intro: list[str], sections: list[tuple[str, str]], figures: list[tuple[str, Path]]) -> str:
    """A single HTML file with every figure inlined: opens in a browser with no network."""
    figs = "".join(f'<figure><img alt="{html.escape(cap)}" src="{image_data_uri(p)}"><figcaption>'
                   f"{html.escape(cap)}</figcaption></figure>" for cap, p in figures)
    body = "".join(f"<section><h2>{html.escape(h)}</h2>{content}</section>" for h, content in sections)
    facts = "".join(f"<li>{html.escape(x)}</li>" for x in intro)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; font-size: 13px; margin: 1em 0; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
thead th {{ background: #f2f2f2; }}
figure {{ margin: 1.5em 0; }} img {{ max-width: 100%; }}
pre {{ white-space: pre-wrap; background: #f7f7f7; padding: 8px; font-size: 13px; }}
.fail {{ color: #b00; }} .pass {{ color: #070; }}
</style></head>
<body><h1 id="title">{html.escape(title)}</h1><ul>{facts}</ul>{figs}{body}
<script>
// lets a headless browser confirm that every inlined figure decoded
window.addEventListener("load", () => {{
  const imgs = Array.from(document.images);
  const ok = imgs.filter(i => i.complete && i.naturalWidth > 0).length;
  document.documentElement.setAttribute("data-images-ok", ok + "/" + imgs.length);
}});
</script></body></html>
"""


def samples_html(records: list[dict], n: int) -> str:
    by_index: dict[int, list[dict]] = {}
    for r in records:
        by_index.setdefault(r["index"], []).append(r)
    out = []
    for index in sorted(by_index)[:n]:
        rows = by_index[index]
        spec = rows[0]["spec"]
        out.append(f"<h3>{html.escape(spec['title'])}</h3><p>" + "; ".join(
            f"<b>{html.escape(k)}</b>: {html.escape(v)}" for k, v in spec.items() if k != "title") + "</p>")
        for r in rows:
            verdict = (f'<span class="fail">failed: {html.escape(", ".join(r["failed"]))}</span>' if r["failed"]
                       else '<span class="pass">passes every check</span>')
            out.append(f"<h4>{html.escape(r['checkpoint'])} — {verdict}</h4><pre>{html.escape(r['response'])}</pre>")
    return "".join(out)


# ----------------------------------------------------------------------------------------------- the bundle
@dataclass
class BundleInputs:
    params: Params
    metrics: dict[str, dict]  # stage name -> metrics/<stage>.json
    dataset: dict  # data/dataset.json
    curves: dict  # stage -> {"train": DataFrame | None, "val": DataFrame | None}
    generations: list[dict]  # eval/generations_test_unseen.jsonl: the specs no training data used
    comparisons: dict  # eval/comparisons.json: paired pass_all differences base -> sft -> dpo
    dvc_yaml: dict
    lock: dict  # dvc.lock ({} when there is none yet)
    files: dict[str, Path]  # {path in run_snapshot/: file} copied as they are (params, metrics, dataset, lock)


def git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_facts(inputs: BundleInputs, commit: str, dirty: bool, now: str) -> list[str]:
    """The lines under the title: what this run is, on what, trained how."""
    p, pre, teacher = inputs.params, inputs.metrics["pretrain"], inputs.dataset.get("teacher")
    return [
        f"purpose: {p.experiment.purpose}" + (f" - {p.experiment.description}" if p.experiment.description else ""),
        f"git {commit[:12]}{' (uncommitted changes)' if dirty else ''}, made {now}",
        f"model: {p.model.type} d{p.model.d_model} L{p.model.n_layer}, {pre.get('params', '?')} params, "
        f"context {p.model.max_seq_len}",
        f"pretraining: {pre['tokens_seen']} tokens of TinyStories, val {pre['val_bpb']:.3f} bits/byte "
        f"(unigram baseline {pre['unigram_val_loss']:.2f} nats/token)",
        f"data: {inputs.dataset['provider']} provider" + (f" (teacher {teacher['model']})" if teacher else "")
        + f", {inputs.dataset['pair_difficulty']} pairs, purpose {inputs.dataset['purpose']}",
        f"DPO: beta {p.dpo.beta}, {p.dpo.loss_type}, label smoothing {p.dpo.label_smoothing}",
    ]


def experiment_config(inputs: BundleInputs, commit: str, dirty: bool, now: str, params_sha256: str) -> dict:
    """run_snapshot/experiment_config.yaml: everything needed to say how this run was made."""
    params = dataclasses.asdict(inputs.params)
    data_hashes = {o["path"]: o.get("md5") for stage in inputs.lock.get("stages", {}).values()
                   for o in stage.get("outs", [])}
    return {
        "timestamp": now,
        "experiment": {"purpose": inputs.params.experiment.purpose,
                       "description": inputs.params.experiment.description,
                       "name": safe_environment().get("DVC_EXP_NAME", "")},
        "git": {"commit": commit, "dirty": dirty, "branch": git("rev-parse", "--abbrev-ref", "HEAD")},
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "model": params["model"],
        "data": {"dataset": inputs.dataset, "paths_md5": data_hashes, "params_sha256": params_sha256},
        "hyperparameters": {k: v for k, v in params.items() if k not in ("model", "experiment", "bundle")},
        "libraries": library_versions(),
        "device": device_info(),
        "environment": safe_environment(),
    }


def comparison_lines(comparisons: dict) -> list[str]:
    """One sentence per step: the change in unseen_pass_all on the same specs, its interval and p-value."""
    lines = []
    for title, splits in comparisons.items():
        d = splits.get("test_unseen")
        if d:
            b, a = title.split(" vs ")
            verdict = "more than noise" if d["p_value"] < 0.05 else "within noise"
            lines.append(f"- **{title}**: unseen_pass_all {d['rate_a']:.3f} -> {d['rate_b']:.3f}, difference "
                         f"{d['diff']:+.3f} (95% CI {d['lo']:+.3f} to {d['hi']:+.3f}; {d['b_only']} specs only {b} "
                         f"passes, {d['a_only']} only {a}; McNemar p = {d['p_value']:.3g}: {verdict}).")
    return lines


def readme_markdown(title: str, facts: list[str], inputs: BundleInputs, table: pd.DataFrame,
                    stats: pd.DataFrame) -> str:
    teacher, dataset = inputs.dataset.get("teacher"), inputs.dataset
    judge = inputs.metrics["evaluate"].get("style_judge", {}).get("heldout_accuracy", float("nan"))
    checker = inputs.metrics["evaluate"].get("checker", {})
    return "\n".join([
        f"# {title}", "", *[f"- {f}" for f in facts], "",
        "## What each step did", "", "![headline](figures/headline.png)", "",
        *comparison_lines(inputs.comparisons), "",
        "## Pipeline", "", "```mermaid", mermaid_dag(inputs.dvc_yaml), "```", "",
        "## Data", "",
        f"Provider **{dataset['provider']}**" + (f", teacher `{teacher['model']}` at `{teacher['base_url']}`"
                                                 if teacher else "") + f"; data purpose `{dataset['purpose']}`"
        + (f" ({dataset['description']})" if dataset.get("description") else "") + ".", "",
        markdown_table(stats, index_name="split"), "",
        "## Metrics per checkpoint", "", markdown_table(table, [c for c in KEY_METRICS if c in table.columns]), "",
        "Rates are over the generations of each split (`n` in eval/summary_*.json) with Wilson 95% intervals "
        "(`_lo`, `_hi` in tables/checkpoint_metrics.csv); `unseen_` specs use only values held out of all "
        "training data, `seen_` specs values SFT and DPO trained on.", "",
        f"The checker on its own fixture set (pico/checker_fixtures.jsonl): adversarial stories passing every check "
        f"{checker.get('checker_adversarial_pass_rate', float('nan')):.3f} (should be 0), reference stories "
        f"{checker.get('checker_reference_pass_rate', float('nan')):.3f} (should be >= 0.95). Style judge (TF-IDF + "
        f"logistic regression, chosen vs rejected) held-out accuracy: {judge:.3f}.", "",
        "![summary](figures/summary.png)", "", "![checkpoints](figures/checkpoint_bars.png)", "",
        "![checks](figures/check_pass_rates.png)", "", "![curves](figures/training_curves.png)", "",
        "## Files", "",
        "- [report.html](report.html): everything on one page, works offline",
        "- [tables/checkpoint_metrics.csv](tables/checkpoint_metrics.csv), "
        "[tables/checkpoint_metrics.md](tables/checkpoint_metrics.md), "
        "[tables/dataset_stats.md](tables/dataset_stats.md)",
        "- [samples/generations.md](samples/generations.md): the same prompts side by side",
        "- [samples/passing.md](samples/passing.md): every unseen spec whose DPO story passes every check, its "
        "values in bold, beside SFT's story",
        "- [run_snapshot/](run_snapshot/): params, metrics, dataset stats, dvc.lock, experiment_config.yaml", "",
    ])


def write_bundle(out: Path, inputs: BundleInputs, params_sha256: str, now: str) -> None:
    """Every file of the bundle, into the (new, empty) folder `out`; `now` is the build time it records."""
    cfg = inputs.params.bundle
    table = checkpoint_table(inputs.metrics["evaluate"])
    commit = git("rev-parse", "HEAD") or "unknown"
    dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    facts = run_facts(inputs, commit, dirty, now)
    figures = out / "figures"
    fig_headline(table, figures / "headline.png", cfg.dpi)
    fig_checkpoint_bars(table, figures / "checkpoint_bars.png", cfg.dpi)
    fig_check_pass_rates(table, figures / "check_pass_rates.png", cfg.dpi)
    fig_training_curves(inputs.curves, figures / "training_curves.png", cfg.dpi)
    fig_summary(cfg.title, table, inputs.curves, facts, figures / "summary.png", cfg.dpi)

    tables = out / "tables"
    tables.mkdir(parents=True)
    table.to_csv(tables / "checkpoint_metrics.csv", float_format="%.6g", index_label="checkpoint")
    write_text(tables / "checkpoint_metrics.md", markdown_table(table) + "\n")
    stats = stats_table(inputs.metrics["generate"])
    write_text(tables / "dataset_stats.md", markdown_table(stats, index_name="split") + "\n")
    stats.to_csv(tables / "dataset_stats.csv", index_label="split")
    write_text(out / "samples" / "generations.md", samples_markdown(inputs.generations, cfg.n_samples))
    write_text(out / "samples" / "passing.md", passing_markdown(inputs.generations))

    snapshot = out / "run_snapshot"
    (snapshot / "metrics").mkdir(parents=True)
    for name, path in inputs.files.items():
        shutil.copy(path, snapshot / name)
    write_text(snapshot / "experiment_config.yaml", yaml.safe_dump(
        experiment_config(inputs, commit, dirty, now, params_sha256), sort_keys=False, allow_unicode=True))

    key_cols = [c for c in KEY_METRICS if c in table.columns]
    write_text(out / "README.md", readme_markdown(cfg.title, facts, inputs, table, stats))
    steps = "".join(f"<li>{html.escape(line.removeprefix('- ').replace('**', ''))}</li>"
                    for line in comparison_lines(inputs.comparisons))
    sections = [("What each step did", f"<ul>{steps}</ul>"),
                ("Metrics per checkpoint", html_table(table, key_cols)), ("All metrics", html_table(table)),
                ("Data", html_table(stats, index_name="split")),
                ("Sample generations", samples_html(inputs.generations, cfg.n_samples))]
    figs = [("Stories passing every check (95% intervals)", figures / "headline.png"),
            ("One-page summary", figures / "summary.png"), ("Metrics per checkpoint", figures / "checkpoint_bars.png"),
            ("Constraint checks", figures / "check_pass_rates.png"),
            ("Training curves", figures / "training_curves.png")]
    write_text(out / "report.html", report_html(cfg.title, facts, sections, figs))
    write_json(snapshot / "bundle_files.json", sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()))
