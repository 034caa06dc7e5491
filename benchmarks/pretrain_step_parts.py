"""Where a `pretrain` stage step spends its time, fp32 against bf16, in interleaved rounds (issue 18).

    python benchmarks/pretrain_step_parts.py --rounds 4

The pieces the stage's training step runs (`pico.train.train_step` with the pretraining recipe's batches): the
batch (`CopyRows.train_batch`: windows plus copy rows), forward + backward (`lm_loss` under autocast or not),
gradient clipping and the AdamW step, timed separately on one model whose weights both precisions keep
training. Prints ms per step for each part and precision, and the bf16/fp32 ratio of the whole step per round;
writes benchmarks/results/pretrain_step_parts.json. Needs `dvc repro pretrain` first (data/tokens, tokenizer).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from common import machine, save

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

    def step(bf16: bool) -> dict[str, float]:
        nonlocal k
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

    for bf16 in (False, True, False, True):  # warm-up: kernels, allocator, autocast cache
        step(bf16)
    samples: dict[str, list[dict[str, float]]] = {"fp32": [], "bf16": []}
    round_ratios = []
    for r in range(args.rounds):
        totals = {}
        for name in ("fp32", "bf16"):
            rows = [step(name == "bf16") for _ in range(args.steps)]
            samples[name] += rows
            totals[name] = statistics.median(sum(row.values()) for row in rows)
        round_ratios.append(totals["fp32"] / totals["bf16"])
        print(f"round {r + 1}: fp32 {totals['fp32']:.0f} ms/step, bf16 {totals['bf16']:.0f} ms/step, "
              f"ratio {round_ratios[-1]:.3f}", flush=True)
    medians = {name: {part: round(statistics.median(row[part] for row in rows), 2) for part in PARTS}
               for name, rows in samples.items()}
    for name, parts in medians.items():
        print(name, " ".join(f"{part} {ms:.1f} ms" for part, ms in parts.items()))
    result = {"command": "python benchmarks/pretrain_step_parts.py --rounds %d --steps %d" % (args.rounds, args.steps),
              "machine": machine(), "ms_per_step_median": medians, "round_ratios_bf16_over_fp32": round_ratios,
              "median_round_ratio": statistics.median(round_ratios)}
    print(f"bf16 / fp32 speed, median of rounds: {result['median_round_ratio']:.3f}")
    save("pretrain_step_parts", result)


if __name__ == "__main__":
    main()
