"""Stage `bundle`: results/, the poster-ready package (README, figures, tables, samples, snapshot, report.html)."""

from __future__ import annotations

import datetime as dt
import logging
import os
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path

import pandas as pd
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this copy's pico: queued exps run in temp copies
from pico.config import PURPOSES, load_params
from pico.errors import PicoError
from pico.io import read_json, read_jsonl, sha256_file
from pico.stage import run_stage, stage_args

log = logging.getLogger("bundle")
METRICS = ["prepare", "tokenizer", "generate", "pretrain", "sft", "dpo", "evaluate"]


def build_time(environ: Mapping[str, str]) -> str:
    """The time the bundle records: SOURCE_DATE_EPOCH (reproducible-builds.org) when set, so two builds of the
    same run are byte-identical; otherwise now. Both in UTC, to the second."""
    raw = environ.get("SOURCE_DATE_EPOCH")
    if raw is None:
        return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()
    try:
        return dt.datetime.fromtimestamp(int(raw), dt.timezone.utc).isoformat()
    except (ValueError, OverflowError, OSError):
        raise PicoError(f"SOURCE_DATE_EPOCH={raw!r}: expected whole seconds since 1970-01-01 UTC, e.g. "
                        "$(git log -1 --format=%ct)") from None


def main(argv: list[str] | None = None) -> int:
    args = stage_args(__doc__, ["metrics-dir", "plots-dir", "eval-dir", "dataset", "out"], argv)
    now = build_time(os.environ)
    # imported after the check: a bad SOURCE_DATE_EPOCH crashes numpy.f2py, which scipy.stats (pico.stats, under
    # pico.bundle) imports, with a traceback that does not say which variable
    from pico import bundle as B

    params = load_params(args.params)
    if params.experiment.purpose == "uncategorized":
        log.warning("experiment.purpose is 'uncategorized'; say why this run exists (%s)", ", ".join(PURPOSES[:-1]))
    metrics_dir, plots_dir, eval_dir = Path(args.metrics_dir), Path(args.plots_dir), Path(args.eval_dir)
    generations = eval_dir / "generations_test_unseen.jsonl"
    curves = {stage: {part: pd.read_csv(plots_dir / stage / f"{part}.csv")
                      if (plots_dir / stage / f"{part}.csv").is_file() else None for part in ("train", "val")}
              for stage in ("pretrain", "sft", "dpo")}
    files = {"params.yaml": Path(args.params), "dataset.json": Path(args.dataset),
             **{f"metrics/{name}.json": metrics_dir / f"{name}.json" for name in METRICS}}
    if Path("dvc.lock").is_file():
        files["dvc.lock"] = Path("dvc.lock")
    inputs = B.BundleInputs(
        params=params, metrics={name: read_json(metrics_dir / f"{name}.json") for name in METRICS},
        dataset=read_json(args.dataset), curves=curves,
        generations=read_jsonl(generations) if generations.is_file() else [],
        comparisons=read_json(eval_dir / "comparisons.json") if (eval_dir / "comparisons.json").is_file() else {},
        dvc_yaml=yaml.safe_load(Path("dvc.yaml").read_text()),
        lock=yaml.safe_load(Path("dvc.lock").read_text()) or {} if Path("dvc.lock").is_file() else {}, files=files)
    out = Path(args.out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    B.write_bundle(tmp, inputs, sha256_file(args.params), now)
    leaked = B.find_secrets([tmp], B.secret_values())
    if leaked:
        shutil.rmtree(tmp)
        raise PicoError(f"refusing to write the bundle: a secret from the environment appears in {', '.join(leaked)}")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the bundle appears whole or not at all
    log.info("wrote %s", out)
    return 0


if __name__ == "__main__":
    raise SystemExit(run_stage(main))
