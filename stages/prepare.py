"""Stage `prepare`: TinyStories text -> cleaned, deduplicated train/val splits (+ metrics/prepare.json)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.config import load_params
from pico.download import ensure_source
from pico.errors import DataError
from pico.io import write_json, write_text
from pico.stage import run_stage, stage_args
from pico.tinystories import find_shards, join_stories, prepare_corpus

log = logging.getLogger("prepare")


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["out-dir", "metrics"], argv)
    cfg = load_params(args.params).prepare
    source = Path(cfg.source)
    downloaded = ensure_source(source, cfg.url, cfg.files, cfg.sha256)
    shards = find_shards(source)
    if not shards:
        raise DataError(f"{source}: no .txt files; put the TinyStories .txt files there (see README)")
    train, val, metrics = prepare_corpus(shards, cfg)
    metrics["source"]["downloaded_files"] = len(downloaded)
    write_text(Path(args.out_dir) / "train.txt", join_stories(train))
    write_text(Path(args.out_dir) / "val.txt", join_stories(val))
    write_json(args.metrics, metrics)
    log.info("train %d stories, val %d stories, dropped %s", len(train), len(val), metrics["dropped"])
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
