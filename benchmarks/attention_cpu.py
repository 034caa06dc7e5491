"""Where a DPO step's time goes in fp32 and in bf16 autocast, and torch's CPU attention kernel in each dtype.

    python benchmarks/attention_cpu.py

1. `scaled_dot_product_attention` (causal), forward and backward, at pico's head sizes, fp32 against bf16
   inputs, interleaved rounds (median ms): on this CPU the bf16 backward is slower than the fp32 one, which is
   why `pico.model.attention` runs attention in fp32 under CPU bf16 autocast (issue 18).
2. One DPO step of the default model (the dpo stage's loss on a batch of template pairs, forward + backward)
   under torch.profiler in fp32 and in bf16, the ops that take the most time: what is left to speed up.
Prints the bf16 capability found; writes results/attention_cpu.json.
"""

from __future__ import annotations

import dataclasses
import functools
import statistics
import time

import torch
import torch.nn.functional as F

from common import save
from pico.config import load_params
from pico.device import autocast_for, cpu_has_native_bf16
from pico.finetune import BucketedBatches, dpo_batch, encode_dpo_rows, pair_logps, with_reference
from pico.generate import generate_rows
from pico.kernels import use_fast_cpu_kernels
from pico.losses import dpo_batch_loss
from pico.model import build_model
from pico.tokenizer import load_tokenizer

SHAPES = [(8, 4, 512, 48), (16, 4, 368, 48), (8, 4, 512, 64)]  # (batch, heads, tokens, head size)


def sdpa_ms(shape: tuple[int, ...], dtype: torch.dtype, rounds: int = 7) -> tuple[float, float]:
    """Median (forward, backward) milliseconds of causal SDPA on random inputs of `shape` in `dtype`."""
    torch.manual_seed(0)
    q, k, v = (torch.randn(*shape, dtype=dtype, requires_grad=True) for _ in range(3))
    grad = torch.randn(*shape, dtype=dtype)
    times = []
    for i in range(rounds + 2):
        t0 = time.perf_counter()
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        t1 = time.perf_counter()
        y.backward(grad)
        t2 = time.perf_counter()
        if i >= 2:
            times.append((t1 - t0, t2 - t1))
    return (statistics.median(t[0] for t in times) * 1e3, statistics.median(t[1] for t in times) * 1e3)


def dpo_step_profile(precision: str, top: int = 12) -> dict:
    p = load_params("params.yaml")
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    gen = dataclasses.replace(p.generate, sft_splits={"train": 1, "valid": 1, "test": 1, "test_unseen": 1},
                              dpo_splits={"train": 16, "valid": 1, "test": 1})
    rows = generate_rows(gen).rows[("dpo", "train")]
    cpu = torch.device("cpu")
    torch.manual_seed(0)
    model = use_fast_cpu_kernels(build_model(p.model, tok.vocab_size))
    pairs, _ = encode_dpo_rows(tok, rows, p.dpo.max_len, p.dpo.truncation)
    pairs = with_reference(pairs, pair_logps(model, pairs, p.dpo.batch_size, cpu, torch.float32))
    batch = BucketedBatches([x.length for x in pairs], p.dpo.batch_size, 0,
                            lambda idx: dpo_batch([pairs[i] for i in idx])).micro(0)
    loss_fn = functools.partial(dpo_batch_loss, beta=p.dpo.beta, rpo_alpha=p.dpo.rpo_alpha)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32

    def step():
        with autocast_for(cpu, dtype):
            loss, _ = loss_fn(model, batch)
            loss.backward()
        model.zero_grad(set_to_none=True)

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(4):
        step()
    seconds = (time.perf_counter() - t0) / 4
    with torch.profiler.profile() as prof:
        step()
    ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"batch": list(batch["input_ids"].shape), "seconds_per_step": round(seconds, 4),
            "top_ops_self_ms": {e.key: round(e.self_cpu_time_total / 1e3, 1) for e in ops}}


def main() -> None:
    print(f"native bf16 on this CPU: {cpu_has_native_bf16()}")
    sdpa = {}
    for shape in SHAPES:
        fp32, bf16 = sdpa_ms(shape, torch.float32), sdpa_ms(shape, torch.bfloat16)
        sdpa[str(shape)] = {"fp32_fwd_ms": round(fp32[0], 1), "fp32_bwd_ms": round(fp32[1], 1),
                            "bf16_fwd_ms": round(bf16[0], 1), "bf16_bwd_ms": round(bf16[1], 1)}
        print(shape, sdpa[str(shape)])
    steps = {prec: dpo_step_profile(prec) for prec in ("fp32", "bf16")}
    for prec, out in steps.items():
        print(prec, out)
    save("attention_cpu", {"bf16_capability": {"native_bf16": cpu_has_native_bf16()}, "sdpa_causal": sdpa,
                           "dpo_step": steps,
                           "ratio_dpo_step_fp32_over_bf16": round(steps["fp32"]["seconds_per_step"]
                                                                  / steps["bf16"]["seconds_per_step"], 3)})


if __name__ == "__main__":
    main()
