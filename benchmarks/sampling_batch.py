"""The dpo stage's on-policy sampling at several batch sizes: stories per second, in one run on the same
checkpoint, prompts, settings and seed (the stage samples `2 x dpo.batch_size` = 16 at a time).

    python benchmarks/sampling_batch.py [checkpoints/sft.pt] [data/dpo/train.jsonl] [--rows 32] [--sizes 16,32,64]

Each size runs twice, interleaved (16, 32, 64, 16, 32, 64), and the faster of its two runs counts, so a slow
minute on a shared machine does not decide a ratio. Batches left-pad their prompts, so a story can differ by
batch size in bf16 (the count of identical stories is printed); the distribution sampled from is the same.
"""

from __future__ import annotations

import argparse
import time

from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.device import resolve_device, resolve_precision
from pico.io import read_jsonl
from pico.prompt import encode_prompt
from pico.sampling import SamplingConfig, sample
from pico.tokenizer import load_tokenizer


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("checkpoint", nargs="?", default="checkpoints/sft.pt")
    ap.add_argument("rows", nargs="?", default="data/dpo/train.jsonl")
    ap.add_argument("--rows", dest="n_rows", type=int, default=32, help="DPO prompts, each sampled 2 times")
    ap.add_argument("--sizes", default="16,32,64")
    args = ap.parse_args()
    cfg = load_params("params.yaml").dpo
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    model = load_checkpoint(args.checkpoint, tokenizer_hash=tok.hash).model
    rows = read_jsonl(args.rows, required=("prompt",))[: args.n_rows]
    prompts = [encode_prompt(tok, r["prompt"]) for r in rows for _ in range(2)]
    on = cfg.onpolicy
    sampling = SamplingConfig(temperature=on.temperature, top_k=0, top_p=on.top_p, max_new_tokens=on.max_new_tokens,
                              no_repeat_ngram=on.no_repeat_ngram, seed=cfg.seed)
    device = resolve_device(cfg.device)
    dtype = resolve_precision(cfg.precision, device)
    sizes = [int(s) for s in args.sizes.split(",")]
    best: dict[int, float] = {}
    outputs: dict[int, list[list[int]]] = {}
    for _ in range(2):
        for size in sizes:
            start = time.perf_counter()
            outputs[size] = sample(model, prompts, sampling, tok.eot_id, batch_size=size, device=device, dtype=dtype)
            best[size] = min(best.get(size, float("inf")), time.perf_counter() - start)
    first = sizes[0]
    for size in sizes:
        same = sum(a == b for a, b in zip(outputs[first], outputs[size]))
        tokens = sum(map(len, outputs[size]))
        print(f"batch {size:3d}: {best[size]:6.1f} s for {len(prompts)} stories ({tokens} tokens), "
              f"{len(prompts) / best[size]:.2f} stories/s, {best[first] / best[size]:.2f}x batch {first}; "
              f"{same}/{len(prompts)} stories identical to batch {first}'s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
