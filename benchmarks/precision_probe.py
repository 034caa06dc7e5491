"""bf16 against fp32 pretraining, a component at a time: pretrain the default model for a few steps and print
its val bits/byte (RESEARCH.md, finding 17).

    python benchmarks/precision_probe.py fp32 240 1337
    python benchmarks/precision_probe.py bf16 240 1337
    python benchmarks/precision_probe.py bf16-attn-fp32 240 1337   # also bf16-head-fp32, bf16-attn-head-fp32,
                                                                    # bf16-copy-fp32
    python benchmarks/precision_probe.py bf16 240 1337 lr=0.001     # any pretrain knob overridden, KEY=VALUE
    python benchmarks/precision_probe.py bf16 540 1 warmup_steps=20 # the default's length, another seed

Runs `pico.recipes.pretrain` on the workspace's `data/tokens` and params.yaml (`dvc repro pretrain` first), with
`max_steps`, `seed` and `precision` overridden; the bf16-*-fp32 variants run one component outside autocast
(`attn` is what bf16 training does anyway since attention trains in fp32 on CPU: `pico.model.attention`).
Prints the val bits/byte, the second-copy NLL of repeated windows (`pico.copying.induction_nll`) and the
training steps' tokens/s (what the stage writes as `speed.tokens_per_s`), and the largest gradient norm
after step 10 (before clipping) with its step.
"""

from __future__ import annotations

import dataclasses
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import pico.losses as losses
import pico.model as model_mod
from pico.config import load_params
from pico.copying import induction_batch, induction_nll
from pico.recipes.pretrain import pretrain
from pico.tokenizer import load_tokenizer


def outside_autocast(fn, *, cast_args: int):
    """`fn` with autocast off and its first `cast_args` tensor arguments in fp32."""
    def wrapped(*args, **kwargs):
        with torch.autocast("cpu", enabled=False):
            args = [a.float() if i < cast_args and torch.is_tensor(a) else a for i, a in enumerate(args)]
            return fn(*args, **kwargs)
    return wrapped


def main(argv: list[str]) -> int:
    variant, steps, seed = argv[0], int(argv[1]), int(argv[2])
    params = load_params("params.yaml")
    overrides = {}
    for item in argv[3:]:
        key, _, value = item.partition("=")
        if not hasattr(params.pretrain, key):
            raise SystemExit(f"unknown pretrain knob {key!r} in {item!r}")
        overrides[key] = type(getattr(params.pretrain, key))(value)
    parts = set(variant[len("bf16-"):-len("-fp32")].split("-")) if variant.startswith("bf16-") else set()
    if variant not in ("fp32", "bf16") and (not variant.endswith("-fp32") or not parts <= {"attn", "head", "copy"}):
        raise SystemExit(f"unknown variant {variant!r}")
    if "attn" in parts:
        F.scaled_dot_product_attention = outside_autocast(F.scaled_dot_product_attention, cast_args=3)
    if "head" in parts:
        losses.head_nll = outside_autocast(losses.head_nll, cast_args=1)
    if "copy" in parts:  # CopyHead.keys / value_keys / scores take (self, a, b): a and b in fp32
        for name in ("keys", "value_keys", "scores"):
            method = outside_autocast(getattr(model_mod.CopyHead, name), cast_args=3)
            setattr(model_mod.CopyHead, name, method)
    cfg = dataclasses.replace(params.pretrain, max_steps=steps, eval_every=steps, save_every=steps, seed=seed,
                              precision="fp32" if variant == "fp32" else "bf16", **overrides)
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    train, val = (np.fromfile(f"data/tokens/{s}.bin", dtype=np.uint16) for s in ("train", "val"))
    start = time.time()
    out = pretrain(cfg, params.model, tok, train, val)
    with torch.no_grad():  # the copying that bf16 runs were seen to lag on (RESEARCH.md, finding 22)
        copy = induction_nll(out.model, induction_batch(val, length=60))
    # the largest pre-clip gradient norm after step 10: where a run spiked (not by itself a failed run: finding 58)
    spike = max((row["grad_norm"], row["step"]) for row in out.result.train_curve if row["step"] > 10)
    print(f"{variant} steps {steps} seed {seed} {' '.join(argv[3:])}: val_bpb {out.metrics['val_bpb']:.4f} "
          f"train_loss {out.metrics['train_loss']:.4f} induction_nll_second {copy['induction_nll_second']:.3f} "
          f"max_grad_norm {spike[0]:.2f} at step {spike[1]} "
          f"tokens_per_s {out.result.tokens_per_s:.0f} ({time.time() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
