"""The dpo stage's on-policy sampling at several batch sizes, with and without dropping finished rows from the
batch: stories per second, in one run on the same checkpoint, prompts, settings and seed (the stage decodes
`dpo.onpolicy.batch_size` stories at a time, `evaluate` `evaluate.sample_batch_size`; both 64).

    PYTHONPATH=benchmarks python benchmarks/sampling_batch.py [checkpoints/sft.pt] [data/dpo/train.jsonl] \
        [--rows 32] [--sizes 16,32,64]

"kept" decodes every row to the batch's end, as pico did before finished rows left the batch
(`pico.sampling.COMPACT_SHARE` set to 1, so no row ever leaves). Each variant runs twice, interleaved, and the
faster of its two runs counts, so a slow minute on a shared machine does not decide a ratio. Batches left-pad
their prompts, so a story can differ by batch size in bf16 (the count of stories identical to the first
variant's is printed); the distribution sampled from is the same.
"""

from __future__ import annotations

import argparse
import time

import pico.sampling
from common import save
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
    variants = [(int(size), drop) for size in args.sizes.split(",") for drop in (False, True)]
    default_share = pico.sampling.COMPACT_SHARE
    best: dict[tuple[int, bool], float] = {}
    outputs: dict[tuple[int, bool], list[list[int]]] = {}
    for _ in range(2):
        for size, drop in variants:
            pico.sampling.COMPACT_SHARE = default_share if drop else 1.0
            start = time.perf_counter()
            outputs[size, drop] = sample(model, prompts, sampling, tok.eot_id, batch_size=size, device=device,
                                         dtype=dtype)
            best[size, drop] = min(best.get((size, drop), float("inf")), time.perf_counter() - start)
    pico.sampling.COMPACT_SHARE = default_share
    first = variants[0]
    table = []
    for size, drop in variants:
        same = sum(a == b for a, b in zip(outputs[first], outputs[size, drop]))
        tokens = sum(map(len, outputs[size, drop]))
        label = f"batch {size:3d}, finished rows {'dropped' if drop else 'kept   '}"
        print(f"{label}: {best[size, drop]:6.1f} s for {len(prompts)} stories ({tokens} tokens), "
              f"{len(prompts) / best[size, drop]:.2f} stories/s, {best[first] / best[size, drop]:.2f}x batch "
              f"{first[0]} kept; {same}/{len(prompts)} stories identical to it")
        seconds = best[size, drop]
        table.append({"batch_size": size, "finished_rows": "dropped" if drop else "kept", "seconds": round(seconds, 2),
                      "stories": len(prompts), "tokens": tokens, "stories_per_s": round(len(prompts) / seconds, 2),
                      "speedup_vs_first": round(best[first] / seconds, 3), "identical_to_first": same})
    save("sampling_batch", {"checkpoint": args.checkpoint, "rows": args.rows, "precision": str(dtype),
                            "settings": {"temperature": on.temperature, "top_p": on.top_p,
                                         "max_new_tokens": on.max_new_tokens, "no_repeat_ngram": on.no_repeat_ngram},
                            "variants": table})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
