"""SFT variants from the workspace's base model, measured like `evaluate` (RESEARCH.md, finding 20): a quick
research probe (about 3 minutes a variant on 2 cores), not a pipeline stage.

    python benchmarks/sft_probe.py pairs                 # the sft stage's own recipe (induction replay rows)
    python benchmarks/sft_probe.py ts_keywords_pairs     # replay: TinyStories keyword rows + induction rows
    python benchmarks/sft_probe.py pairs --fresh-names   # train/valid rows renamed (generate.fresh_names = 1)
    python benchmarks/sft_probe.py pairs --mask-newlines # only the evaluation: the copy head may not copy "\\n"

Replay kinds: `pairs` is `pico.copy_rows.with_copy_replay` (shuffled segments of the SFT rows written twice);
`ts_keywords_pairs` alternates pretraining's keyword rows (a TinyStories story under "Label: span" lines cut from
it, loss on every token: a span is copied from a header and the story goes on in English after it) with the
same induction rows. `--mask-newlines` removes every slot holding a token with a newline from the copy head's
choices at evaluation (a probe of RESEARCH.md finding 14's mechanism, not a model option). Prints one JSON line:
induction, field copying and field_end NLL on test_unseen, and pass_all with the failed checks on test_unseen and
test (64 specs each, evaluate's sampling settings). Reads params.yaml, checkpoints/base.pt, data/.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter

import numpy as np
import torch

import pico.model
import pico.recipes.finetune as recipes
from pico.checkpoint import load_checkpoint
from pico.config import load_params
from pico.copy_rows import CopyRows, append_rows, pairs_row, with_copy_replay
from pico.copying import field_copy_metrics, induction_batch, induction_nll
from pico.data import TokenWindows, stable_seed
from pico.device import resolve_precision
from pico.evaluate import check_generation
from pico.generate import fresh_names_rng, with_fresh_names
from pico.io import read_jsonl
from pico.prompt import encode_prompt
from pico.sampling import SamplingConfig, sample
from pico.spec import Spec
from pico.tokenizer import load_tokenizer


def keyword_replay(keyword_rows: list[list[int]]):
    """`with_copy_replay`'s signature; its rows alternate a keyword row (loss everywhere) and an induction row."""
    def replay(batch, tokens, share, eot, seed, k, stop=False):
        B, T = batch["input_ids"].shape
        n = round(share * B)
        rng = random.Random(stable_seed(seed, k, 11))
        rows, masks = [], []
        for r in range(n):
            if r % 2 == 0:
                ids: list[int] = []
                while len(ids) < T + 1:
                    ids += keyword_rows[rng.randrange(len(keyword_rows))]
                rows.append(torch.tensor(ids[: T + 1]))
                masks.append(torch.ones(T + 1, dtype=torch.bool))
            else:
                row, mask = pairs_row(tokens, T + 1, eot, rng, stop)
                rows.append(row)
                masks.append(mask)
        return append_rows(batch, torch.stack(rows), torch.stack(masks))
    return replay


def mask_newline_slots(newline_ids: torch.Tensor) -> None:
    """Patch the model class so the copy head never points at a slot holding one of `newline_ids`."""
    plain, cached = pico.model.GPT._copy_slots, pico.model.GPT._cached_copy_slots

    def copy_slots(self, *args):
        keys, ids, key_mask, history = plain(self, *args)
        return keys, ids, key_mask & ~torch.isin(ids, newline_ids)[:, None, :], history

    def cached_copy_slots(self, *args):
        keys, ids, key_mask, history = cached(self, *args)
        return keys, ids, key_mask & ~torch.isin(ids, newline_ids)[:, None, :], history

    pico.model.GPT._copy_slots, pico.model.GPT._cached_copy_slots = copy_slots, cached_copy_slots


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("replay", choices=["pairs", "ts_keywords_pairs"])
    ap.add_argument("--fresh-names", action="store_true")
    ap.add_argument("--mask-newlines", action="store_true")
    args = ap.parse_args()
    params = load_params("params.yaml")
    cfg, ev = params.sft, params.evaluate
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    dtype = resolve_precision("auto", torch.device("cpu"))
    if args.replay == "ts_keywords_pairs":
        windows = TokenWindows(np.fromfile("data/tokens/train.bin", dtype=np.uint16), 511, 8, cfg.seed)
        recipes.with_copy_replay = keyword_replay(CopyRows(windows, tok, 0.25, params.pretrain.seed).keyword_rows)
    else:
        recipes.with_copy_replay = with_copy_replay
    splits = {s: read_jsonl(f"data/sft/{s}.jsonl") for s in ("train", "valid")}
    if args.fresh_names:
        seed = params.generate.seed
        splits = {s: [with_fresh_names(r, fresh_names_rng(seed, "sft", s, i)) for i, r in enumerate(rows)]
                  for s, rows in splits.items()}
    torch.manual_seed(0)
    started = time.perf_counter()
    trained = recipes.sft(cfg, load_checkpoint("checkpoints/base.pt", tokenizer_hash=tok.hash), tok,
                          splits["train"], splits["valid"])
    model = trained.model.eval()
    out = {"replay": args.replay, "fresh_names": args.fresh_names, "mask_newlines": args.mask_newlines,
           "sft_seconds": round(time.perf_counter() - started), "val_loss": trained.metrics["val_loss"]}
    if args.mask_newlines:
        mask_newline_slots(torch.tensor([i for i in range(tok.vocab_size) if "\n" in tok.decode([i])]))
    val = np.fromfile("data/tokens/val.bin", dtype=np.uint16)
    out.update({k: round(v, 3) for k, v in induction_nll(model, induction_batch(val), dtype).items()})
    sampling = SamplingConfig.of(ev)
    for split in ("test_unseen", "test"):
        rows = read_jsonl(f"data/sft/{split}.jsonl")[: ev.n_generations]
        if split == "test_unseen":
            out.update({k: round(v, 3) for k, v in field_copy_metrics(model, tok, rows, cfg.max_len,
                                                                      batch_size=ev.batch_size, dtype=dtype).items()})
        outputs = sample(model, [encode_prompt(tok, r["prompt"]) for r in rows], sampling, tok.eot_id,
                         batch_size=ev.batch_size, dtype=dtype)
        checks = [check_generation(tok.decode(o), Spec.from_dict(r["spec"])) for o, r in zip(outputs, rows)]
        out[f"{split}_pass_all"] = round(sum(c["passed_all"] for c in checks) / len(checks), 3)
        out[f"{split}_failed"] = dict(Counter(f for c in checks for f in c["failed"]).most_common())
    print(json.dumps(out))


if __name__ == "__main__":
    main()
