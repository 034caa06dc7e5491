"""What the copy head does at one point of a story: the vocabulary side's weight, its top tokens, the copy
side's top slots and the mixture (RESEARCH.md, finding 14).

    python benchmarks/copy_gate.py checkpoints/dpo.pt data/sft/test_unseen.jsonl 3 "It was late when Kofi"

Row 3 of the file gives the prompt; the text after it is the story so far.
"""

from __future__ import annotations

import sys

import torch

from pico.checkpoint import load_checkpoint
from pico.io import read_jsonl
from pico.prompt import encode_prompt
from pico.tokenizer import load_tokenizer


def top(tok, probs: torch.Tensor, ids: torch.Tensor | None = None, k: int = 5) -> list[tuple[str, float]]:
    values, index = probs.topk(min(k, probs.numel()))
    return [(tok.decode([int(ids[i] if ids is not None else i)]), round(float(v), 3)) for v, i in zip(values, index)]


@torch.no_grad()
def main(argv: list[str]) -> int:
    ckpt, rows_path, row, prefix = argv[0], argv[1], int(argv[2]), argv[3]
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    model = load_checkpoint(ckpt).model.eval()
    if model.copy is None:
        raise SystemExit(f"{ckpt}: the model has no copy head")
    prompt = read_jsonl(rows_path, required=("prompt",))[row]["prompt"]
    idx = torch.tensor([encode_prompt(tok, prompt) + tok.encode(prefix)])
    hidden = model(idx, return_hidden=True)
    keys, slot_ids, key_mask, history = model._copy_slots(idx, hidden, model.wte(idx))
    history = None if history is None else (history[0][:, -1:], history[1])
    log_a = model.copy.log_weights(hidden[:, -1:], keys, key_mask[:, -1:], history=history)[0, 0]
    print(f"after {prefix!r}: vocabulary side weight {float(log_a[0].exp()):.3f}")
    print("  vocabulary side:", top(tok, torch.softmax(model.head(hidden[0, -1]), -1)))
    print("  copy slots:     ", top(tok, log_a[1:].exp(), slot_ids[0]))
    print("  mixture:        ", top(tok, model(idx)[0, -1].exp()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
