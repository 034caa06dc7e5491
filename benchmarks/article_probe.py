"""The article at a value's first mention, teacher-forced: does a checkpoint give the value's own article ("a" or
"an", as the spec writes it) more probability than the other one? (RESEARCH.md, finding 59.)

    python benchmarks/article_probe.py data/sft/test_unseen.jsonl checkpoints/sft.pt [more checkpoints ...]

For every row (prompt, reference story, spec) and each of the setting and the object, at the token where the story
first writes the value's article: the mixture's probability of the value's own article and of the other one (the
copy head's and the vocabulary side's together: the model's output, logits or the copy mixture's log-probs). Prints, per
checkpoint and field, the mean of each and how many rows put the own article above the other. Sampling turns a
near coin flip here into the wrong articles `fluent` fails (`pico.checks.wrong_articles`).
"""

from __future__ import annotations

import sys

import torch

from pico.checkpoint import load_checkpoint
from pico.copying import field_token_span
from pico.io import read_jsonl
from pico.prompt import encode_sft
from pico.spec import Spec
from pico.tokenizer import load_tokenizer

FIELDS = ("setting", "object")


def article_ids(tok) -> dict[str, int]:
    """The token ids of ' a' and ' an' (one token each in pico's tokenizer)."""
    found = {}
    for word in ("a", "an"):
        ids = tok.encode(" " + word)
        if len(ids) != 1:
            raise SystemExit(f"' {word}' is {len(ids)} tokens in this tokenizer; the probe needs one")
        found[word] = ids[0]
    return found


def article_rows(tok, rows: list[dict], max_len: int, article_id: dict[str, int]) -> list[tuple[list[int], list]]:
    """Per row: (ids, [(index of the article token in ids, field, article), ...]) for each field whose value the
    story states verbatim, its first mention opening with the value's own article."""
    out = []
    for row in rows:
        spec, story = Spec(**row["spec"]), row["response"]
        enc = encode_sft(tok, row["prompt"], story, max_len)
        if enc is None:
            continue
        response = enc.ids[enc.loss_start:]
        marks = []
        for field in FIELDS:
            value = getattr(spec, field)
            article = value.split()[0].lower()
            span = field_token_span(tok, response, story, value)
            if article in article_id and span is not None and response[span[0]] == article_id[article]:
                marks.append((enc.loss_start + span[0], field, article))
        if marks:
            out.append((enc.ids, marks))
    return out


@torch.no_grad()
def main(argv: list[str]) -> int:
    rows_path, ckpts = argv[0], argv[1:]
    if not ckpts:
        raise SystemExit(__doc__)
    tok = load_tokenizer("data/tokenizer/tokenizer.json")
    article_id = article_ids(tok)
    rows, encoded = read_jsonl(rows_path), {}
    for ckpt in ckpts:
        model = load_checkpoint(ckpt).model.eval()
        max_len = model.cfg.max_seq_len
        if max_len not in encoded:  # tokenized once for every checkpoint of the same context length
            encoded[max_len] = article_rows(tok, rows, max_len, article_id)
        stats = {f: [] for f in FIELDS}
        for ids, marks in encoded[max_len]:  # one forward pass a row serves both articles of both its fields
            probs = torch.softmax(model(torch.tensor([ids[:-1]])).float()[0], dim=-1)  # logits or mixture log-probs
            for k, field, article in marks:
                other = "an" if article == "a" else "a"
                stats[field].append((float(probs[k - 1, article_id[article]]), float(probs[k - 1, article_id[other]])))
        for field, got in stats.items():
            if got:
                own_mean, other_mean = sum(g[0] for g in got) / len(got), sum(g[1] for g in got) / len(got)
                wins = sum(g[0] > g[1] for g in got)
                print(f"{ckpt} {field}: P(own article) {own_mean:.2f}, P(other) {other_mean:.2f}, own above other in "
                      f"{wins} of {len(got)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
