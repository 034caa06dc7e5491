"""Where a `pretrain` stage step spends its time, fp32 against bf16, in interleaved rounds (issue 18).

    python benchmarks/pretrain_step_parts.py --rounds 4

The pieces the stage's training step runs (`pico.train.train_step` with the pretraining recipe's batches): the
batch (`CopyRows.train_batch`: windows plus copy rows), forward + backward (`lm_loss` under autocast or not),
gradient clipping and the AdamW step, timed separately on one model whose weights both precisions keep
training. Prints ms per step for each part and precision, and the bf16/fp32 ratio of the whole step per round;
writes benchmarks/results/pretrain_step_parts.json. Needs `dvc repro pretrain` first (data/tokens, tokenizer).

`--with-plain-logsumexp` adds two contenders that run the copy head's masked logsumexps as the plain
`masked_fill(...).logsumexp(-1)` (the same numbers, RESEARCH.md finding 30), to show in the same run what
`pico.kernels.masked_logsumexp` saves (written to pretrain_step_parts_with_plain.json).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import machine, save

import pico.model as model_module

from pico.config import load_params
from pico.copy_rows import CopyRows
from pico.data import TokenWindows, token_byte_lengths
from pico.device import resolve_device
from pico.kernels import use_fast_cpu_kernels
from pico.losses import lm_loss
from pico.model import build_model
from pico.tokenizer import load_tokenizer
from pico.train import make_optimizer

PARTS = ("batch", "forward_backward", "clip", "optimizer")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per precision and round")
    ap.add_argument("--with-plain-logsumexp", action="store_true")
    args = ap.parse_args()
    device = resolve_device("cpu")
    params = load_params("params.yaml")
    cfg = params.pretrain
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    train_tokens = np.fromfile("data/tokens/train.bin", dtype=np.uint16)
    windows = TokenWindows(train_tokens, cfg.seq_len or params.model.max_seq_len, cfg.batch_size, cfg.seed,
                           token_byte_lengths(tok))
    batches = CopyRows(windows, tok, cfg.copy_share, cfg.seed)
    torch.manual_seed(cfg.seed)
    model = use_fast_cpu_kernels(build_model(params.model, tok.vocab_size)).train()
    optimizer = make_optimizer(model, cfg, device)
    k = 0

    fast_logsumexp = model_module.masked_logsumexp

    def plain_logsumexp(x, mask, fill):
        return x.masked_fill(~mask, fill).logsumexp(dim=-1)

    def step(name: str) -> dict[str, float]:
        nonlocal k
        bf16 = name.startswith("bf16")
        model_module.masked_logsumexp = plain_logsumexp if name.endswith("plain") else fast_logsumexp
        t = [time.perf_counter()]
        batch = batches.train_batch(k)
        k += 1
        t.append(time.perf_counter())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss_sum, _ = lm_loss(model, batch)
            (loss_sum / batch["n_items"]).backward()
        t.append(time.perf_counter())
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        t.append(time.perf_counter())
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t.append(time.perf_counter())
        return {part: 1000 * (b - a) for part, a, b in zip(PARTS, t, t[1:])}

    names = ("fp32", "bf16") + (("fp32-plain", "bf16-plain") if args.with_plain_logsumexp else ())
    for name in names * 2:  # warm-up: kernels, allocator, autocast cache
        step(name)
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    round_ratios = []
    for r in range(args.rounds):
        totals = {}
        for name in names:
            rows = [step(name) for _ in range(args.steps)]
            samples[name] += rows
            totals[name] = statistics.median(sum(row.values()) for row in rows)
        round_ratios.append(totals["fp32"] / totals["bf16"])
        print(f"round {r + 1}: " + ", ".join(f"{n} {ms:.0f} ms/step" for n, ms in totals.items())
              + f"; bf16/fp32 speed {round_ratios[-1]:.3f}", flush=True)
    medians = {name: {part: round(statistics.median(row[part] for row in rows), 2) for part in PARTS}
               for name, rows in samples.items()}
    for name, parts in medians.items():
        print(name, " ".join(f"{part} {ms:.1f} ms" for part, ms in parts.items()))
    command = f"python benchmarks/pretrain_step_parts.py --rounds {args.rounds} --steps {args.steps}"
    result = {"command": command + (" --with-plain-logsumexp" if args.with_plain_logsumexp else ""),
              "machine": machine(), "ms_per_step_median": medians, "round_ratios_bf16_over_fp32": round_ratios,
              "median_round_ratio": statistics.median(round_ratios)}
    print(f"bf16 / fp32 speed, median of rounds: {result['median_round_ratio']:.3f}")
    save("pretrain_step_parts_with_plain" if args.with_plain_logsumexp else "pretrain_step_parts", result)


if __name__ == "__main__":
    main()
