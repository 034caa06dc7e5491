"""What every stage script shares: flags, error reporting, logging, curve files, file digests."""

from __future__ import annotations

import argparse
import csv
import io
import logging
import sys
from pathlib import Path
from typing import Any, Callable

from pico.errors import EXIT_ERROR, exit_status
from pico.io import write_text


def run_stage(main: Callable[[list[str] | None], int | None], argv: list[str] | None = None) -> int:
    """Run a stage's main: a PicoError is one line on stderr and exit 2, Ctrl-C exit 130, a bug exit 1, never a
    traceback unless PICO_DEBUG=1 (see pico.errors.exit_status)."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("rustbpe").setLevel(logging.WARNING)  # it logs every few merges
    try:
        return int(main(argv) or 0)
    except (Exception, KeyboardInterrupt) as e:
        _end_progress_bars()
        return exit_status(e)
    finally:
        dist = sys.modules.get("torch.distributed")  # only a stage that imported torch can have a process group
        if dist is not None and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()


def _end_progress_bars() -> None:
    """Close the progress bars a failure left open, so the error gets a line of its own (not a bar's tail)."""
    tqdm = sys.modules.get("tqdm")
    bars = list(getattr(getattr(tqdm, "tqdm", None), "_instances", []) or [])
    for bar in bars:
        bar.close()
    if bars:
        print(file=sys.stderr)


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


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line naming the flag (exit 2), like every other pico error."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def stage_args(doc: str, paths: list[str], argv: list[str] | None, resume: str | None = None) -> argparse.Namespace:
    """Parse a stage's flags: the paths it reads and writes (required: dvc.yaml's `cmd` gives them), the params
    file, and where a training stage keeps its resume state (not an output: deleted when the stage ends)."""
    ap = OneLineArgumentParser(description=doc)
    for flag in paths:
        ap.add_argument(f"--{flag}", required=True)
    ap.add_argument("--params", default="params.yaml")
    if resume:
        ap.add_argument("--resume", default=resume, help="resume state of an interrupted run")
    return ap.parse_args(argv)
