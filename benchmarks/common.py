"""Shared helpers for the benchmarks: timing, machine description, result files."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "platform": platform.platform()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, n_warmup: int, n_steps: int, device: torch.device) -> list[float]:
    """Seconds per call of `step`, after warm-up."""
    for _ in range(n_warmup):
        step()
    sync(device)
    times = []
    for _ in range(n_steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def interleaved(contenders: dict, n_warmup: int, n_steps: int, rounds: int, device: torch.device) -> dict[str, float]:
    """Median seconds/step of each contender, timed in alternating rounds so drift hits all of them alike."""
    for step in contenders.values():
        time_steps(step, n_warmup, 0, device)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, step in contenders.items():
            samples[name] += time_steps(step, 0, n_steps, device)
    return {name: statistics.median(s) for name, s in samples.items()}


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(exist_ok=True)
    result = {"benchmark": name, "command": " ".join([Path(sys.executable).name, *sys.argv]),
              "machine": machine(), **result}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return path
