"""GPU pretraining throughput and MFU: pico vs a nanoGPT-style reference vs Hugging Face GPT-2 (all compiled).

    python benchmarks/pretrain_gpu.py --shape S     # d288 L6 H6 T256 V4096 B128, bf16
    python benchmarks/pretrain_gpu.py --shape M     # d512 L8 H8 T512 V8192 B64, bf16
    python benchmarks/pretrain_gpu.py --shape tiny --device cpu --dtype float32   # a smoke run anywhere

MFU counts 6N + 12*L*d*T flops per token (N: non-embedding parameters plus the tied head) against
--peak-tflops (989 for an H100's dense bf16). The reference below is written the way nanoGPT writes it.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from common import interleaved, save
from pico.config import load_params
from pico.losses import lm_loss
from pico.model import build_model
from pico.train import make_optimizer

SHAPES = {"S": (288, 6, 6, 256, 4096, 128), "M": (512, 8, 8, 512, 8192, 64), "tiny": (64, 2, 2, 64, 512, 4)}


class RefBlock(nn.Module):
    """nanoGPT's block: pre-LN, fused qkv, SDPA causal attention, GELU MLP, biases."""

    def __init__(self, d, h):
        super().__init__()
        self.h = h
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.attn(self.ln1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.h, C // self.h).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).contiguous().view(B, T, C)
        x = x + self.proj(y)
        return x + self.fc2(F.gelu(self.fc(self.ln2(x))))


class RefGPT(nn.Module):
    def __init__(self, d, L, h, T, V):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, d), nn.Embedding(T, d)
        self.blocks = nn.ModuleList(RefBlock(d, h) for _ in range(L))
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, V, bias=False)
        self.head.weight = self.wte.weight

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for b in self.blocks:
            x = b(x)
        logits = self.head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def flops_per_token(n_params: int, d: int, L: int, T: int) -> float:
    return 6 * n_params + 12 * L * d * T


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="S")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", choices=["bfloat16", "float32"], default="bfloat16")
    ap.add_argument("--peak-tflops", type=float, default=989.0)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--skip-hf", action="store_true")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA GPU here: run on a GPU machine, or pass --device cpu --shape tiny for a smoke run")
    d, L, h, T, V, B = SHAPES[args.shape]
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.manual_seed(0)
    data = torch.randint(0, V, (B, T + 1), device=device)
    x, y = data[:, :-1], data[:, 1:]
    compile_ = (lambda m: m) if args.no_compile else torch.compile

    def autocast():
        return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype != torch.float32)

    # pico: its own model, loss and optimizer (fused AdamW), the whole step compiled
    params = load_params("params.yaml")
    cfg = dataclasses.replace(params.model, d_model=d, n_layer=L, n_head=h, max_seq_len=T)
    pico = build_model(cfg, V).to(device)
    pico_opt = make_optimizer(pico, dataclasses.replace(params.pretrain, lr=1e-4, weight_decay=0.1), device)

    def pico_step_fn():
        with autocast():
            loss_sum, _ = lm_loss(pico, {"input_ids": x, "targets": y})  # the `pretrain` stage's loss
            loss = loss_sum / y.numel()
        loss.backward()
        pico_opt.step()
        pico_opt.zero_grad(set_to_none=True)

    ref = RefGPT(d, L, h, T, V).to(device)
    ref_c = compile_(ref)
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-4, fused=device.type == "cuda")

    def ref_step():
        with autocast():
            loss = ref_c(x, y)
        loss.backward()
        ref_opt.step()
        ref_opt.zero_grad(set_to_none=True)

    contenders = {"pico": compile_(pico_step_fn), "nanogpt_reference": ref_step}
    if not args.skip_hf:
        from transformers import GPT2Config, GPT2LMHeadModel

        hf_cfg = GPT2Config(vocab_size=V, n_positions=T, n_embd=d, n_layer=L, n_head=h, resid_pdrop=0.0,
                            embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0)
        hf_cfg._attn_implementation = "sdpa"
        hf = GPT2LMHeadModel(hf_cfg).to(device)
        hf_c = compile_(hf)
        hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=device.type == "cuda")

        def hf_step():
            with autocast():
                loss = hf_c(input_ids=x, labels=x).loss
            loss.backward()
            hf_opt.step()
            hf_opt.zero_grad(set_to_none=True)

        contenders["hf_gpt2"] = hf_step
    sec = interleaved(contenders, n_warmup=5, n_steps=args.steps, rounds=args.rounds, device=device)
    n_params = sum(p.numel() for p in pico.parameters()) - pico.wpe.weight.numel()
    fpt = flops_per_token(n_params, d, L, T)
    tok = {k: B * T / v for k, v in sec.items()}
    save(f"pretrain_{device.type}_{args.shape}", {
        "shape": {"d_model": d, "n_layer": L, "n_head": h, "seq_len": T, "vocab": V, "batch": B, "dtype": args.dtype},
        "compiled": not args.no_compile,
        "tokens_per_s": {k: round(v, 1) for k, v in tok.items()},
        "mfu": {k: round(v * fpt / (args.peak_tflops * 1e12), 4) for k, v in tok.items()},
        "speedup_vs_reference": {k: round(v / tok["nanogpt_reference"], 3) for k, v in tok.items()},
        "flops_per_token": fpt, "peak_tflops": args.peak_tflops,
        "target": "pico >= 1.2x nanogpt_reference at S and M; M at MFU >= 40%",
    })
    assert math.isfinite(sec["pico"])


if __name__ == "__main__":
    main()
