"""Copy rows in pretraining batches (pico/copy_rows.py): seeded, the share asked for, shaped as documented."""

import random

import numpy as np
import torch

from pico.copy_rows import CopyRows, keyword_example
from pico.data import TokenWindows, pack_tokens


def _rows(tok, sample_stories, share=0.5, batch_size=4, seq_len=64):
    tokens = pack_tokens(tok, sample_stories[:200], progress=False)
    windows = TokenWindows(tokens, seq_len, batch_size, seed=3)
    return CopyRows(windows, tok, share, seed=3), windows


def test_keyword_header_lists_spans_of_its_own_story():
    story = "Lily had a red ball. She took the red ball to the park and threw it high over the old oak tree."
    text = keyword_example(story, random.Random(0))
    header, body = text.split("\n\nStory:\n")
    assert body == story
    lines = header.split("\n")
    assert 3 <= len(lines) <= 5
    for line in lines:
        label, span = line.split(": ", 1)
        assert label[0].isupper() and span in story


def test_share_of_rows_replaced_and_batches_are_pure_functions_of_the_index(tok, sample_stories):
    rows, windows = _rows(tok, sample_stories)
    a, b, plain = rows.train_batch(5), rows.train_batch(5), windows.train_batch(5)
    assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["targets"], b["targets"])
    changed = [not torch.equal(a["input_ids"][r], plain["input_ids"][r]) for r in range(4)]
    assert changed == [True, True, False, False]  # half of 4 rows, the first ones; the rest natural windows
    assert torch.equal(a["input_ids"][:, 1:], a["targets"][:, :-1])  # still next-token targets
    assert a["input_ids"].shape == plain["input_ids"].shape
    assert not torch.equal(rows.train_batch(6)["input_ids"][:2], a["input_ids"][:2])


def test_keyword_row_and_pairs_row_shapes(tok, sample_stories):
    rows, _ = _rows(tok, sample_stories, seq_len=256)
    batch = rows.train_batch(0)
    keywords = tok.decode(batch["input_ids"][0].tolist())
    assert "\n\nStory:\n" in keywords and keywords.split(": ", 1)[0].strip() in {
        "Word", "Name", "Phrase", "Thing", "Place", "Rule", "Detail", "Line", "Item", "Feature", "Key", "Clue"}
    pairs = batch["input_ids"][1].tolist()
    lengths = [n for n in range(16, 65) if pairs[:n] == pairs[n : 2 * n] and pairs[2 * n] == tok.eot_id]
    assert lengths  # a 16-64-token segment written twice in a row, then EOT


def test_share_zero_rows_are_the_plain_windows(tok, sample_stories):
    rows, windows = _rows(tok, sample_stories, share=0.0)
    assert torch.equal(rows.train_batch(2)["input_ids"], windows.train_batch(2)["input_ids"])
    assert np.isclose(rows.share, 0.0)
