"""Stage `tokenizer`: train a byte-level BPE on the train split (rustbpe), save it, report bytes/token on val."""

from __future__ import annotations

import argparse
import logging

from pico.config import load_params
from pico.io import write_json
from pico.stage import run_stage
from pico.tinystories import read_prepared
from pico.tokenizer import bytes_per_token, train_tokenizer

log = logging.getLogger("tokenizer")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--train", default="data/prepared/train.txt")
    ap.add_argument("--val", default="data/prepared/val.txt")
    ap.add_argument("--out", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--metrics", default="metrics/tokenizer.json")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).tokenizer

    train = read_prepared(args.train)
    if cfg.max_train_chars:
        kept, total = [], 0
        for story in train:
            if total >= cfg.max_train_chars:
                break
            kept.append(story)
            total += len(story)
        train = kept
    tok = train_tokenizer(train, cfg.vocab_size)
    val = read_prepared(args.val)
    tok.save(args.out)
    metrics = {
        "vocab_size": tok.vocab_size,
        "train_bytes_per_token": round(bytes_per_token(tok, train), 4),
        "val_bytes_per_token": round(bytes_per_token(tok, val), 4),
    }
    write_json(args.metrics, metrics)
    log.info("vocab %d, val bytes/token %.3f", tok.vocab_size, metrics["val_bytes_per_token"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
