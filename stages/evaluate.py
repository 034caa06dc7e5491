"""Stage `evaluate`: every checkpoint on held-out data, plus checked generations for fixed test specs.

Writes metrics/evaluate.json ({checkpoint: {metric: value}}), eval/generations_{split}.jsonl,
eval/summary_{split}.json, eval/comparisons.json (paired differences base -> sft -> dpo) and
plots/evaluate/checkpoints.csv.
"""

from __future__ import annotations

from pathlib import Path

from pico.checkpoint import load_checkpoint
from pico.compare import KEY_METRICS
from pico.config import load_params
from pico.data import load_tokens
from pico.device import resolve_device
from pico.io import read_jsonl, write_json, write_jsonl
from pico.recipes.evaluate import evaluate
from pico.stage import run_stage, stage_args, write_curve_csv
from pico.tokenizer import load_tokenizer


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["base", "sft", "dpo", "tokenizer", "sft-dir", "dpo-dir", "val-tokens", "out-dir",
                                "metrics", "plots-dir"], argv)
    params = load_params(args.params)
    cfg = params.evaluate
    device = resolve_device(cfg.device)
    tok = load_tokenizer(args.tokenizer)
    paths = {"base": args.base, "sft": args.sft, "dpo": args.dpo, **cfg.checkpoints}
    checkpoints = {name: load_checkpoint(path, tokenizer_hash=tok.hash, device=device) for name, path in paths.items()}
    sft_dir, dpo_dir = Path(args.sft_dir), Path(args.dpo_dir)
    pairs = ("prompt", "chosen", "rejected")
    sft_tests = {split: read_jsonl(sft_dir / f"{split}.jsonl", required=("spec",), texts=("prompt", "response"))
                 for split in cfg.splits}
    result = evaluate(cfg, checkpoints, tok, sft_tests=sft_tests, val_tokens=load_tokens(args.val_tokens),
                      dpo_train=read_jsonl(dpo_dir / "train.jsonl", texts=pairs),
                      dpo_test=read_jsonl(dpo_dir / "test.jsonl", texts=pairs),
                      gen_rows={split: rows[: cfg.n_generations] for split, rows in sft_tests.items()})
    for split in cfg.splits:
        write_jsonl(Path(args.out_dir) / f"generations_{split}.jsonl", result.records[split])
        write_json(Path(args.out_dir) / f"summary_{split}.json", result.summaries[split])
    write_json(Path(args.out_dir) / "comparisons.json", result.comparisons)
    bars = [{"checkpoint": name, **{k: result.metrics[name].get(k) for k in KEY_METRICS}} for name in checkpoints]
    write_curve_csv(Path(args.plots_dir) / "checkpoints.csv", bars, ["checkpoint", *KEY_METRICS])
    write_json(args.metrics, result.metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
