"""Runs (the workspace, DVC experiments, committed runs) read from `dvc exp show --json`, grouped by purpose.

DVC is the experiment tracker; this only reads what it reports and arranges it for people.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from dataclasses import dataclass, field

from pico.compare import direction
from pico.errors import PicoError

EVALUATE = "metrics/evaluate.json"
KEY_PARAMS = ["model.type", "model.d_model", "model.n_layer", "pretrain.max_steps", "sft.lr", "sft.epochs",
              "dpo.beta", "dpo.loss_type", "dpo.label_smoothing", "generate.pair_difficulty"]
KEY_METRICS = ["dpo.unseen_pass_all", "sft.unseen_pass_all", "dpo.seen_pass_all", "dpo.pref_acc_logp_norm",
               "dpo.sft_test_unseen_loss", "pretrain.val_bpb"]


@dataclass
class Run:
    name: str
    kind: str  # workspace | commit | experiment
    rev: str
    timestamp: str | None
    params: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)  # {file: data}
    baseline: str = ""
    error: str = ""
    state: str = ""  # queued/running/failed/success for experiments

    @property
    def purpose(self) -> str:
        return str(get_path(self.params, "experiment.purpose") or "uncategorized")

    @property
    def model_type(self) -> str:
        return str(get_path(self.params, "model.type") or "transformer")


def get_path(data: dict, dotted: str):
    cur = data
    for part in dotted.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


def metric(run: Run, name: str):
    """A metric by name: `ckpt.metric` from evaluate.json, `stage.metric` from metrics/<stage>.json, or
    `path/to/file.json:key.sub`."""
    if ":" in name:
        path, key = name.split(":", 1)
        return get_path(run.metrics.get(path, {}), key)
    value = get_path(run.metrics.get(EVALUATE, {}), name)
    if value is not None:
        return value
    head, _, rest = name.partition(".")
    return get_path(run.metrics.get(f"metrics/{head}.json", {}), rest) if rest else None


def _unwrap(section: dict | None) -> dict:
    """{file: {"data": {...}}} -> {file: {...}}."""
    return {path: (v or {}).get("data", {}) for path, v in (section or {}).items()}


def _run_from(entry: dict, kind: str, baseline: str = "") -> Run:
    data = entry.get("data") or {}
    params = _unwrap(data.get("params")).get("params.yaml", {})
    error = entry.get("error") or data.get("error") or ""
    if isinstance(error, dict):
        error = error.get("msg") or error.get("type") or json.dumps(error)
    return Run(name=entry.get("name") or entry.get("rev", "")[:7], kind=kind, rev=entry.get("rev", ""),
               timestamp=data.get("timestamp"), params=params, metrics=_unwrap(data.get("metrics")),
               baseline=baseline, error=str(error or ""), state=str(data.get("status") or ""))


def parse_exp_show(rows: list[dict]) -> list[Run]:
    """Flatten `dvc exp show --json` into runs: the workspace, each commit, each experiment of a commit."""
    runs: list[Run] = []
    for entry in rows:
        kind = "workspace" if entry.get("rev") == "workspace" else "commit"
        base = _run_from(entry, kind)
        if kind == "workspace":
            base.name = "workspace"
        runs.append(base)
        for exp in entry.get("experiments") or []:
            revs = exp.get("revs") or []
            if revs:
                run = _run_from(revs[0], "experiment", baseline=base.name)
                run.name = exp.get("name") or run.name
                executor = exp.get("executor") or {}
                if executor:
                    run.state = executor.get("state", run.state)
                runs.append(run)
    return runs


def drop_duplicate_workspace(runs: list[Run]) -> list[Run]:
    """The workspace is listed unless it holds exactly another run's params and metrics (e.g. after
    `dvc exp run` applied an experiment, or right after a commit): then it is that run."""
    others = [r for r in runs if r.kind != "workspace"]
    return [r for r in runs if r.kind != "workspace" or not any(
        r.params == o.params and r.metrics == o.metrics for o in others)]


def load_runs(all_commits: bool = False, cwd: str | None = None) -> list[Run]:
    cmd = ["dvc", "exp", "show", "--json"] + (["--all-commits"] if all_commits else [])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=600)
    except FileNotFoundError:
        raise PicoError("dvc is not on PATH; activate the project's venv (source .venv/bin/activate)") from None
    if proc.returncode != 0:
        raise PicoError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip()[-500:]}")
    return drop_duplicate_workspace(parse_exp_show(json.loads(proc.stdout or "[]")))


def group_by_purpose(runs: list[Run]) -> dict[str, dict]:
    """{purpose: {"count": n, "by_model_type": {type: n}}}, most runs first."""
    groups: dict[str, Counter] = {}
    for run in runs:
        groups.setdefault(run.purpose, Counter())[run.model_type] += 1
    ordered = sorted(groups.items(), key=lambda kv: (-sum(kv[1].values()), kv[0]))
    return {p: {"count": sum(c.values()), "by_model_type": dict(sorted(c.items()))} for p, c in ordered}


def sort_runs(runs: list[Run], by: str) -> list[Run]:
    """Best first for `by` (by its direction); runs without the metric go last."""
    sign = -1 if direction(by.split(":")[-1].split(".")[-1]) == -1 else 1

    def key(run: Run):
        value = metric(run, by)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return (0, -sign * value) if ok else (1, 0)

    return sorted(runs, key=key)


def detail(run: Run, extra_metric: str | None = None) -> dict:
    metrics = {m: metric(run, m) for m in KEY_METRICS + ([extra_metric] if extra_metric else []) if m}
    return {
        "name": run.name, "kind": run.kind, "time": run.timestamp, "rev": run.rev[:7] if run.rev != "workspace" else "",
        "baseline": run.baseline, "purpose": run.purpose, "description": get_path(run.params, "experiment.description"),
        "model": run.model_type, "data_provider": get_path(run.params, "generate.provider"),
        "data_purpose": get_path(run.params, "generate.purpose"),
        "params": {p: get_path(run.params, p) for p in KEY_PARAMS}, "metrics": metrics,
        "state": run.state, "error": run.error,
    }


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def render_summary(groups: dict[str, dict]) -> str:
    lines = ["| purpose | runs | by model type |", "|---|---:|---|"]
    for purpose, g in groups.items():
        types = ", ".join(f"{t}: {n}" for t, n in g["by_model_type"].items())
        lines.append(f"| {purpose} | {g['count']} | {types} |")
    return "\n".join(lines)


def render_detail(rows: list[dict]) -> str:
    metric_names = list(rows[0]["metrics"]) if rows else []
    head = ["run", "time", "rev", "purpose", "model", "data"] + [p.split(".", 1)[1] if p.startswith("dpo.") else p
                                                                  for p in KEY_PARAMS[1:]] + metric_names
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        name = r["name"] + (" (failed)" if r["error"] else "")
        cells = [name, (r["time"] or "")[:16], r["rev"], r["purpose"], r["model"],
                 f"{r['data_provider']}/{r['data_purpose']}"]
        cells += [_fmt(r["params"][p]) for p in KEY_PARAMS[1:]] + [_fmt(r["metrics"][m]) for m in metric_names]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
