"""Generation throughput with the KV cache vs recomputing the whole sequence each step (200 new tokens).

    python benchmarks/generate_kv.py [--checkpoint checkpoints/sft.pt]

With a checkpoint, its model and a real prompt length; without, a random model of the default shape.
EOS is disabled so every run makes exactly --new-tokens tokens.
"""

from __future__ import annotations

import argparse
import time

import torch

from common import save
from pico.config import load_params
from pico.model import build_model
from pico.sampling import SamplingConfig, sample


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--prompt-tokens", type=int, default=190, help="the length of a task prompt")
    ap.add_argument("--new-tokens", type=int, default=200)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    if args.checkpoint:
        from pico.checkpoint import load_checkpoint

        model = load_checkpoint(args.checkpoint).model
    else:
        p = load_params(args.params)
        torch.manual_seed(0)
        model = build_model(p.model, 4096)
    model.eval()
    V = model.vocab_size
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, V - 1, (args.prompt_tokens,), generator=g).tolist() for _ in range(args.batch)]
    cfg = SamplingConfig(temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=args.new_tokens, no_repeat_ngram=0,
                         seed=0)
    eos = V  # an id the model never emits: generation runs to max_new_tokens
    results = {}
    outputs = {}
    for name, use_cache in (("kv_cache", True), ("no_cache", False)):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            outputs[name] = sample(model, prompts, cfg, eos, batch_size=args.batch, use_cache=use_cache)
            times.append(time.perf_counter() - t0)
        n = sum(len(o) for o in outputs[name])
        results[name] = round(n / min(times), 1)
    assert outputs["kv_cache"] == outputs["no_cache"], "cached and uncached decoding disagree"
    save("generate_kv", {
        "model": {k: getattr(model.cfg, k) for k in ("type", "d_model", "n_layer", "n_head", "max_seq_len")},
        "prompt_tokens": args.prompt_tokens, "new_tokens": args.new_tokens, "batch": args.batch,
        "tokens_per_s": results, "speedup_kv_vs_no_cache": round(results["kv_cache"] / results["no_cache"], 2),
        "same_tokens": True, "target": "kv_cache >= 5x no_cache",
    })


if __name__ == "__main__":
    main()
