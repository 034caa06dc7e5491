"""The two CPU kernels behind pico's pretraining speed, each against what it replaces, at the default shape.

    python benchmarks/cpu_kernels.py

1. Linear products of one layer over B*T = 4096 tokens: forward `x @ W.T`, input gradient `g @ W` and weight
   gradient `g.T @ x`, by PyTorch's default (MKL sgemm) and by oneDNN (`pico.kernels`).
2. Output layer + next-token loss, forward and backward over the same tokens: logits then native
   `F.cross_entropy`; logits then pico's `masked_nll`; pico's chunked `kernels.head_nll`. Also with a mask
   that keeps half the tokens (SFT scores only the response).
3. Small products (1, 64 and 256 rows, as in decoding), MKL vs oneDNN, in microseconds.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from common import interleaved, save
from pico.config import load_params
from pico.kernels import MIN_ROWS, _onednn_mm_t, head_nll
from pico.losses import masked_nll


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    args = ap.parse_args()
    p = load_params(args.params)
    d, ratio = p.model.d_model, p.model.mlp_ratio
    M, V = p.pretrain.batch_size * (p.pretrain.seq_len or p.model.max_seq_len), args.vocab
    device = torch.device("cpu")
    torch.manual_seed(0)

    linears = {}
    for name, (k, n) in {"qkv": (d, 3 * d), "attn_proj": (d, d), "mlp_fc": (d, ratio * d), "mlp_proj": (ratio * d, d),
                         "head": (d, V)}.items():
        x, w, g = torch.randn(M, k), torch.randn(n, k), torch.randn(M, n)
        w_t = w.t().contiguous()
        sec = interleaved({
            "forward_mkl": lambda: x @ w.t(), "forward_onednn": lambda: _onednn_mm_t(x, w),
            "grad_input_mkl": lambda: g @ w, "grad_input_onednn": lambda: _onednn_mm_t(g, w_t),
            "grad_weight_mkl": lambda: g.t() @ x, "grad_weight_onednn": lambda: _onednn_mm_t(g.t(), x.t()),
        }, n_warmup=2, n_steps=args.steps, rounds=args.rounds, device=device)
        flops = 2 * M * k * n
        linears[name] = {
            "shape": [M, k, n],
            "gflops": {key: round(flops / s / 1e9, 1) for key, s in sec.items()},
            "onednn_speedup": {prod: round(sec[f"{prod}_mkl"] / sec[f"{prod}_onednn"], 3)
                               for prod in ("forward", "grad_input", "grad_weight")},
        }

    # small products (decoding): why pico.kernels leaves products under MIN_ROWS rows on MKL
    small = {}
    for rows in (1, 64, MIN_ROWS):
        x, w = torch.randn(rows, d), torch.randn(3 * d, d)
        sec = interleaved({"mkl": lambda: x @ w.t(), "onednn": lambda: _onednn_mm_t(x, w)},
                          n_warmup=20, n_steps=200, rounds=args.rounds, device=device)
        small[f"{rows}x{d}x{3 * d}"] = {k: round(v * 1e6, 1) for k, v in sec.items()}

    h0, w0 = torch.randn(M, d), torch.randn(V, d) * 0.02
    targets = torch.randint(0, V, (M,))
    half = (torch.rand(M) < 0.5).float()

    def loss_step(kind: str, mask: torch.Tensor | None):
        def step():
            h, w = h0.clone().requires_grad_(True), w0.clone().requires_grad_(True)
            if kind == "native_cross_entropy":
                nll = F.cross_entropy(h @ w.t(), targets, reduction="none")
                loss = nll.sum() if mask is None else (nll * mask).sum()
            elif kind == "logits_masked_nll":
                mask3 = None if mask is None else mask.unsqueeze(0)
                loss = masked_nll((h @ w.t()).unsqueeze(0), targets.unsqueeze(0), mask3)
            else:
                loss = head_nll(h, w, targets, mask)[0]
            loss.backward()
        return step

    head_loss = {}
    for label, mask in (("all_tokens", None), ("half_masked", half)):
        sec = interleaved({k: loss_step(k, mask) for k in ("native_cross_entropy", "logits_masked_nll",
                                                           "head_nll")},
                          n_warmup=2, n_steps=args.steps, rounds=args.rounds, device=device)
        head_loss[label] = {"ms": {k: round(v * 1e3, 1) for k, v in sec.items()},
                            "speedup_vs_native": {k: round(sec["native_cross_entropy"] / v, 3) for k, v in sec.items()}}

    save("cpu_kernels", {"tokens": M, "d_model": d, "vocab": V, "linear": linears, "small_products_us": small,
                          "head_and_loss": head_loss})


if __name__ == "__main__":
    main()
