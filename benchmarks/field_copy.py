"""Field copying under teacher forcing (`pico/copying.py`) on any SFT split, for any checkpoints: evaluate reports
it on test_unseen only; this compares it with the seen-value test split (README, RESEARCH.md finding 14).

    python benchmarks/field_copy.py data/sft/test.jsonl checkpoints/sft.pt checkpoints/dpo.pt
"""

from __future__ import annotations

import sys

import torch

from pico.checkpoint import load_checkpoint
from pico.copying import field_copy_metrics
from pico.device import resolve_precision
from pico.io import read_jsonl
from pico.tokenizer import load_tokenizer


def main(argv: list[str]) -> int:
    rows = read_jsonl(argv[0], required=("prompt", "response", "spec"))
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    dtype = resolve_precision("auto", torch.device("cpu"))
    for path in argv[1:]:
        ckpt = load_checkpoint(path, tokenizer_hash=tok.hash)
        metrics = field_copy_metrics(ckpt.model, tok, rows, ckpt.model_cfg.max_seq_len, dtype=dtype)
        print(path, " ".join(f"{k.removeprefix('field_')} {v:.2f}" for k, v in metrics.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
