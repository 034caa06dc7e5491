import pytest

from pico.errors import DataError
from pico.tinystories import (
    EOT,
    broken_reason,
    clean_story,
    find_shards,
    join_stories,
    make_splits,
    read_prepared,
    split_stories,
    summarize,
)

STORY = "Once upon a time, a little cat named Tom found a red ball in the garden and played all day long."


def test_clean_story_normalizes_mojibake_quotes_and_whitespace():
    raw = "  Tom said, â€œHi!â€\x9d  and    smiled.\r\n\r\n\r\nIt\u2019s fun\u2026  \n"
    assert clean_story(raw) == 'Tom said, "Hi!" and smiled.\nIt\'s fun...'


def test_broken_reasons():
    assert broken_reason("", 10, 100) == "empty"
    assert broken_reason("short", 10, 100) == "too_short"
    assert broken_reason("x" * 200, 10, 100) == "too_long"
    assert broken_reason("bad \ufffd bytes here", 5, 100) == "broken_bytes"
    assert broken_reason("1234567890 ... 42", 5, 100) == "no_letters"
    assert broken_reason(STORY, 10, 1000) is None


def test_split_requires_the_separator():
    with pytest.raises(DataError, match="no <\\|endoftext\\|> separator"):
        split_stories("a story without any marker", "corpus.txt")
    assert split_stories(f"a\n{EOT}\nb\n{EOT}\n") == ["a\n", "\nb\n", "\n"]


def _stories(n, prefix="Story"):
    return [f"{prefix} number {i}. " + STORY for i in range(n)]


def test_make_splits_keeps_own_valid_and_removes_leaks():
    train_raw = _stories(20) + [_stories(1, "Valid")[0].upper()]  # a valid story, differently cased
    valid_raw = _stories(3, "Valid")
    train, val, report = make_splits(train_raw, valid_raw, seed=1, val_fraction=0.1, max_stories=0,
                                      max_val_stories=0, min_chars=10, max_chars=10_000)
    assert sorted(val) == sorted(valid_raw)
    assert len(train) == 20 and report.dropped == {"in_valid": 1}


def test_make_splits_dedups_caps_and_is_deterministic():
    raw = _stories(30) + _stories(5) + ["tiny"]
    kwargs = dict(seed=7, val_fraction=0.2, max_stories=10, max_val_stories=0, min_chars=20, max_chars=10_000)
    a = make_splits(raw, None, **kwargs)
    b = make_splits(list(raw), None, **kwargs)
    assert a[0] == b[0] and a[1] == b[1]
    train, val, report = a
    assert len(train) == 10 and len(val) == 6
    assert report.dropped == {"duplicate": 5, "too_short": 1}
    assert not set(train) & set(val)
    c = make_splits(raw, None, **{**kwargs, "seed": 8})
    assert c[0] != train


def test_round_trip_prepared_file(tmp_path):
    stories = ["One.\nTwo lines.", "Another story."]
    path = tmp_path / "train.txt"
    path.write_text(join_stories(stories))
    assert read_prepared(path) == stories


def test_find_shards_uses_folder_names(tinystories):
    shards = find_shards(tinystories)
    assert {s.split for s in shards} == {"train", "valid"}
    assert all(s.path.suffix == ".txt" for s in shards)


def test_summarize():
    s = summarize([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert s["min"] == 1 and s["max"] == 10 and s["p50"] == 5.5 and s["mean"] == 5.5
    assert s["p90"] == pytest.approx(9.1)


def test_a_bom_at_the_start_of_a_shard_is_not_part_of_the_first_story(tmp_path):
    from pico.tinystories import Shard, read_shards

    path = tmp_path / "train.txt"
    path.write_bytes(b"\xef\xbb\xbf" + f"{STORY}\n{EOT}\n{STORY}\n".encode())
    first = read_shards([Shard(path, "train")])["train"][0]
    assert not first.startswith("\ufeff") and first.strip() == STORY
