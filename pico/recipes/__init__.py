"""One recipe per job: a function of (typed config, inputs) that returns what the job made.

Stages read files, call one recipe and write its results; recipes call the library. So each job runs and is
tested without DVC, and pretrain, SFT and DPO share the one training loop (`pico.train.train`).

- `pico.recipes.pretrain.pretrain`: a fresh model on TinyStories windows.
- `pico.recipes.finetune.sft`, `pico.recipes.finetune.dpo`: from a checkpoint, on (prompt, response) rows or pairs.
- `pico.recipes.onpolicy.onpolicy_dpo`: the dpo stage's job: pairs rebuilt from the model's own stories, then DPO,
  in one round or several (iterative DPO).
- `pico.recipes.evaluate.evaluate`: every checkpoint on the same held-out data and generation specs.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch.nn as nn

from pico.config import ModelConfig
from pico.train import TrainResult


@dataclass
class Trained:
    """What a training recipe made: the model, its metrics (reproducible: no timings) and its curves."""

    model: nn.Module
    model_cfg: ModelConfig
    metrics: dict
    result: TrainResult  # train_curve, val_curve, counters
    train_columns: list[str]
    val_columns: list[str]
    train_config: dict  # the params section it trained with, recorded in the checkpoint


def fingerprint(*parts) -> str:
    """Identity of a run's inputs: a resume state or cache is reused only when this matches."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def write_trained(trained: Trained, *, stage: str, tokenizer_hash: str, started: float, out: str | Path,
                  metrics_path: str | Path, plots_dir: str | Path, resume: str | Path,
                  parent: str | Path | None = None) -> dict:
    """Write what every training stage writes (checkpoint, curves, metrics), then drop its resume state.

    The checkpoint records the reproducible metrics; timing goes only to the metrics file, under `speed`.
    """
    from pico.checkpoint import save_checkpoint
    from pico.io import sha256_file, write_json
    from pico.stage import write_curve_csv

    result = trained.result
    trained.metrics["precision"] = result.precision  # what the steps ran in (params may say "auto")
    save_checkpoint(out, trained.model, model_cfg=trained.model_cfg, tokenizer_hash=tokenizer_hash, stage=stage,
                    step=result.steps_done, metrics=trained.metrics, parent=sha256_file(parent) if parent else "",
                    train_config=trained.train_config)
    write_curve_csv(Path(plots_dir) / "train.csv", result.train_curve, trained.train_columns)
    write_curve_csv(Path(plots_dir) / "val.csv", result.val_curve, trained.val_columns)
    metrics = {**trained.metrics, "speed": {"tokens_per_s": round(result.tokens_per_s, 1),
                                            "train_seconds": round(result.train_seconds, 2),
                                            "wall_seconds": round(time.perf_counter() - started, 2)}}
    write_json(metrics_path, metrics)
    Path(resume).unlink(missing_ok=True)
    return metrics
