import pytest

from pico.errors import DataError
from pico.tokenizer import EOT, bytes_per_token, load_tokenizer


def test_vocab_size_includes_the_special_token(tok):
    assert tok.vocab_size == 512
    assert tok.eot_id == 511


@pytest.mark.parametrize("text", [
    "Once upon a time, Lily found a shiny red ball.",
    "Unicode: café, naïve, 日本語, emoji 🎃 — and tabs\tand\nnewlines.",
    "",
    "  leading and trailing spaces  ",
])
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_special_token_text_is_plain_text_never_the_special_id(tok):
    ids = tok.encode(f"before {EOT} after")
    assert tok.eot_id not in ids
    assert tok.enc.decode(ids) == f"before {EOT} after"


def test_decode_drops_the_special_token(tok):
    ids = tok.encode("The end.") + [tok.eot_id]
    assert tok.decode(ids) == "The end."


def test_save_load_keeps_ids_and_hash(tok, tmp_path):
    path = tmp_path / "tokenizer.json"
    tok.save(path)
    loaded = load_tokenizer(path)
    text = "Tom and Sue went to the park to play with a big dog."
    assert loaded.encode(text) == tok.encode(text)
    assert loaded.hash == tok.hash and len(tok.hash) == 64
    path.write_text(path.read_text().replace('"version": 1', '"version": 99'))
    with pytest.raises(DataError, match="format version 99"):
        load_tokenizer(path)


def test_missing_tokenizer_says_what_to_run(tmp_path):
    with pytest.raises(DataError, match="dvc repro tokenizer"):
        load_tokenizer(tmp_path / "nope.json")


def test_bpe_compresses_text(tok, sample_stories):
    assert bytes_per_token(tok, sample_stories[:50]) > 2.0
