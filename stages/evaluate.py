"""Stage `evaluate`: every checkpoint on held-out data, plus checked generations for fixed test specs.

Writes metrics/evaluate.json ({checkpoint: {metric: value}}), eval/ (generations, summaries, paired comparisons
base -> sft -> dpo) and plots/evaluate/checkpoints.csv."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.checkpoint import load_checkpoint
from pico.compare import KEY_METRICS
from pico.config import load_params
from pico.data import load_tokens
from pico.device import check_batch_fits, resolve_device
from pico.io import read_jsonl, write_json, write_jsonl
from pico.prompt import check_context, longest_example_tokens
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
    checkpoints = {}
    for name, path in paths.items():  # each checked before the next is loaded
        checkpoints[name] = ckpt = load_checkpoint(path, tokenizer_hash=tok.hash, device=device)
        shape = ckpt.model_cfg
        check_batch_fits("evaluate.batch_size", cfg.batch_size, shape.max_seq_len, shape.d_model, shape.n_layer,
                         device, training=False)
    sft_dir, dpo_dir = Path(args.sft_dir), Path(args.dpo_dir)
    pairs = ("prompt", "chosen", "rejected")
    sft_tests = {split: read_jsonl(sft_dir / f"{split}.jsonl", required=("spec",), texts=("prompt", "response"))
                 for split in cfg.splits}
    dpo_train, dpo_test = (read_jsonl(dpo_dir / f"{split}.jsonl", texts=pairs) for split in ("train", "test"))
    context = min(c.model_cfg.max_seq_len for c in checkpoints.values())  # before any loss or generation
    longest = longest_example_tokens(tok, [r for rows in sft_tests.values() for r in rows] + dpo_test)[1]
    check_context(context, longest, "the test examples (prompt + story + end token)")
    result = evaluate(cfg, checkpoints, tok, sft_tests=sft_tests, val_tokens=load_tokens(args.val_tokens),
                      dpo_train=dpo_train, dpo_test=dpo_test,
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
