"""Stage `tokenizer`: train a byte-level BPE on the train split (rustbpe), save it, report bytes/token on val."""

from __future__ import annotations

import logging
import sys

from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.config import load_params
from pico.io import write_json
from pico.stage import run_stage, stage_args
from pico.tinystories import read_prepared, take_chars
from pico.tokenizer import bytes_per_token, train_tokenizer

log = logging.getLogger("tokenizer")


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["train", "val", "out", "metrics"], argv)
    cfg = load_params(args.params).tokenizer
    train = take_chars(read_prepared(args.train), cfg.max_train_chars)
    tok = train_tokenizer(train, cfg.vocab_size)
    tok.save(args.out)
    metrics = {
        "vocab_size": tok.vocab_size,
        "train_bytes_per_token": round(bytes_per_token(tok, train), 4),
        "val_bytes_per_token": round(bytes_per_token(tok, read_prepared(args.val)), 4),
    }
    write_json(args.metrics, metrics)
    log.info("vocab %d, val bytes/token %.3f", tok.vocab_size, metrics["val_bytes_per_token"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
