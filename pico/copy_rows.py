"""Copy rows: a share of every pretraining batch that teaches copying from context, shaped like the task.

Following a spec means writing the spec's own words into the story. Natural text rarely asks a small model to
copy, so at pico's budget it never learns to (issue 19; `pico/copying.py` measures it). A `copy_share` of the
rows of every pretraining micro-batch is one of two kinds, alternating:

- keywords: a TinyStories story under a header of 3-5 "Label: span" lines whose spans (1-7 words) are taken
  from the story itself, in shuffled order: a header lists phrases the text will use, each once, as a
  spec lists the fields a story must use. The story stays fluent TinyStories text.
- pairs: shuffled 16-64-token segments of the stream, each written twice in a row, then EOT (dense induction
  rows, the shape of the induction test). No segment appears a third time, so nothing teaches loops.

Rows are pure functions of (seed, micro-batch index), like the windows they replace: resume and DDP need no
state. Measured in RESEARCH.md (runs p2, p3, p5): keywords + pairs gave the best induction at the same
bits per byte; keywords alone or with single far repeats did worse.
"""

from __future__ import annotations

import random

import numpy as np
import torch

from pico.data import TokenWindows, stable_seed
from pico.tokenizer import Tokenizer

LABELS = ("Word", "Name", "Phrase", "Thing", "Place", "Rule", "Detail", "Line", "Item", "Feature", "Key", "Clue")
STORY_POOL = 3000  # stories of the stream turned into keyword rows
MIN_STORY_TOKENS = 40


def stories_in(tokens: np.ndarray, eot_id: int, limit: int) -> list[np.ndarray]:
    """Up to `limit` stories of a packed stream (the ids between two EOTs), the very short ones left out."""
    ends = np.flatnonzero(tokens == eot_id)[: limit + 1]
    return [tokens[a + 1 : b] for a, b in zip(ends[:-1], ends[1:]) if b - a > MIN_STORY_TOKENS]


def keyword_example(story: str, rng: random.Random) -> str:
    """The story under a header of spans cut from it: 'Label: span' lines in shuffled order, then 'Story:'."""
    words = story.split()
    spans: list[str] = []
    used: set[int] = set()
    want = rng.randint(3, 5)
    for _ in range(20):
        if len(spans) == want or len(words) < 12:
            break
        n = rng.choice((1, 1, 2, 3, 4, 5, 6, 7))
        i = rng.randrange(1, max(2, len(words) - n))  # not the first word: the same leading space as in the header
        if used & set(range(i - 1, i + n + 1)):
            continue  # spans do not touch
        span = " ".join(words[i : i + n]).strip(".,!?\";:'")
        if span:
            used |= set(range(i, i + n))
            spans.append(span)
    labels = rng.sample(LABELS, len(spans))
    order = list(range(len(spans)))
    rng.shuffle(order)
    header = "\n".join(f"{labels[j]}: {spans[j]}" for j in order)
    return f"{header}\n\nStory:\n{story}"


