"""Byte-level BPE: trained with rustbpe, served through `tiktoken.Encoding`.

The saved file is small JSON (pattern, merge ranks, special tokens, format version) that loads with no
network. Its SHA-256 is the tokenizer's identity: checkpoints record it, and loading a checkpoint with a
different tokenizer is refused.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Iterable

import tiktoken

from pico.errors import DataError

EOT = "<|endoftext|>"
FORMAT = "pico-tokenizer"
VERSION = 1


class Tokenizer:
    """Text <-> ids. Special-token text in user input is encoded as plain text, never as a special id."""

    def __init__(self, pattern: str, ranks: list[bytes], name: str = "pico", file_hash: str = ""):
        self.pattern = pattern
        self.ranks = ranks
        self.eot_id = len(ranks)
        self.enc = tiktoken.Encoding(
            name=name,
            pat_str=pattern,
            mergeable_ranks={token: rank for rank, token in enumerate(ranks)},
            special_tokens={EOT: self.eot_id},
        )
        self.hash = file_hash or hashlib.sha256(self.to_json().encode()).hexdigest()

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts, num_threads=2)

    def decode(self, ids: Iterable[int]) -> str:
        """Decode ids, dropping special tokens so they can never leak into printed text."""
        return self.enc.decode([int(i) for i in ids if int(i) != self.eot_id], errors="replace")

    def line_break_ids(self) -> list[int]:
        """The ids whose bytes hold a line break ("\n", ".\n", ...): what `model.copy_line_breaks: false` keeps
        the copy head from copying."""
        return [i for i, token in enumerate(self.ranks) if b"\n" in token or b"\r" in token]

    def to_json(self) -> str:
        return json.dumps(
            {
                "format": FORMAT,
                "version": VERSION,
                "pattern": self.pattern,
                "special_tokens": {EOT: self.eot_id},
                "ranks": [base64.b64encode(t).decode("ascii") for t in self.ranks],
            },
            indent=0,
        ) + "\n"

    def save(self, path: str | Path) -> None:
        from pico.io import write_text

        write_text(path, self.to_json())


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a BPE of `vocab_size` ids in all: 256 bytes + merges + 1 special token."""
    import rustbpe

    bpe = rustbpe.Tokenizer()
    bpe.train_from_iterator(iter(texts), vocab_size=vocab_size - 1)
    ranked = sorted(bpe.get_mergeable_ranks(), key=lambda item: item[1])
    ranks = [bytes(token) for token, _ in ranked]
    if [r for _, r in ranked] != list(range(len(ranks))):
        raise RuntimeError("rustbpe returned non-contiguous ranks")
    return Tokenizer(bpe.get_pattern(), ranks)


def load_tokenizer(path: str | Path) -> Tokenizer:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: tokenizer not found; run `dvc repro tokenizer` first")
    raw = path.read_bytes()
    try:
        data = json.loads(raw)
        if data.get("format") != FORMAT:
            raise ValueError("not a pico tokenizer file")
        if data.get("version") != VERSION:
            raise ValueError(f"format version {data.get('version')}, this pico reads {VERSION}")
        ranks = [base64.b64decode(t) for t in data["ranks"]]
        if data["special_tokens"] != {EOT: len(ranks)}:
            raise ValueError("unexpected special tokens")
        return Tokenizer(data["pattern"], ranks, file_hash=hashlib.sha256(raw).hexdigest())
    except (ValueError, KeyError, TypeError, AttributeError) as e:  # AttributeError: JSON that is not an object
        raise DataError(f"{path}: cannot load tokenizer: {type(e).__name__}: {e}") from None


def bytes_per_token(tok: Tokenizer, texts: list[str]) -> float:
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    n_tokens = sum(len(ids) for ids in tok.encode_batch(texts))
    return n_bytes / max(n_tokens, 1)
