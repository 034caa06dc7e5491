"""Where a job runs: device choice, mixed precision, and the torchrun/DistributedDataParallel environment.

Training, evaluation and the CLI all import this; none of them needs the training loop to pick a device.

Precision: `bf16` runs the matrix products under bf16 autocast (weights, optimizer state, norms, softmax and
loss sums stay fp32, as torch's autocast lists keep them); `auto` takes it where the hardware computes bf16
natively: CUDA GPUs that support it, and CPUs with AVX512-BF16 or AMX. On a CPU without them (AVX2-only
machines, most laptops) bf16 is emulated and slower than fp32, so `auto` stays fp32 there.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.distributed as dist

from pico.errors import PicoError

log = logging.getLogger(__name__)


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


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX on this CPU: torch's capability query, or /proc/cpuinfo where torch cannot say."""
    cpu = getattr(torch, "cpu", None)
    for query in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        if cpu is not None and hasattr(cpu, query) and getattr(cpu, query)():
            return True
    info = Path("/proc/cpuinfo")
    flags = info.read_text(errors="replace").split() if info.is_file() else []
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """The autocast dtype for `precision` (auto | fp32 | bf16) on `device`: torch.float32 means no autocast."""
    if name == "fp32" or device.type == "mps":
        return torch.float32
    if name == "bf16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("bf16 on a CPU without AVX512-BF16 or AMX is emulated and slower than fp32")
        return torch.bfloat16
    native = torch.cuda.is_bf16_supported() if device.type == "cuda" else cpu_has_native_bf16()
    dtype = torch.bfloat16 if native else torch.float32
    log.info("precision auto: %s on %s", precision_name(dtype), device.type)
    return dtype


def precision_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def autocast_for(device: torch.device, dtype: torch.dtype = torch.float32):
    """bf16 autocast for `dtype` bfloat16 (fp32 master weights stay as they are); nothing for fp32."""
    if dtype == torch.float32:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


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
