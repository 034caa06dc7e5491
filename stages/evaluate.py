"""Stage `evaluate`: every checkpoint on held-out data, plus checked generations for fixed test specs.

Writes metrics/evaluate.json ({checkpoint: {metric: value}}), eval/generations_{split}.jsonl,
eval/summary_{split}.json and plots/evaluate/checkpoints.csv.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.data import TokenWindows, load_tokens, token_byte_lengths
from pico.errors import DataError
from pico.evaluate import StyleJudge, check_generation, lm_metrics, masked_loss, preference_metrics, summarize_generations
from pico.finetune import encode_dpo_rows, encode_sft_rows, pair_logps
from pico.io import progress_bar, read_jsonl, write_json, write_jsonl
from pico.prompt import encode_prompt
from pico.sampling import SamplingConfig, generate
from pico.spec import Spec
from pico.stage import run_stage, write_curve_csv
from pico.tokenizer import load_tokenizer
from pico.train import resolve_device

log = logging.getLogger("evaluate")
BAR_METRICS = ["sft_test_loss", "dpo_test_pref_acc", "dpo_test_reward_margin", "val_loss", "val_bpb", "pass_mean",
               "pass_all", "style_score", "repeated_4gram_rate"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--base", default="checkpoints/base.pt")
    ap.add_argument("--sft", default="checkpoints/sft.pt")
    ap.add_argument("--dpo", default="checkpoints/dpo.pt")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--sft-dir", default="data/sft")
    ap.add_argument("--dpo-dir", default="data/dpo")
    ap.add_argument("--val-tokens", default="data/tokens/val.bin")
    ap.add_argument("--out-dir", default="eval")
    ap.add_argument("--metrics", default="metrics/evaluate.json")
    ap.add_argument("--plots-dir", default="plots/evaluate")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    cfg, beta = params.evaluate, params.dpo.beta
    device = resolve_device(cfg.device)

    tok = load_tokenizer(args.tokenizer)
    paths = {"base": args.base, "sft": args.sft, "dpo": args.dpo, **cfg.checkpoints}
    checkpoints = {name: load_checkpoint(path, tokenizer_hash=tok.hash, device=device) for name, path in paths.items()}
    context = min(c.model_cfg.max_seq_len for c in checkpoints.values())

    sft_test = read_jsonl(Path(args.sft_dir) / "test.jsonl", required=("prompt", "response", "spec"))
    sft_encoded, _ = encode_sft_rows(tok, sft_test, context, "left")
    dpo_train = read_jsonl(Path(args.dpo_dir) / "train.jsonl", required=("prompt", "chosen", "rejected"))
    dpo_test = read_jsonl(Path(args.dpo_dir) / "test.jsonl", required=("prompt", "chosen", "rejected"))
    dpo_pairs, _ = encode_dpo_rows(tok, dpo_test, context, "left")
    if not sft_encoded or not dpo_pairs:
        raise DataError("no test row fits in the models' context; check the generate and model params")

    val_tokens = load_tokens(args.val_tokens)
    val_batches = TokenWindows(val_tokens, min(context, len(val_tokens) - 1), cfg.batch_size, cfg.seed,
                               token_byte_lengths(tok)).eval_batches(cfg.val_batches)

    judge = StyleJudge(seed=cfg.seed).fit([r["chosen"] for r in dpo_train], [r["rejected"] for r in dpo_train])
    judge_accuracy = judge.accuracy([r["chosen"] for r in dpo_test], [r["rejected"] for r in dpo_test])

    sampling = SamplingConfig(temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens, no_repeat_ngram=cfg.no_repeat_ngram, seed=cfg.seed)
    gen_rows = {split: read_jsonl(Path(args.sft_dir) / f"{split}.jsonl", required=("prompt", "spec"))[: cfg.n_generations]
                for split in cfg.splits}

    reference = pair_logps(checkpoints["sft"].model, dpo_pairs, cfg.batch_size, device)
    metrics: dict[str, dict] = {}
    records: dict[str, list[dict]] = {split: [] for split in cfg.splits}
    summaries: dict[str, dict] = {split: {} for split in cfg.splits}
    for name, ckpt in progress_bar(iterable=list(checkpoints.items()), desc="evaluate", unit="ckpt", leave=False):
        model = ckpt.model
        m: dict[str, float] = {"sft_test_loss": masked_loss(model, sft_encoded, cfg.batch_size, device)}
        pref = preference_metrics(pair_logps(model, dpo_pairs, cfg.batch_size, device), reference, beta)
        m["dpo_test_pref_acc"], m["dpo_test_reward_margin"] = pref["pref_acc"], pref["reward_margin"]
        m.update(lm_metrics(model, val_batches, device))
        for split, rows in gen_rows.items():
            prefix = "" if split == "test" else f"{split}_"
            prompts = [encode_prompt(tok, r["prompt"]) for r in rows]
            outputs = generate(model, prompts, sampling, tok.eot_id, batch_size=cfg.batch_size, device=device)
            texts = [tok.decode(ids) for ids in outputs]
            style = judge.scores(texts)
            split_records = []
            for i, (row, text, score) in enumerate(zip(rows, texts, style)):
                split_records.append({
                    "checkpoint": name, "split": split, "index": i, "prompt": row["prompt"], "response": text,
                    "spec": row["spec"], "temperature": cfg.temperature, "top_p": cfg.top_p, "top_k": cfg.top_k,
                    "max_new_tokens": cfg.max_new_tokens, "seed": cfg.seed, "new_tokens": len(outputs[i]),
                    "style_score": round(score, 5), **check_generation(text, Spec.from_dict(row["spec"])),
                })
            records[split] += split_records
            summary = summarize_generations(split_records)
            summaries[split][name] = summary
            m.update({f"{prefix}{k}": v for k, v in summary.items() if isinstance(v, float)})
            m[f"{prefix}style_score"] = sum(style) / max(len(style), 1)
        metrics[name] = {k: round(v, 5) for k, v in m.items()}
        log.info("%s: sft test loss %.3f, pref acc %.3f, pass_all %s", name, m["sft_test_loss"],
                 m["dpo_test_pref_acc"], m.get("pass_all"))
    metrics["style_judge"] = {"heldout_accuracy": round(judge_accuracy, 5), "train_pairs": len(dpo_train)}

    out = Path(args.out_dir)
    for split in cfg.splits:
        write_jsonl(out / f"generations_{split}.jsonl", records[split])
        write_json(out / f"summary_{split}.json", summaries[split])
    bars = [{"checkpoint": name, **{k: metrics[name].get(k) for k in BAR_METRICS}} for name in checkpoints]
    write_curve_csv(Path(args.plots_dir) / "checkpoints.csv", bars, ["checkpoint", *BAR_METRICS])
    write_json(args.metrics, metrics)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
