"""Memory under load: `pico play` and the evaluate generation path with 1,000 prompts in one call.

    python benchmarks/load_memory.py [--checkpoint checkpoints/dpo.pt] [--prompts 1000]

Peak RSS of a `pico play --prompt-file` process with 1,000 prompts vs with 16, and in-process RSS
sampled while `generate` (what `evaluate` calls) works through 1,000 prompts: growth beyond the first
batch should stay within the KV cache of one batch.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import save


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def play_peak_rss(checkpoint: str, tokenizer: str, prompts: list[str], new_tokens: int) -> tuple[float, float]:
    """(peak RSS MB, seconds) of one `pico play` process answering every prompt of a JSONL file."""
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "prompts.jsonl"
        f.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in prompts))
        cmd = [str(Path(sys.executable).parent / "pico"), "play", "--checkpoint", checkpoint, "--tokenizer", tokenizer,
               "--prompt-file", str(f), "--max-new-tokens", str(new_tokens), "--batch-size", "16"]
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        out, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(err)
        assert len(out.splitlines()) == len(prompts)
        # the largest peak RSS (KiB) of any child so far: run the small case before the big one
        return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", default="checkpoints/dpo.pt")
    ap.add_argument("--tokenizer", default="data/tokenizer/tokenizer.json")
    ap.add_argument("--prompts", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=64)
    args = ap.parse_args()

    from pico.checkpoint import load_checkpoint
    from pico.prompt import build_prompt, encode_prompt
    from pico.sampling import SamplingConfig, sample
    from pico.spec import sample_specs
    from pico.tokenizer import load_tokenizer

    prompts = [build_prompt(s) for s in sample_specs(args.prompts, 7)]
    small_peak, small_s = play_peak_rss(args.checkpoint, args.tokenizer, prompts[:16], args.new_tokens)
    big_peak, big_s = play_peak_rss(args.checkpoint, args.tokenizer, prompts, args.new_tokens)

    tok = load_tokenizer(args.tokenizer)
    model = load_checkpoint(args.checkpoint, tokenizer_hash=tok.hash).model
    ids = [encode_prompt(tok, p) for p in prompts]
    cfg = SamplingConfig(temperature=0.8, top_k=0, top_p=0.95, max_new_tokens=args.new_tokens, no_repeat_ngram=0,
                         seed=0)
    sample(model, ids[:16], cfg, tok.eot_id, batch_size=16)  # warm up allocator and threads
    before = rss_mb()
    samples: list[float] = []
    done = threading.Event()

    def sampler():
        while not done.is_set():
            samples.append(rss_mb())
            time.sleep(0.05)

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    outputs = sample(model, ids, cfg, tok.eot_id, batch_size=16)
    done.set()
    thread.join()
    after = rss_mb()
    quarter = max(len(samples) // 4, 1)
    kv_mb = 2 * model.cfg.n_layer * 16 * model.cfg.max_seq_len * model.cfg.d_model * 4 / 2**20
    save("load_memory", {
        "prompts": args.prompts, "new_tokens": args.new_tokens, "batch_size": 16,
        "pico_play_peak_rss_mb": {"16_prompts": round(small_peak, 1), f"{args.prompts}_prompts": round(big_peak, 1)},
        "pico_play_seconds": {"16_prompts": round(small_s, 1), f"{args.prompts}_prompts": round(big_s, 1)},
        "generate_rss_mb": {"before": round(before, 1), "peak": round(max(samples), 1), "after": round(after, 1),
                            "peak_first_quarter": round(max(samples[:quarter]), 1),
                            "peak_last_quarter": round(max(samples[-quarter:]), 1)},
        "kv_cache_mb_one_batch": round(kv_mb, 1),
        "outputs": len(outputs),
    })


if __name__ == "__main__":
    main()
