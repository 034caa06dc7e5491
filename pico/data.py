"""Pretraining data: stories packed into one uint16 token stream, read as fixed-length windows.

Batches are pure functions of (seed, micro-batch index): resume and DDP need no sampler state.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from pico.errors import DataError
from pico.io import progress_bar
from pico.tokenizer import Tokenizer

TOKEN_DTYPE = np.uint16


def pack_tokens(tok: Tokenizer, stories: list[str], chunk: int = 2048, progress: bool = True) -> np.ndarray:
    """Encode every story and append EOT after each: the stream the LM is trained on."""
    if tok.vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise ValueError(f"vocab of {tok.vocab_size} does not fit uint16")
    parts: list[np.ndarray] = []
    eot = np.array([tok.eot_id], dtype=TOKEN_DTYPE)
    for start in progress_bar(iterable=range(0, len(stories), chunk), desc="tokenize", unit="chunk",
                              disable=not progress, leave=False):
        for ids in tok.encode_batch(stories[start : start + chunk]):
            parts.append(np.asarray(ids, dtype=TOKEN_DTYPE))
            parts.append(eot)
    return np.concatenate(parts) if parts else np.zeros(0, dtype=TOKEN_DTYPE)


def save_tokens(path: str | Path, tokens: np.ndarray) -> None:
    from pico.io import write_bytes

    write_bytes(path, tokens.astype(TOKEN_DTYPE).tobytes())


def load_tokens(path: str | Path, min_len: int = 2) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: token file not found; run `dvc repro pretrain` first")
    tokens = np.fromfile(path, dtype=TOKEN_DTYPE)
    if len(tokens) < min_len:
        raise DataError(f"{path}: only {len(tokens)} tokens, need at least {min_len}")
    return tokens


def stable_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers, stable across runs and platforms."""
    digest = hashlib.blake2b(",".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class TokenWindows:
    """Random (train) or evenly spaced (eval) windows of `seq_len + 1` tokens from a packed stream."""

    def __init__(self, tokens: np.ndarray, seq_len: int, batch_size: int, seed: int,
                 token_bytes: np.ndarray | None = None):
        if len(tokens) < seq_len + 1:
            raise DataError(f"token stream of {len(tokens)} is shorter than one window of {seq_len + 1}; "
                            f"lower pretrain.seq_len or use more data")
        self.tokens = torch.from_numpy(tokens.astype(np.int64))
        self.seq_len, self.batch_size, self.seed = seq_len, batch_size, seed
        self.token_bytes = torch.from_numpy(token_bytes) if token_bytes is not None else None

    def _batch(self, starts: torch.Tensor) -> dict:
        offsets = torch.arange(self.seq_len + 1)
        windows = self.tokens[starts.unsqueeze(1) + offsets]  # (B, T+1)
        batch = {
            "input_ids": windows[:, :-1].contiguous(),
            "targets": windows[:, 1:].contiguous(),
            "n_items": windows.shape[0] * self.seq_len,  # the loss sums over every target
            "tokens": windows.shape[0] * self.seq_len,
        }
        if self.token_bytes is not None:
            batch["target_bytes"] = self.token_bytes[batch["targets"]]
        return batch

    def train_batch(self, k: int) -> dict:
        """Global micro-batch k of training: random windows, a pure function of (seed, k)."""
        # keyed (seed, k, 0): with one micro-batch per step this is the (seed, step, micro) key earlier runs used
        g = torch.Generator().manual_seed(stable_seed(self.seed, k, 0))
        starts = torch.randint(0, len(self.tokens) - self.seq_len, (self.batch_size,), generator=g)
        return self._batch(starts)

    def eval_batches(self, n_batches: int) -> list[dict]:
        """Up to n_batches of evenly spaced windows covering the stream (the same ones at every eval)."""
        n_windows = min(n_batches * self.batch_size, (len(self.tokens) - 1) // self.seq_len)
        n_windows = max(n_windows, 1)
        stride = (len(self.tokens) - self.seq_len - 1) // max(n_windows - 1, 1) if n_windows > 1 else 0
        starts = torch.arange(n_windows) * stride
        return [self._batch(starts[i : i + self.batch_size]) for i in range(0, n_windows, self.batch_size)]


def token_byte_lengths(tok: Tokenizer) -> np.ndarray:
    """UTF-8 bytes each id stands for; special tokens count 0 (they are not text)."""
    lengths = np.zeros(tok.vocab_size, dtype=np.int64)
    for i, token in enumerate(tok.ranks):
        lengths[i] = len(token)
    return lengths


def unigram_loss(train: np.ndarray, val: np.ndarray, vocab_size: int) -> float:
    """Val NLL (nats/token) of the add-one-smoothed unigram model of the train stream: the floor to beat."""
    counts = np.bincount(train[1:], minlength=vocab_size).astype(np.float64) + 1.0
    logp = np.log(counts / counts.sum())
    return float(-logp[val[1:]].mean())
