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


def test_copy_replay_appends_induction_rows_whose_loss_is_on_second_copies_only():
    from pico.copy_rows import with_copy_replay
    from pico.finetune import sft_batch
    from pico.prompt import Encoded

    rows = [Encoded(ids=list(range(10 + i, 90 + 7 * i)), loss_start=20, truncated=False) for i in range(4)]
    batch = sft_batch(rows)
    stream = torch.arange(100, 600)
    out = with_copy_replay(batch, stream, 0.5, eot=1, seed=3, k=7)
    assert out["input_ids"].shape == (6, batch["input_ids"].shape[1])  # 2 rows (0.5 x 4) as long as the batch's
    assert torch.equal(out["input_ids"][:4], batch["input_ids"]) and torch.equal(out["loss_mask"][:4], batch["loss_mask"])
    assert out["n_items"] == int(out["loss_mask"].sum()) > batch["n_items"]
    for r in (4, 5):
        ids = torch.cat([out["input_ids"][r, :1], out["targets"][r]])
        mask = out["loss_mask"][r]
        assert mask.sum() > 0 and mask[0] == 0
        # every masked target repeats the token one segment back: a run of L masked targets copies the L before
        t = 0
        while t < len(mask):
            if mask[t]:
                start = t
                while t < len(mask) and mask[t]:
                    t += 1
                n = t - start
                if t == len(mask):
                    break  # the row ends inside a second copy: a shorter run than its segment
                assert torch.equal(ids[start + 1 : t + 1], ids[start + 1 - n : t + 1 - n])
            t += 1
    again = with_copy_replay(batch, stream, 0.5, eot=1, seed=3, k=7)
    assert torch.equal(again["input_ids"], out["input_ids"])  # a pure function of (seed, k)
    assert not torch.equal(with_copy_replay(batch, stream, 0.5, eot=1, seed=3, k=8)["input_ids"][4:],
                           out["input_ids"][4:])
    assert with_copy_replay(batch, stream, 0.0, eot=1, seed=3, k=7) is batch


def test_stop_rows_end_each_copy_on_a_different_token_in_the_loss():
    import random

    from pico.copy_rows import pairs_row

    stream = torch.arange(100, 600)
    plain = pairs_row(stream, 400, 1, random.Random(5))
    assert torch.equal(plain[0], pairs_row(stream, 400, 1, random.Random(5), stop=False)[0])  # the default is as before
    ids, second = pairs_row(stream, 400, 1, random.Random(5), stop=True)
    t, runs = 0, 0
    while t < len(second):
        if second[t]:
            start = t
            while t < len(second) and second[t]:
                t += 1
            n = t - start  # segment + its end token
            if t == len(second):
                break
            first = ids[start - n : start]  # the first copy, with its own end token
            assert torch.equal(ids[start : t - 1], first[:-1])  # the segment copied...
            assert ids[t - 1] != first[-1]  # ...then a different end, which the loss sees
            assert ids[t] == 1  # EOT after each pair
            runs += 1
        t += 1
    assert runs >= 2
