"""What every stage script shares: error reporting, logging, curve files, resume fingerprints."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from pico.errors import PicoError
from pico.io import write_text


def run_stage(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a stage's main; a PicoError becomes one line on stderr and exit code 2 (no traceback)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("rustbpe").setLevel(logging.WARNING)  # it logs every few merges
    try:
        return int(main(argv) or 0)
    except PicoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def write_curve_csv(path: str | Path, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write step curves as CSV for `dvc plots` (columns: union of keys, in first-seen order)."""
    if columns is None:
        columns = []
        for row in rows:
            columns += [k for k in row if k not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in columns})
    write_text(path, buffer.getvalue())


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else ("" if value is None else value)


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fingerprint(*parts: Any) -> str:
    """Identity of a training run's inputs: a resume state is only reused when this matches."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def finish_training(*, model, model_cfg, tokenizer_hash: str, stage: str, result, metrics: dict, started: float,
                    out: str | Path, metrics_path: str | Path, plots_dir: str | Path, resume: str | Path,
                    train_columns: list[str], val_columns: list[str], parent: str | Path | None = None) -> dict:
    """Write what every training stage writes, then drop its resume state.

    The checkpoint records the reproducible metrics; timing goes only to the metrics file, under `speed`.
    """
    import time

    from pico.checkpoint import save_checkpoint
    from pico.io import write_json

    save_checkpoint(out, model, model_cfg=model_cfg, tokenizer_hash=tokenizer_hash, stage=stage,
                    step=result.steps_done, metrics=metrics, parent=file_digest(parent) if parent else "")
    write_curve_csv(Path(plots_dir) / "train.csv", result.train_curve, train_columns)
    write_curve_csv(Path(plots_dir) / "val.csv", result.val_curve, val_columns)
    # timing varies run to run; everything outside `speed` is reproducible on CPU
    metrics = {**metrics, "speed": {"tokens_per_s": round(result.tokens_per_s, 1),
                                    "train_seconds": round(result.train_seconds, 2),
                                    "wall_seconds": round(time.perf_counter() - started, 2)}}
    write_json(metrics_path, metrics)
    Path(resume).unlink(missing_ok=True)
    return metrics
