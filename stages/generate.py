"""Stage `generate`: SFT and DPO datasets for the horror-story task (template writer or teacher LLM)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.config import load_params
from pico.errors import DataError
from pico.generate import dataset_card, generate_metrics, generate_rows
from pico.prompt import check_context, longest_example_tokens
from pico.io import progress_bar, sha256_file, write_json, write_jsonl, write_text
from pico.spec import phrase_values, split_values
from pico.stage import run_stage, stage_args
from pico.teacher import TeacherClient, api_key_from_env
from pico.tinystories import read_prepared
from pico.tokenizer import load_tokenizer

log = logging.getLogger("generate")
CACHE_README = "Teacher LLM responses, one JSON file per request, keyed by the request. Safe to delete.\n"


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["tokenizer", "train-text", "out-dir", "cache-dir", "metrics"], argv)
    params = load_params(args.params)
    cfg = params.generate
    client = None
    if cfg.provider == "openai":  # check the key before any work
        client = TeacherClient(cfg.teacher, args.cache_dir, api_key_from_env(os.environ, cfg.teacher), seed=cfg.seed)
    tok = load_tokenizer(args.tokenizer) if Path(args.tokenizer).is_file() else None  # for token stats
    text = "\n".join(read_prepared(args.train_text)) if cfg.phrase_values else ""  # phrases: never held out
    phrases = phrase_values(text, split_values(cfg.heldout_share, cfg.seed)[1], cfg.phrase_values) if text else None
    total = sum(cfg.sft_splits.values()) + sum(cfg.dpo_splits.values())
    with progress_bar(total=total, desc="generate", unit="row", leave=False) as bar:
        result = generate_rows(cfg, client, progress=bar, phrases=phrases)
    if tok is not None:  # the examples must fit the model that trains on them, before anything is written
        longest = longest_example_tokens(tok, [r for rows in result.rows.values() for r in rows])[1]
        check_context(params.model.max_seq_len, longest, "the SFT/DPO examples (prompt + story + end token)")
    digests = {}
    for (dataset, split), rows in result.rows.items():
        path = Path(args.out_dir) / dataset / f"{split}.jsonl"
        write_jsonl(path, rows)
        digests[f"{dataset}/{split}.jsonl"] = sha256_file(path)
    write_text(Path(args.cache_dir) / "README.txt", CACHE_README)
    card = dataset_card(cfg, result, digests)
    write_json(Path(args.out_dir) / "dataset.json", card)
    write_json(args.metrics, generate_metrics(cfg, result, tok, client))
    empty = [f"{d}/{s}" for (d, s), rows in result.rows.items() if not rows]
    if empty:
        raise DataError(f"generation left no rows in {', '.join(empty)} (see metrics 'dropped'); "
                        f"raise generate.teacher.max_attempts or check the teacher")
    log.info("wrote %s", ", ".join(f"{k}: {v}" for k, v in card["rows"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
