"""DPO step throughput (pairs/s), pico vs TRL's DPOTrainer, same GPT-2 shape, same pairs, CPU, fp32 and bf16.

    python benchmarks/dpo_cpu.py                 # needs the `bench` extra and data/tokenizer/tokenizer.json

Pairs: the template data of `generate` (default params), tokenized with the project tokenizer for both.
TRL is timed as configured by default (reference model forward every step) and with
`precompute_ref_log_probs=True`, in fp32 and with `bf16=True` (autocast on CPU); pico in fp32 and bf16 (the
`precision` param). Times are per optimizer step, median after warm-up steps. pico's four runs are repeated
`--rounds` times, interleaved (fp32, bf16, fp32, bf16, ...): pairs/s are medians over rounds, and a bf16/fp32
ratio is the median of the rounds' own ratios (this VM's speed drifts by a third within minutes, and a ratio
of two runs minutes apart carries that drift).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import functools
import statistics
import time

import torch

from common import save
from pico.config import load_params
from pico.device import cpu_has_native_bf16, resolve_precision
from pico.finetune import BucketedBatches, dpo_batch, encode_dpo_rows, pair_logps, with_reference
from pico.generate import generate_rows
from pico.losses import dpo_batch_loss
from pico.model import build_model
from pico.tokenizer import load_tokenizer
from pico.train import train


def hf_tokenizer(tok):
    """A transformers tokenizer that yields exactly the project tokenizer's ids (so TRL sees the same tokens)."""
    from transformers import PreTrainedTokenizer

    class Tiktoken(PreTrainedTokenizer):
        def __init__(self, **kw):
            self.tok = tok
            super().__init__(eos_token="<|endoftext|>", pad_token="<|endoftext|>", **kw)

        @property
        def vocab_size(self):
            return tok.vocab_size

        def get_vocab(self):
            return {**{str(i): i for i in range(tok.eot_id)}, "<|endoftext|>": tok.eot_id}

        def _tokenize(self, text, **kw):
            return [str(i) for i in tok.encode(text)]

        def _convert_token_to_id(self, token):
            return tok.eot_id if token == "<|endoftext|>" else int(token)

        def _convert_id_to_token(self, index):
            return "<|endoftext|>" if index == tok.eot_id else str(index)

        def convert_tokens_to_string(self, tokens):
            return tok.decode(int(t) for t in tokens if t != "<|endoftext|>")

    return Tiktoken()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--pairs", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="interleaved repeats of pico's runs (median taken)")
    args = ap.parse_args()
    p = load_params(args.params)
    cfg, dpo = p.model, p.dpo
    B = dpo.batch_size
    tok = load_tokenizer(args.tokenizer)
    gen = dataclasses.replace(p.generate, sft_splits={"train": 1, "valid": 1, "test": 1, "test_unseen": 1},
                              dpo_splits={"train": args.pairs, "valid": 1, "test": 1})
    rows = generate_rows(gen).rows[("dpo", "train")]
    device = torch.device("cpu")

    # --- pico: the dpo stage's own path (reference log-probs once, one forward for chosen+rejected, bucketing)
    def run_pico(precision: str, model_cfg=cfg) -> tuple[float, float]:
        torch.manual_seed(0)
        model = build_model(model_cfg, tok.vocab_size)
        pairs, _ = encode_dpo_rows(tok, rows, dpo.max_len, dpo.truncation)
        t_ref = time.perf_counter()
        pairs = with_reference(pairs, pair_logps(model, pairs, B, device, resolve_precision(precision, device)))
        ref_seconds = time.perf_counter() - t_ref
        batches = BucketedBatches([p.length for p in pairs], B, 0, lambda idx: dpo_batch([pairs[i] for i in idx]))
        step_times: list[float] = []
        loss_fn = functools.partial(dpo_batch_loss, beta=dpo.beta, rpo_alpha=dpo.rpo_alpha)  # the stage's loss

        def timed_batch(k):
            step_times.append(time.perf_counter())
            return batches.micro(k)

        tcfg = dataclasses.replace(dpo, seed=0, device="cpu", precision=precision, grad_accum=1, lr=1e-6,
                                   warmup_steps=0, eval_every=10**6, save_every=10**6, log_every=10**6)
        train(model, tcfg, total_steps=args.warmup + args.steps + 1, get_batch=timed_batch, loss_fn=loss_fn)
        return statistics.median([b - a for a, b in zip(step_times, step_times[1:])][args.warmup:]), ref_seconds

    # pico's default model has RoPE and a copy head; GPT-2's architecture is the like-for-like comparison with TRL
    gpt_cfg = dataclasses.replace(cfg, pos_encoding="learned", copy_head=False)
    runs = {"pico_fp32": ("fp32", cfg), "pico_bf16": ("bf16", cfg),
            "pico_gpt2arch_fp32": ("fp32", gpt_cfg), "pico_gpt2arch_bf16": ("bf16", gpt_cfg)}
    rounds: list[dict[str, float]] = []
    ref_seconds = []
    for _ in range(args.rounds):
        times = {}
        for name, (precision, model_cfg) in runs.items():
            times[name], ref = run_pico(precision, model_cfg)
            if name == "pico_fp32":
                ref_seconds.append(ref)
        rounds.append(times)
    pico_fp32, pico_bf16, gpt_fp32, gpt_bf16 = (statistics.median(r[name] for r in rounds) for name in runs)
    ref_seconds = statistics.median(ref_seconds)
    round_ratios = {f"{name} / {name[:-4]}fp32": [round(r[f"{name[:-4]}fp32"] / r[name], 3) for r in rounds]
                    for name in ("pico_bf16", "pico_gpt2arch_bf16")}

    # --- TRL
    from datasets import Dataset
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    hf_tok = hf_tokenizer(tok)
    data = Dataset.from_list([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"]} for r in rows])

    class Clock(TrainerCallback):
        def __init__(self):
            self.starts = []

        def on_step_begin(self, a, state, control, **kw):
            self.starts.append(time.perf_counter())

    def run_trl(precompute: bool, bf16: bool = False) -> tuple[float, float]:
        torch.manual_seed(0)
        hf_cfg = GPT2Config(vocab_size=tok.vocab_size, n_positions=cfg.max_seq_len, n_embd=cfg.d_model,
                            n_layer=cfg.n_layer, n_head=cfg.n_head, n_inner=cfg.mlp_ratio * cfg.d_model,
                            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=tok.eot_id,
                            eos_token_id=tok.eot_id, pad_token_id=tok.eot_id)
        hf_cfg._attn_implementation = "sdpa"
        targs = DPOConfig(output_dir="/tmp/pico-bench-trl", per_device_train_batch_size=B, max_steps=args.warmup + args.steps + 1,
                          learning_rate=1e-6, beta=dpo.beta, max_length=dpo.max_len, use_cpu=True, report_to="none",
                          save_strategy="no", logging_strategy="no", dataloader_num_workers=0, seed=0,
                          precompute_ref_log_probs=precompute, bf16=bf16)
        clock = Clock()
        policy = GPT2LMHeadModel(hf_cfg)
        reference = copy.deepcopy(policy).eval()  # the frozen reference, as DPOTrainer would load it
        trainer = DPOTrainer(model=policy, ref_model=reference, args=targs, train_dataset=data,
                             processing_class=hf_tok, callbacks=[clock])
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
        starts = clock.starts
        steps = [b - a for a, b in zip(starts, starts[1:])][args.warmup:]
        return statistics.median(steps), total

    pairs_per_s = {"pico_fp32": B / pico_fp32, "pico_bf16": B / pico_bf16,
                   "pico_gpt2arch_fp32": B / gpt_fp32, "pico_gpt2arch_bf16": B / gpt_bf16,
                   "trl_dpo_default_fp32": B / run_trl(False)[0], "trl_dpo_precomputed_ref_fp32": B / run_trl(True)[0],
                   "trl_dpo_default_bf16": B / run_trl(False, bf16=True)[0],
                   "trl_dpo_precomputed_ref_bf16": B / run_trl(True, bf16=True)[0]}
    save("dpo_cpu", {
        "shape": {"d_model": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head, "max_len": dpo.max_len,
                  "vocab": tok.vocab_size, "pairs_per_batch": B, "pos_encoding": cfg.pos_encoding,
                  "copy_head": cfg.copy_head},
        "bf16_capability": {"native_bf16": cpu_has_native_bf16()},
        "pairs": len(rows), "rounds": args.rounds, "pico_reference_logps_seconds_fp32": round(ref_seconds, 2),
        "ratios_per_round": round_ratios,
        "pairs_per_s": {k: round(v, 3) for k, v in pairs_per_s.items()},
        # bf16 / fp32: the median of the rounds' own ratios (each pairs two runs seconds apart), not a ratio of
        # medians taken from different rounds, which carries the drift between them
        "ratios": {**{name: statistics.median(values) for name, values in round_ratios.items()},
                   **{f"pico_gpt2arch_{k.rsplit('_', 1)[1]} / {k}":
                      round(pairs_per_s[f"pico_gpt2arch_{k.rsplit('_', 1)[1]}"] / v, 3)
                      for k, v in pairs_per_s.items() if k.startswith("trl")},
                   **{f"pico_{k.rsplit('_', 1)[1]} / {k}": round(pairs_per_s[f"pico_{k.rsplit('_', 1)[1]}"] / v, 3)
                      for k, v in pairs_per_s.items() if k.startswith("trl")}},
        "targets": "pico_bf16 >= 1.4x pico_fp32; pico ahead of TRL in each precision",
    })


if __name__ == "__main__":
    main()
