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

from pico.errors import ParamsError, PicoError

log = logging.getLogger(__name__)


def dist_info() -> tuple[int, int, int]:
    """(rank, world_size, local_rank), from torchrun's environment."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return dist_info()[0] == 0


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


# The elementwise functions torch hands to MKL's vector math library (VML) for contiguous fp32/fp64 CPU tensors
# (ATen/cpu/vml.h: IMPLEMENT_VML_MKL).
_VML_FUNCTIONS = ("acos", "asin", "atan", "cos", "erf", "erfc", "erfinv", "exp", "log", "log10", "log2", "sin",
                  "sqrt", "tan", "tanh", "trunc")
_vml_ready = False


def warm_up_vector_math() -> None:
    """Call each VML function once on one thread, before any multi-threaded call can be the first.

    On this project's 2-core machine the first call of MKL's `cos` that runs on two threads at once returned, in
    about one process in 12, values off by up to 7e-9 from the second thread (float64; fp32 values one ulp off),
    and correct values on every later call: a first-use race inside MKL. It made the model's rotary table, and
    so a whole training run, differ between processes with the same seed (RESEARCH.md findings 27-28). After a
    one-thread call of each function first, none of 60 probe processes differed (5 of 60 without it), and
    benchmarks/bf16_determinism.py gave one hash in 30 of 30 processes (29 + 1 with `--cold`). Idempotent and
    cheap (a 4-element tensor per function and dtype)."""
    global _vml_ready
    if _vml_ready:
        return
    for dtype in (torch.float32, torch.float64):
        x = torch.full((4,), 0.5, dtype=dtype)  # far below torch's parallel grain: runs on the calling thread
        for name in _VML_FUNCTIONS:
            getattr(torch, name)(x)
    _vml_ready = True


def resolve_device(name: str) -> torch.device:
    """auto -> cuda (this rank's GPU), then mps, then cpu; an explicit device that is missing is an error.

    Every job resolves its device before its first tensor op, so this is also where the process's CPU math is
    set up (`warm_up_vector_math`)."""
    warm_up_vector_math()
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


# ----------------------------------------------------------------------------------------------- memory
# Bytes of activations per token and unit of model width (and per layer, when gradients are kept): below what
# every model type measured on CPU in fp32 (d_model 192, 4 layers, 512 tokens: training 32-58 KB per token,
# i.e. 42-76 bytes per token, unit and layer; no-grad forward 4.3-16 KB per token, 22-84 bytes per token and
# unit). An estimate that low refuses only batches that certainly cannot fit; bf16 halves what is stored.
ACTIVATION_BYTES = 16


def device_memory_bytes(device: torch.device) -> int | None:
    """All the memory a job on `device` could ever have: the GPU's, or the RAM (capped by a cgroup limit)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            total = min(total, int(limit))
    return int(total)


def activation_bytes(rows: int, seq_len: int, d_model: int, n_layer: int, training: bool) -> int:
    """A floor on the activation memory of one batch (see ACTIVATION_BYTES)."""
    return rows * seq_len * d_model * (n_layer if training else 1) * ACTIVATION_BYTES


def check_batch_fits(key: str, rows: int, seq_len: int, d_model: int, n_layer: int, device: torch.device,
                     training: bool = True, memory: int | None = None) -> None:
    """ParamsError naming `key` (a batch_size) when one batch cannot fit on `device` even by a low estimate,
    before anything is allocated (an allocator's own error would ask for hundreds of GB in a traceback)."""
    need = activation_bytes(rows, seq_len, d_model, n_layer, training)
    have = device_memory_bytes(device) if memory is None else memory
    if have and need > have:
        section = key.split(".")[0]
        hint = f"; raise {section}.grad_accum to keep the batch" if training else ""
        raise ParamsError(key, f"{rows} sequences of {seq_len} tokens need at least {need / 2**30:,.0f} GiB of "
                               f"activations (d_model {d_model}, {n_layer} layers), more than the "
                               f"{have / 2**30:,.0f} GiB of this {device.type}; lower {key}{hint}")


def is_out_of_memory(error: BaseException) -> bool:
    """An allocator's out-of-memory error (CUDA, or the CPU allocator refusing a huge request)."""
    if isinstance(error, getattr(torch, "OutOfMemoryError", ())):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)
