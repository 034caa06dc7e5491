"""Pretraining throughput on CPU: pico in fp32 and in bf16 autocast, against Hugging Face GPT-2 of the same
shape and batch in fp32 and in bf16 autocast (the fair peer for bf16), all timed in one run.

    python benchmarks/pretrain_cpu.py            # the default CPU shape of params.yaml

Needs the `bench` extra (transformers). Random tokens; forward + backward + AdamW step per iteration; weights
and optimizer state fp32 in every contender. Prints the bf16 capability it found: on a CPU without AVX512-BF16
or AMX, bf16 is emulated and slower than fp32 (run it there to see).
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from common import interleaved, save
from pico.config import ModelConfig, load_params
from pico.device import autocast_for, cpu_has_native_bf16
from pico.kernels import use_fast_cpu_kernels
from pico.losses import lm_loss
from pico.model import build_model, count_params
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

    def pico_step(model=pico, opt=pico_opt, dtype=torch.float32):
        with autocast_for(device, dtype):  # as pico.train.train_step runs it
            loss_sum, _ = lm_loss(model, batch)
            (loss_sum / targets.numel()).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    pico_b = use_fast_cpu_kernels(build_model(cfg, V).train())
    pico_b.load_state_dict(pico.state_dict())
    pico_b_opt = make_optimizer(pico_b, p.pretrain, device)

    from transformers import GPT2Config, GPT2LMHeadModel

    hf_cfg = GPT2Config(vocab_size=V, n_positions=cfg.max_seq_len, n_embd=cfg.d_model, n_layer=cfg.n_layer,
                        n_head=cfg.n_head, n_inner=cfg.mlp_ratio * cfg.d_model, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, use_cache=False, bos_token_id=0, eos_token_id=0)
    hf_cfg._attn_implementation = "sdpa"  # HF's fastest attention on CPU
    hf = GPT2LMHeadModel(hf_cfg).train()
    hf_opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, fused=True)  # the HF Trainer default (adamw_torch_fused)

    def hf_step(model=hf, opt=hf_opt, dtype=torch.float32):
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):  # HF Trainer's bf16=True on CPU
            out = model(input_ids=inputs, labels=x[:, :-1])  # HF shifts labels itself: T-1 predictions
            out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    hf_b = GPT2LMHeadModel(hf_cfg).train()
    hf_b_opt = torch.optim.AdamW(hf_b.parameters(), lr=1e-4, fused=True)
    bf16 = torch.bfloat16
    # pico's default model adds RoPE and a copy head (issue 19) that GPT-2 does not have; the same architecture
    # as GPT-2 (learned positions, no copy head) is the like-for-like comparison of the training step
    gpt_cfg = dataclasses.replace(cfg, pos_encoding="learned", copy_head=False)
    gpt = {dt: use_fast_cpu_kernels(build_model(gpt_cfg, V).train()) for dt in ("fp32", "bf16")}
    gpt_opt = {dt: make_optimizer(m, p.pretrain, device) for dt, m in gpt.items()}
    contenders = {"pico_fp32": pico_step, "pico_bf16": lambda: pico_step(pico_b, pico_b_opt, bf16),
                  "pico_gpt2arch_fp32": lambda: pico_step(gpt["fp32"], gpt_opt["fp32"]),
                  "pico_gpt2arch_bf16": lambda: pico_step(gpt["bf16"], gpt_opt["bf16"], bf16),
                  "hf_gpt2_sdpa_fp32": hf_step, "hf_gpt2_sdpa_bf16": lambda: hf_step(hf_b, hf_b_opt, bf16)}
    if args.compile:  # torch.compile over the plain modules: Inductor writes its own CPU kernels
        compiled = {dt: torch.compile(build_model(cfg, V).train()) for dt in ("fp32", "bf16")}
        opt_c = {dt: make_optimizer(m, p.pretrain, device) for dt, m in compiled.items()}
        contenders["pico_fp32_compiled"] = lambda: pico_step(compiled["fp32"], opt_c["fp32"])
        contenders["pico_bf16_compiled"] = lambda: pico_step(compiled["bf16"], opt_c["bf16"], bf16)
    sec = interleaved(contenders, n_warmup=2, n_steps=args.steps, rounds=args.rounds, device=device)
    tok = {k: B * T / v for k, v in sec.items()}
    save("pretrain_cpu", {
        "shape": {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "seq_len": T, "vocab": V,
                  "batch": B, "pos_encoding": cfg.pos_encoding, "copy_head": cfg.copy_head},
        "bf16_capability": {"native_bf16": cpu_has_native_bf16(), "torch_cpu_capability":
                            torch.backends.cpu.get_cpu_capability()},
        "params": {"pico": count_params(pico), "pico_gpt2arch": count_params(gpt["fp32"]),
                   "hf_gpt2": sum(q.numel() for q in hf.parameters())},
        "tokens_per_s": {k: round(v, 1) for k, v in tok.items()},
        "ratios": {
            "pico_bf16 / pico_fp32": round(tok["pico_bf16"] / tok["pico_fp32"], 3),
            "pico_bf16 / hf_gpt2_sdpa_bf16": round(tok["pico_bf16"] / tok["hf_gpt2_sdpa_bf16"], 3),
            "pico_bf16 / hf_gpt2_sdpa_fp32": round(tok["pico_bf16"] / tok["hf_gpt2_sdpa_fp32"], 3),
            "pico_fp32 / hf_gpt2_sdpa_fp32": round(tok["pico_fp32"] / tok["hf_gpt2_sdpa_fp32"], 3),
            "pico_gpt2arch_bf16 / pico_gpt2arch_fp32": round(tok["pico_gpt2arch_bf16"] / tok["pico_gpt2arch_fp32"], 3),
            "pico_gpt2arch_bf16 / hf_gpt2_sdpa_bf16": round(tok["pico_gpt2arch_bf16"] / tok["hf_gpt2_sdpa_bf16"], 3),
            "pico_gpt2arch_bf16 / hf_gpt2_sdpa_fp32": round(tok["pico_gpt2arch_bf16"] / tok["hf_gpt2_sdpa_fp32"], 3),
            "pico_gpt2arch_fp32 / hf_gpt2_sdpa_fp32": round(tok["pico_gpt2arch_fp32"] / tok["hf_gpt2_sdpa_fp32"], 3),
        },
        **({"compiled": {  # what torch.compile buys the pipeline's step after its first compile (in the warmup)
            "pico_fp32_compiled / pico_fp32": round(tok["pico_fp32_compiled"] / tok["pico_fp32"], 3),
            "pico_bf16_compiled / pico_bf16": round(tok["pico_bf16_compiled"] / tok["pico_bf16"], 3)}}
           if args.compile else {}),
        "targets": "pico_bf16 >= 1.5x pico_fp32, >= 1.3x hf bf16, >= 2x hf fp32; pico_fp32 >= 1.3x hf fp32",
    })
    if args.profile:
        from torch.profiler import profile

        with profile() as prof:
            for _ in range(3):
                pico_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