def pairs_row(tokens: torch.Tensor, width: int, eot: int, rng: random.Random,
              stop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """A row of `width` ids: shuffled 16-64-token segments of `tokens`, each twice in a row, then EOT; and a
    bool mask of the ids in a second copy (the ones a copier predicts).

    With `stop`, each copy ends on a token of its own (two different tokens drawn from `tokens`) and the second
    copy's end is in the mask: a copier must learn where a copy stops, not only how it goes on. A spec's value
    in a prompt is followed by a newline, the same value in a story by anything else (RESEARCH.md, finding 18).
    """
    parts, second, n = [], [], 0
    g = torch.Generator().manual_seed(rng.randrange(1 << 30))
    while n < width:
        length = rng.randint(16, 64)
        src = rng.randrange(0, len(tokens) - length)
        segment = tokens[src : src + length][torch.randperm(length, generator=g)]
        if stop:
            first_end, second_end = _two_different(tokens, rng)
            parts += [segment, first_end, segment, second_end, torch.tensor([eot])]
            second += [torch.zeros(length + 1, dtype=torch.bool), torch.ones(length + 1, dtype=torch.bool),
                       torch.zeros(1, dtype=torch.bool)]
            n += 2 * length + 3
            continue
        parts += [segment, segment, torch.tensor([eot])]
        second += [torch.zeros(length, dtype=torch.bool), torch.ones(length, dtype=torch.bool),
                   torch.zeros(1, dtype=torch.bool)]
        n += 2 * length + 1
    return torch.cat(parts)[:width], torch.cat(second)[:width]


def _two_different(tokens: torch.Tensor, rng: random.Random) -> tuple[torch.Tensor, torch.Tensor]:
    """Two tokens of `tokens` at random positions, different ids (one-id streams give the same id twice)."""
    a = tokens[rng.randrange(len(tokens))]
    for _ in range(64):
        b = tokens[rng.randrange(len(tokens))]
        if b != a:
            break
    return a.reshape(1), b.reshape(1)


def with_copy_replay(batch: dict, tokens: torch.Tensor, share: float, eot: int, seed: int, k: int,
                     stop: bool = False) -> dict:
    """A fine-tuning micro-batch with round(share x B) induction rows (`pairs_row` of `tokens`) appended, as
    long as its other rows, the loss on their second copies only: SFT on template stories otherwise unlearns
    copying arbitrary text (RESEARCH.md). A pure function of (seed, k), like the batch itself."""
    B, T = batch["input_ids"].shape
    n = round(share * B)
    if n == 0:
        return batch
    rng = random.Random(stable_seed(seed, k, 11))
    rows, masks = zip(*(pairs_row(tokens, T + 1, eot, rng, stop) for _ in range(n)))
    return append_rows(batch, torch.stack(rows), torch.stack(masks))


def append_rows(batch: dict, rows: torch.Tensor, mask: torch.Tensor) -> dict:
    """A fine-tuning micro-batch with `rows` (n, T + 1) of ids appended, the loss where `mask` (n, T + 1) holds."""
    out = dict(batch)
    out["input_ids"] = torch.cat([batch["input_ids"], rows[:, :-1]])
    out["targets"] = torch.cat([batch["targets"], rows[:, 1:]])
    out["loss_mask"] = torch.cat([batch["loss_mask"], mask[:, 1:].to(batch["loss_mask"].dtype)])
    out["n_items"] = float(out["loss_mask"].sum().item())
    out["tokens"] = batch["tokens"] + rows.shape[0] * (rows.shape[1] - 1)
    return out


class CopyRows:
    """Pretraining batches of `windows` with `share` of their rows replaced by copy rows (keywords, pairs)."""

    def __init__(self, windows: TokenWindows, tok: Tokenizer, share: float, seed: int):
        self.windows, self.share, self.seed, self.eot = windows, share, seed, tok.eot_id
        self.width = windows.seq_len + 1
        rng = random.Random(f"{seed}/keywords")
        stories = stories_in(windows.tokens.numpy(), tok.eot_id, STORY_POOL)
        self.keyword_rows = [tok.encode(keyword_example(tok.decode(s.tolist()), rng)) + [tok.eot_id] for s in stories]

    def _keywords(self, rng: random.Random) -> torch.Tensor:
        ids: list[int] = []
        while len(ids) < self.width:
            ids += self.keyword_rows[rng.randrange(len(self.keyword_rows))]
        return torch.tensor(ids[: self.width])

    def _pairs(self, rng: random.Random) -> torch.Tensor:
        return pairs_row(self.windows.tokens, self.width, self.eot, rng)[0]

    def train_batch(self, k: int) -> dict:
        batch = self.windows.train_batch(k)
        n = round(self.share * batch["input_ids"].shape[0])
        if n == 0:
            return batch
        rng = random.Random(stable_seed(self.seed, k, 7))
        for r in range(n):
            row = self._keywords(rng) if (r % 2 == 0 and self.keyword_rows) else self._pairs(rng)
            batch["input_ids"][r], batch["targets"][r] = row[:-1], row[1:]
        if self.windows.token_bytes is not None:
            batch["target_bytes"] = self.windows.token_bytes[batch["targets"]]
        return batch
