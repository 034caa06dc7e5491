"""Shared fixtures: the real TinyStories shards, a tiny trained tokenizer, tiny model configs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def tinystories_dir() -> Path:
    """The shared TinyStories shards (train/, valid/): $PICO_TINYSTORIES or ../shared/data/tinystories."""
    env = os.environ.get("PICO_TINYSTORIES")
    candidates = [Path(env)] if env else []
    candidates += [REPO / "data" / "raw" / "tinystories", REPO.parent / "shared" / "data" / "tinystories"]
    for path in candidates:
        if path.is_dir() and any(path.rglob("*.txt")):
            return path.resolve()
    raise RuntimeError(
        "TinyStories shards not found: set PICO_TINYSTORIES or put them in ../shared/data/tinystories "
        "(train/ and valid/ folders of <|endoftext|>-separated .txt files)"
    )


@pytest.fixture(scope="session")
def tinystories() -> Path:
    return tinystories_dir()


@pytest.fixture(scope="session")
def sample_stories(tinystories) -> list[str]:
    from pico.tinystories import clean_story, split_stories

    text = (tinystories / "train" / "v2_mines-opt-ml_decoding-gpt.txt").read_text(encoding="utf-8")
    return [clean_story(s) for s in split_stories(text)[:400] if s.strip()]


@pytest.fixture(scope="session")
def tok(sample_stories):
    from pico.tokenizer import train_tokenizer

    return train_tokenizer(sample_stories, 512)


@pytest.fixture
def tiny_model_cfg():
    return config("model", type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=512)


@pytest.fixture
def tiny_checkpoint(tmp_path, tok, tiny_model_cfg):
    """A tokenizer file and a matching (untrained) tiny GPT checkpoint on disk."""
    import torch

    from pico.checkpoint import save_checkpoint
    from pico.model import build_model

    tok_path = tmp_path / "tokenizer.json"
    tok.save(tok_path)
    torch.manual_seed(0)
    model = build_model(tiny_model_cfg, tok.vocab_size)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(ckpt, model, model_cfg=tiny_model_cfg, tokenizer_hash=tok.hash, stage="test", step=0)
    return ckpt, tok_path


@pytest.fixture(scope="session")
def built(tmp_path_factory):
    """One full `dvc repro` on tiny params in a temp git repo; tests that change things use copies of it."""
    from pipeline import dvc, make_repo

    repo = make_repo(tmp_path_factory.mktemp("pipeline") / "repo")
    proc = dvc(repo, "repro")
    return repo, proc


@pytest.fixture
def repo_copy(built, tmp_path):
    from pipeline import clone_repo

    return clone_repo(built[0], tmp_path / "repo")


def default_params():
    """The repository's params.yaml, validated (the one source of values)."""
    from pico.config import load_params

    return load_params(REPO / "params.yaml")


def config(section: str, **overrides):
    """One section of the repository's params.yaml with some values replaced (validated again)."""
    import dataclasses

    return dataclasses.replace(getattr(default_params(), section), **overrides)
