"""Helpers for end-to-end tests: a copy of this repo in a temp git repo, run through the real DVC."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import REPO, tinystories_dir

BIN = Path(sys.executable).parent

# Tiny params: every stage runs for real, in seconds. fp32 everywhere, so the numbers the tests compare are the
# same on every CPU (precision auto would pick bf16 only where the CPU has it; tests/test_precision.py covers bf16).
TINY_PARAMS = {
    "prepare": {"max_stories": 400, "max_val_stories": 60},
    "tokenizer": {"vocab_size": 1024},
    "generate": {"sft_splits": {"train": 24, "valid": 8, "test": 8, "test_unseen": 8},
                 "dpo_splits": {"train": 24, "valid": 8, "test": 8}},
    "model": {"d_model": 32, "n_layer": 2, "n_head": 2, "max_seq_len": 640},
    "pretrain": {"max_steps": 60, "batch_size": 4, "seq_len": 64, "eval_every": 30, "save_every": 30, "lr": 0.01,
                 "eval_batches": 2, "warmup_steps": 2, "device": "cpu", "precision": "fp32"},
    "sft": {"max_len": 640, "max_steps": 6, "batch_size": 4, "eval_every": 3, "save_every": 3, "warmup_steps": 1,
            "device": "cpu", "precision": "fp32"},
    "dpo": {"max_len": 640, "max_steps": 6, "batch_size": 2, "eval_every": 3, "save_every": 3, "warmup_steps": 1,
            "device": "cpu", "precision": "fp32", "onpolicy": {"samples": 2, "max_new_tokens": 40}},
    "evaluate": {"n_generations": 8, "max_new_tokens": 40, "val_batches": 2, "batch_size": 8, "device": "cpu",
                 "precision": "fp32"},
    "bundle": {"dpi": 60},
}


SOURCE_DIRS = ("pico/", "stages/", "tests/", "benchmarks/", ".ci/", "scripts/")
SOURCE_FILES = {".dvc/config", ".dvc/.gitignore", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml",
                "pyproject.toml", "requirements.txt", "Makefile", "README.md"}


def deep_update(base: dict, new: dict) -> dict:
    for k, v in new.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            deep_update(base[k], v)
        else:
            base[k] = v
    return base


def env(extra: dict | None = None) -> dict:
    e = dict(os.environ)
    e.update(extra or {})
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"  # stage commands call `python`: this venv's
    e["GIT_AUTHOR_NAME"] = e["GIT_COMMITTER_NAME"] = "pico-tests"
    e["GIT_AUTHOR_EMAIL"] = e["GIT_COMMITTER_EMAIL"] = "tests@pico.invalid"
    e.pop("PICO_TEST_KEEP", None)
    return e


def run(repo: Path, *cmd: str, check: bool = True, timeout: float = 900,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(cmd), cwd=repo, env=env(extra_env), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def dvc(repo: Path, *args: str, check: bool = True, timeout: float = 900,
        extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return run(repo, str(BIN / "dvc"), *args, check=check, timeout=timeout, extra_env=extra_env)


def stage_cmd(repo: Path, name: str, python: str | None = None) -> list[str]:
    """A stage's command line as dvc.yaml gives it (its paths), run with this venv's python (or `python`)."""
    import shlex

    cmd = shlex.split(yaml.safe_load((repo / "dvc.yaml").read_text())["stages"][name]["cmd"])
    assert cmd[0] == "python" and cmd[1] == f"stages/{name}.py", cmd
    return [python or str(BIN / "python"), *cmd[1:]]


def stage(repo: Path, name: str, *args: str, check: bool = False, extra_env: dict | None = None):
    """Run one stage script directly, with the paths dvc.yaml gives it."""
    return run(repo, *stage_cmd(repo, name), *args, check=check, extra_env=extra_env)


def ran_stages(proc: subprocess.CompletedProcess) -> list[str]:
    """Stages DVC actually ran ("Running stage 'x'"), in order."""
    out = proc.stdout + proc.stderr
    return [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]


def make_repo(dest: Path, params: dict | None = None) -> Path:
    """A fresh git repo holding this project's tracked files, the TinyStories shards linked, tiny params."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                           text=True, check=True).stdout.split()
    for rel in files:
        src = REPO / rel
        # the project's source and config only: never this workspace's outputs (data, checkpoints, results)
        if not src.is_file() or not (rel.startswith(SOURCE_DIRS) or rel in SOURCE_FILES):
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    (dest / "data" / "raw").mkdir(parents=True, exist_ok=True)
    (dest / "data" / "raw" / "tinystories").symlink_to(tinystories_dir())
    write_params(dest, deep_update(yaml.safe_load((REPO / "params.yaml").read_text()),
                                   deep_update(yaml.safe_load(yaml.safe_dump(TINY_PARAMS)), params or {})))
    template = REPO / ".dvc" / "plots_template.html"  # made by `make setup`, ignored by git
    if template.is_file():
        shutil.copy2(template, dest / ".dvc" / "plots_template.html")
    else:
        run(dest, str(BIN / "python"), "-m", "pico.plots_html", ".dvc/plots_template.html")
    run(dest, "git", "init", "-q", "-b", "main")
    run(dest, "git", "add", "-A")
    run(dest, "git", "commit", "-qm", "init")
    return dest


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def set_params(repo: Path, updates: dict) -> None:
    write_params(repo, deep_update(read_params(repo), updates))


def clone_repo(src: Path, dest: Path) -> Path:
    shutil.copytree(src, dest, symlinks=True)
    return dest


def commit_all(repo: Path, message: str = "run") -> None:
    run(repo, "git", "add", "-A")
    run(repo, "git", "commit", "-qm", message)
