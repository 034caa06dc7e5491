"""Wall time of the default pipeline: a full `dvc repro`, a no-op `dvc repro`, and `dvc exp run -S dpo.beta=0.2`.

    python benchmarks/pipeline.py [--workdir /tmp/pico-bench]

Runs in a fresh copy of this repository's source (default params.yaml) so the workspace is untouched.
The TinyStories shards come from data/raw/tinystories (or $PICO_TINYSTORIES).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save

REPO = Path(__file__).resolve().parents[1]
SOURCE = ["pico", "stages", ".dvc/config", ".dvcignore", ".gitignore", "dvc.yaml", "params.yaml", "pyproject.toml"]


def sh(cwd: Path, *cmd: str) -> tuple[float, str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return seconds, proc.stdout + proc.stderr


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--workdir", default="")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pico-bench-")) / "repo"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    for rel in SOURCE:
        src = REPO / rel
        dest = work / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest)
    template = REPO / ".dvc/plots_template.html"
    if template.is_file():
        shutil.copy2(template, work / ".dvc/plots_template.html")
    raw = Path(os.environ.get("PICO_TINYSTORIES", REPO / "data/raw/tinystories")).resolve()
    (work / "data/raw").mkdir(parents=True)
    (work / "data/raw/tinystories").symlink_to(raw)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "-c", "user.name=bench", "-c",
                                                                "user.email=bench@pico.invalid", "commit", "-qm", "src"]):
        sh(work, *cmd)

    full, log = sh(work, "dvc", "repro")
    stages = {}
    for name in ("pretrain", "sft", "dpo"):
        stages[name] = json.loads((work / f"metrics/{name}.json").read_text())["speed"]["wall_seconds"]
    noop, _ = sh(work, "dvc", "repro")
    sh(work, "git", "add", "-A")
    sh(work, "git", "-c", "user.name=bench", "-c", "user.email=bench@pico.invalid", "commit", "-qm", "run")
    exp, exp_log = sh(work, "dvc", "exp", "run", "-S", "dpo.beta=0.2")
    ran = [line.split("'")[1] for line in exp_log.splitlines() if line.startswith("Running stage '")]
    save("pipeline", {
        "workdir": str(work),
        "seconds": {"full_repro": round(full, 1), "noop_repro": round(noop, 2), "exp_run_dpo_beta": round(exp, 1)},
        "stage_wall_seconds": stages,
        "exp_run_stages": ran,
        "exp_run_share_of_full": round(exp / full, 3),
        "targets": {"full_repro_s": 600, "noop_repro_s": 5, "exp_run_share_of_full": 0.4},
    })


if __name__ == "__main__":
    main()
