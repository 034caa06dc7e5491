"""Where a job runs: device choice, mixed precision, and the torchrun/DistributedDataParallel environment.

Training, evaluation and the CLI all import this; none of them needs the training loop to pick a device.
"""

from __future__ import annotations

import os
from contextlib import nullcontext

import torch
import torch.distributed as dist

from pico.errors import PicoError


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return dist_info()[0] == 0


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str) -> torch.device:
    """auto -> cuda (this rank's GPU), then mps, then cpu; an explicit device that is missing is an error."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if _mps_available() else "cpu"
    elif name == "cuda" and not torch.cuda.is_available():
        raise PicoError("device 'cuda' was asked for but no CUDA GPU is available; set device: auto or cpu")
    elif name == "mps" and not _mps_available():
        raise PicoError("device 'mps' was asked for but MPS is not available; set device: auto or cpu")
    return torch.device("cuda", dist_info()[2]) if name == "cuda" else torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA; full fp32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return nullcontext()


def init_distributed(device: torch.device) -> bool:
    """Start the process group when launched by torchrun with more than one process (NCCL on GPU, gloo on CPU)."""
    _, world, local_rank = dist_info()
    if world <= 1:
        return False
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return True
