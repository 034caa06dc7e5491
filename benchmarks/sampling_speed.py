"""Evaluation-style generation time, top-p drawn among the nucleus's candidates (pico's path) against sorting the
whole vocabulary (the path before it), in one run on the same checkpoint, prompts and seed.

    python benchmarks/sampling_speed.py [checkpoints/dpo.pt] [data/sft/test_unseen.jsonl]
"""

from __future__ import annotations

import sys
import time

import pico.sampling as sampling
from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.device import resolve_precision
from pico.io import read_jsonl
from pico.prompt import encode_prompt
from pico.tokenizer import load_tokenizer


def main(argv: list[str]) -> int:
    ckpt_path = argv[0] if argv else "checkpoints/dpo.pt"
    rows = read_jsonl(argv[1] if len(argv) > 1 else "data/sft/test_unseen.jsonl", required=("prompt",))
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    ev = load_params("params.yaml").evaluate
    model = load_checkpoint(ckpt_path, tokenizer_hash=tok.hash).model
    prompts = [encode_prompt(tok, r["prompt"]) for r in rows]
    cfg = sampling.SamplingConfig.of(ev)
    dtype = resolve_precision(ev.precision, next(model.parameters()).device)
    nucleus = sampling.nucleus_candidates
    times = {}
    for name, finder in (("nucleus candidates", nucleus), ("full sort", lambda *a, **k: None)):
        sampling.nucleus_candidates = finder
        start = time.perf_counter()
        outs = sampling.sample(model, prompts, cfg, tok.eot_id, batch_size=ev.batch_size, dtype=dtype)
        times[name] = time.perf_counter() - start
        print(f"{name}: {times[name]:.1f} s for {len(prompts)} stories, {sum(map(len, outs))} tokens")
    sampling.nucleus_candidates = nucleus
    print(f"full sort / nucleus candidates: {times['full sort'] / times['nucleus candidates']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
