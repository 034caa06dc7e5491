"""bf16 against fp32 training quality: validation curves of two runs of the pipeline, from their DVC records.

    python benchmarks/precision_quality.py --bf16 workspace --fp32 default-fp32

Each run is `workspace`, a git revision, or a DVC experiment name (`dvc exp show`); the curves come from the
run's `plots/pretrain/val.csv` and `plots/sft/val.csv` (committed with every run: `cache: false`) and the
final numbers from its `metrics/*.json`. Writes `benchmarks/results/precision_quality.{md,png}`: the
pretraining val bits/byte and SFT val loss curves of both runs, and a table of the final pretraining
bits/byte, SFT test loss and the evaluation's pass rates with their intervals (issue 18's quality targets:
bits/byte within 0.02, the rest within their intervals).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def revision(name: str) -> str | None:
    """A git revision for a run name: None for the workspace, the experiment's ref for an experiment name."""
    if name == "workspace":
        return None
    refs = subprocess.run(["git", "for-each-ref", "refs/exps", "--format=%(refname)"], capture_output=True,
                          text=True, check=True).stdout.split()
    return next((r for r in refs if r.rsplit("/", 1)[-1] == name), name)


def read(rev: str | None, path: str) -> str:
    if rev is None:
        return Path(path).read_text()
    return subprocess.run(["git", "show", f"{rev}:{path}"], capture_output=True, text=True, check=True).stdout


def curve(rev: str | None, path: str, column: str) -> tuple[list[int], list[float]]:
    rows = list(csv.DictReader(io.StringIO(read(rev, path))))
    return [int(r["step"]) for r in rows], [float(r[column]) for r in rows]


def finals(rev: str | None) -> dict:
    pre, sft = (json.loads(read(rev, f"metrics/{s}.json")) for s in ("pretrain", "sft"))
    ev = json.loads(read(rev, "metrics/evaluate.json"))
    out = {"precision": pre.get("precision"), "tokens_per_s": pre.get("speed", {}).get("tokens_per_s"),
           "val_bpb": pre["val_bpb"], "sft_val_loss": sft["val_loss"]}
    for ckpt in ("sft", "dpo"):
        m = ev.get(ckpt, {})
        out[f"{ckpt}_test_loss"] = m.get("sft_test_loss")
        for split in ("unseen", "seen"):
            out[f"{ckpt}_{split}"] = (m.get(f"{split}_pass_all"), m.get(f"{split}_pass_all_lo"),
                                      m.get(f"{split}_pass_all_hi"))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bf16", required=True, help="the bf16 run: workspace, a git revision or an experiment name")
    ap.add_argument("--fp32", required=True, help="the fp32 run, likewise")
    ap.add_argument("--out-dir", default=str(RESULTS))
    args = ap.parse_args()
    runs = {"bf16": (args.bf16, revision(args.bf16)), "fp32": (args.fp32, revision(args.fp32))}
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, (name, rev) in runs.items():
        axes[0].plot(*curve(rev, "plots/pretrain/val.csv", "val_bpb"), "o-", ms=3, label=f"{label} ({name})")
        axes[1].plot(*curve(rev, "plots/sft/val.csv", "val_loss"), "o-", ms=3, label=f"{label} ({name})")
    axes[0].set(xlabel="pretraining step", ylabel="TinyStories val bits/byte", title="pretrain")
    axes[1].set(xlabel="SFT step", ylabel="SFT val loss (nats/token)", title="sft")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "precision_quality.png", dpi=130, metadata={"Software": None})

    f = {label: finals(rev) for label, (_, rev) in runs.items()}

    def rate(v):
        return "-" if v[0] is None else f"{v[0]:.3f} [{v[1]:.3f}, {v[2]:.3f}]"

    lines = ["| run | precision | pretrain tokens/s | val bits/byte | SFT val loss | SFT test loss | "
             "SFT unseen / seen pass_all | DPO unseen / seen pass_all |", "|---|---|---:|---:|---:|---:|---|---|"]
    for label, (name, _) in runs.items():
        m = f[label]
        lines.append(f"| {name} | {m['precision']} | {m['tokens_per_s']} | {m['val_bpb']:.4f} | "
                     f"{m['sft_val_loss']:.4f} | {m['sft_test_loss']} | {rate(m['sft_unseen'])} / "
                     f"{rate(m['sft_seen'])} | {rate(m['dpo_unseen'])} / {rate(m['dpo_seen'])} |")
    lines.append(f"\nbf16 - fp32 val bits/byte: {f['bf16']['val_bpb'] - f['fp32']['val_bpb']:+.4f}\n")
    (out / "precision_quality.md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
