"""Pretraining throughput, pico vs Hugging Face GPT-2 of the same shape, same batch, same dtype (fp32 CPU).

    python benchmarks/pretrain_cpu.py            # the default CPU shape of params.yaml

Needs the `bench` extra (transformers). Random tokens; forward + backward + AdamW step per iteration.
"""

from __future__ import annotations

import argparse

import torch

from common import interleaved, save
from pico.config import ModelConfig, load_params
from pico.losses import lm_loss
from pico.model import build_model, count_params
from pico.kernels import use_fast_cpu_kernels
from pico.train import make_optimizer


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--compile", action="store_true", help="also time pico under torch.compile")
    ap.add_argument("--profile", action="store_true", help="then print where 3 pico steps spend their time")
    args = ap.parse_args()
    p = load_params(args.params)
    cfg: ModelConfig = p.model
    B, T, V = p.pretrain.batch_size, p.pretrain.seq_len or cfg.max_seq_len, args.vocab
    device = torch.device("cpu")
    torch.manual_seed(0)
    x = torch.randint(0, V, (B, T + 1))
    inputs, targets = x[:, :-1], x[:, 1:]

    # pico's own training step: the loss, the optimizer and the batch (with the byte counts its bits-per-byte
    # statistic needs) of the `pretrain` stage
    batch = {"input_ids": inputs, "targets": targets, "target_bytes": torch.randint(1, 6, (B, T))}
    pico = use_fast_cpu_kernels(build_model(cfg, V).train())  # as pico.train.train does
    pico_opt = make_optimizer(pico, p.pretrain, device)

    def pico_step(model=pico, opt=pico_opt):
        loss_sum, _ = lm_loss(model, batch)
        (loss_sum / targets.numel()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(vocab_size=V, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, n_inner=cfg.mlp_ratio * cfg.d_model, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"  # HF's fastest attention on CPU
    hf = GPT2LMHeadModel(hf_cfg).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)  # the HF Trainer default (adamw_torch_fused)

    def hf_step():
        out = hf(input_ids=inputs, labels=x[:, :-1])  # HF shifts labels itself: T-1 predictions
        out.loss.backward()
        hf_opt.step()
        hf_opt.zero_grad(set_to_none=True)

    contenders = {"pico": pico_step, "hf_gpt2_sdpa": hf_step}
    if args.compile:
        compiled = torch.compile(build_model(cfg, V).train())
        opt_c = make_optimizer(compiled, p.pretrain, device)
        contenders["pico_compiled"] = lambda: pico_step(compiled, opt_c)
    sec = interleaved(contenders, n_warmup=2, n_steps=args.steps, rounds=args.rounds, device=device)
    tok = {k: B * T / v for k, v in sec.items()}
    save("pretrain_cpu", {
        "shape": {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "seq_len": T, "vocab": V,
                  "batch": B, "dtype": "float32"},
        "params": {"pico": count_params(pico), "hf_gpt2": sum(q.numel() for q in hf.parameters())},
        "tokens_per_s": {k: round(v, 1) for k, v in tok.items()},
        "speedup_vs_hf": {k: round(v / tok["hf_gpt2_sdpa"], 3) for k, v in tok.items()},
        "target": "pico >= 1.3x hf_gpt2_sdpa",
    })
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(3):
                pico_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
