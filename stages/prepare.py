"""Stage `prepare`: TinyStories text -> cleaned, deduplicated train/val splits (+ metrics/prepare.json)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pico.config import load_params
from pico.download import ensure_source
from pico.errors import DataError
from pico.io import write_json, write_text
from pico.stage import run_stage
from pico.tinystories import find_shards, join_stories, make_splits, split_stats, split_stories

log = logging.getLogger("prepare")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out-dir", default="data/prepared")
    ap.add_argument("--metrics", default="metrics/prepare.json")
    args = ap.parse_args(argv)
    cfg = load_params(args.params).prepare

    source = Path(cfg.source)
    downloaded = ensure_source(source, cfg.url, cfg.files, cfg.sha256)
    shards = find_shards(source)
    if not shards:
        raise DataError(f"{source}: no .txt files; put the TinyStories .txt files there (see README)")
    raw = {"train": [], "valid": []}
    for shard in shards:
        text = shard.path.read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise DataError(f"{shard.path}: file is empty")
        raw[shard.split] += split_stories(text, str(shard.path))
    train, val, report = make_splits(
        raw["train"], raw["valid"] or None, seed=cfg.seed, val_fraction=cfg.val_fraction,
        max_stories=cfg.max_stories, max_val_stories=cfg.max_val_stories,
        min_chars=cfg.min_chars, max_chars=cfg.max_chars,
    )
    out = Path(args.out_dir)
    write_text(out / "train.txt", join_stories(train))
    write_text(out / "val.txt", join_stories(val))
    metrics = {
        "train": split_stats(train),
        "val": split_stats(val),
        "source": {"shards": len(shards), "raw_stories": sum(1 for v in raw.values() for s in v if s.strip()),
                   "own_valid_split": bool(raw["valid"]), "downloaded_files": len(downloaded)},
        "dropped": dict(sorted(report.dropped.items())),
    }
    write_json(args.metrics, metrics)
    log.info("train %d stories, val %d stories, dropped %s", len(train), len(val), report.dropped)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
