"""Stage `generate`: SFT and DPO datasets for the horror-story task (template writer or teacher LLM)."""

from __future__ import annotations

import argparse
import logging
import os
from collections import Counter
from pathlib import Path

from pico.config import SPLITS, load_params
from pico.generate import DATASETS, dataset_stats, generate_rows
from pico.io import progress_bar, write_json, write_jsonl, write_text
from pico.stage import file_digest, run_stage
from pico.teacher import TeacherClient, api_key_from_env
from pico.tokenizer import load_tokenizer

log = logging.getLogger("generate")
CACHE_README = "Teacher LLM responses, one JSON file per request, keyed by the request. Safe to delete.\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json", help="for token stats, if present")
    ap.add_argument("--out-dir", default="data")
    ap.add_argument("--cache-dir", default="data/teacher_cache")
    ap.add_argument("--metrics", default="metrics/generate.json")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).generate

    client = None
    if cfg.provider == "openai":  # check the key before any work
        client = TeacherClient(cfg.teacher, args.cache_dir, api_key_from_env(os.environ, cfg.teacher), seed=cfg.seed)
    tok = load_tokenizer(args.tokenizer) if Path(args.tokenizer).is_file() else None

    total = sum(sum(getattr(cfg, f"{d}_splits").values()) for d in DATASETS)
    with progress_bar(total=total, desc="generate", unit="row", leave=False) as bar:
        result = generate_rows(cfg, client, progress=bar)

    out = Path(args.out_dir)
    metrics: dict = {}
    files: dict[str, str] = {}
    for dataset in DATASETS:
        metrics[dataset] = {}
        for split in SPLITS:
            rows = result.rows[(dataset, split)]
            if not rows:
                log.error("no usable rows left for %s/%s", dataset, split)
            path = out / dataset / f"{split}.jsonl"
            write_jsonl(path, rows)
            files[f"{dataset}/{split}.jsonl"] = file_digest(path)
            metrics[dataset][split] = dataset_stats(rows, tok)
            if dataset == "dpo":
                metrics[dataset][split]["pair_kinds"] = dict(sorted(Counter(r["pair_kind"] for r in rows).items()))
    metrics["dropped"] = dict(sorted(result.dropped.items()))
    metrics["regenerated"] = result.regenerated
    if client is not None:
        metrics["teacher"] = dict(sorted(client.stats.items()))
    Path(args.cache_dir).mkdir(parents=True, exist_ok=True)
    write_text(Path(args.cache_dir) / "README.txt", CACHE_README)

    meta = {
        "purpose": cfg.purpose,
        "description": cfg.description,
        "provider": cfg.provider,
        "teacher": {"base_url": cfg.teacher.base_url, "model": cfg.teacher.model,
                    "temperature": cfg.teacher.temperature} if cfg.provider == "openai" else None,
        "seed": cfg.seed,
        "pair_difficulty": cfg.pair_difficulty,
        "rows": {f"{d}/{s}": len(result.rows[(d, s)]) for d in DATASETS for s in SPLITS},
        "sha256": files,
    }
    write_json(out / "dataset.json", meta)
    write_json(args.metrics, metrics)
    empty = [f"{d}/{s}" for d in DATASETS for s in SPLITS if not result.rows[(d, s)]]
    if empty:
        from pico.errors import DataError

        raise DataError(f"generation left no rows in {', '.join(empty)} (see metrics 'dropped'); "
                        f"raise generate.teacher.max_attempts or check the teacher")
    log.info("wrote %s", ", ".join(f"{k}: {v}" for k, v in meta["rows"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
