"""Is pico's first forward pass the same in every process? Prints a hash of the hidden states and the loss of
the pretraining recipe's first batch (copy rows included), under CPU bf16 autocast or in fp32
(`--precision fp32`); run it in a loop:

    for i in $(seq 16); do python benchmarks/bf16_determinism.py; done | sort | uniq -c

RESEARCH.md finding 27: with 2 threads one process in 8-16 took another path, in bf16 and in fp32 alike; the
first difference was the model's rotary cos table (`rope_cos`, built at construction by torch.cos, which MKL's
vector math computes), from a first-use race in MKL (`pico.device.warm_up_vector_math`). The script sets the
process up as every stage does (`resolve_device`); `--cold` skips that, to show the race:

    for i in $(seq 30); do python benchmarks/bf16_determinism.py --precision fp32 --cold; done | sort | uniq -c

Needs `dvc repro pretrain` first (data/tokens, the tokenizer).
"""

from __future__ import annotations

import argparse
import hashlib

import numpy as np
import torch

from pico.config import load_params
from pico.copy_rows import CopyRows
from pico.data import TokenWindows, token_byte_lengths
from pico.device import resolve_device
from pico.kernels import use_fast_cpu_kernels
from pico.losses import lm_loss
from pico.model import build_model
from pico.tokenizer import load_tokenizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--precision", choices=("bf16", "fp32"), default="bf16")
    ap.add_argument("--cold", action="store_true", help="skip the stages' set-up (resolve_device)")
    args = ap.parse_args()
    bf16 = args.precision == "bf16"
    if not args.cold:
        resolve_device("cpu")
    p = load_params("params.yaml")
    cfg = p.pretrain
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    train = np.fromfile("data/tokens/train.bin", dtype=np.uint16)
    windows = TokenWindows(train, p.model.max_seq_len, cfg.batch_size, cfg.seed, token_byte_lengths(tok))
    batch = CopyRows(windows, tok, cfg.copy_share, cfg.seed).train_batch(0)
    torch.manual_seed(cfg.seed)
    model = use_fast_cpu_kernels(build_model(p.model, tok.vocab_size))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        hidden = model(batch["input_ids"], return_hidden=True)
        loss, _ = lm_loss(model, batch)
    print(hashlib.md5(hidden.detach().float().numpy().tobytes()).hexdigest()[:8], f"{loss.item():.6f}")


if __name__ == "__main__":
    main()
