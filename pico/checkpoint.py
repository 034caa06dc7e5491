"""Checkpoints: weights plus the metadata a later stage needs to rebuild and trust them.

A checkpoint is a plain dict of tensors and primitives, so it loads with `torch.load(weights_only=True)`:
a file carrying a pickled payload that would run code is refused, never executed.
"""

from __future__ import annotations

import io
import logging
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from pico.config import DPOConfig, ModelConfig
from pico.errors import CheckpointError, ParamsError, PicoError
from pico.io import sha256_file, write_bytes
from pico.knobs import build_section, check_flag
from pico.model import build_model, model_meta, unwrap

log = logging.getLogger(__name__)
FORMAT = "pico-checkpoint"
VERSION = 1


def to_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def save_checkpoint(path: str | Path, model: nn.Module, *, model_cfg: ModelConfig, tokenizer_hash: str,
                    stage: str, step: int, metrics: dict | None = None, parent: str = "",
                    train_config: dict | None = None) -> None:
    """Write atomically; no timestamps or paths inside, so the same run gives the same bytes.

    `train_config` is the params section the stage trained with (for DPO: beta and loss type, against the
    reference `parent`), so later stages judge the checkpoint by how it was trained, not by today's params.
    """
    model = unwrap(model)
    payload = {
        "format": FORMAT,
        "version": VERSION,
        "stage": stage,
        "step": step,
        "model": model_meta(model_cfg, model.vocab_size),
        "tokenizer_hash": tokenizer_hash,
        "parent": parent,  # sha256 of the checkpoint this one was trained from ("" for pretraining)
        "train_config": train_config or {},
        "metrics": metrics or {},
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
    }
    write_bytes(path, to_bytes(payload))


def read_payload_file(path: str | Path) -> Any:
    """torch.load with weights_only=True, turning every failure into a CheckpointError that names the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found; run `dvc repro` for the stage that writes it")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path}: refused: the file holds pickled objects that are not plain weights "
                              f"(loaded with weights_only=True): {str(e).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        detail = str(e).splitlines()[0] if str(e) else "no detail"
        raise CheckpointError(f"{path}: truncated or not a torch checkpoint ({type(e).__name__}: {detail})") from None


def read_payload(path: str | Path) -> dict:
    """A pico checkpoint's payload, checked for the format marker and version."""
    payload = read_payload_file(path)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a pico checkpoint (no '{FORMAT}' format marker)")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {payload.get('version')}, this pico reads {VERSION}")
    return payload


def read_cache(path: str | Path, fingerprint: str) -> dict | None:
    """A saved state (resume state, reference log-probs) if it was made from these very inputs, else None.

    An unreadable file or one made from other params or data is ignored (logged): the caller recomputes.
    """
    if not Path(path).is_file():
        return None
    try:
        state = read_payload_file(path)
    except CheckpointError as e:
        log.warning("ignoring unreadable %s: %s", path, e)
        return None
    if not isinstance(state, dict) or state.get("fingerprint") != fingerprint:
        log.info("%s belongs to other params or data; starting fresh", path)
        return None
    return state


def _shape_mismatch(cfg: ModelConfig, vocab_size: int, weights: dict[str, torch.Tensor]) -> str | None:
    """How `weights` differ from the tensors the recorded config builds (on the meta device: nothing allocated)."""
    with torch.device("meta"):
        expected = {k: (tuple(v.shape), v.dtype) for k, v in build_model(cfg, vocab_size).state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(weights)), sorted(set(weights) - set(expected))
    if missing or unexpected:
        return f"missing {missing[:3]}, unexpected {unexpected[:3]}"
    for name, (shape, dtype) in expected.items():
        if tuple(weights[name].shape) != shape or weights[name].dtype != dtype:
            return f"{name} is {tuple(weights[name].shape)} {weights[name].dtype}, the config gives {shape} {dtype}"
    return None


@dataclass
class Checkpoint:
    model: nn.Module
    model_cfg: ModelConfig
    meta: dict  # everything in the payload but the weights
    digest: str = ""  # sha256 of the file: what a child checkpoint records as its `parent`


def load_checkpoint(path: str | Path, *, tokenizer_hash: str | None = None,
                    device: str | torch.device = "cpu") -> Checkpoint:
    """Rebuild the model a checkpoint describes and load its weights, checking it fits what it is used with."""
    payload = read_payload(path)
    meta = {k: v for k, v in payload.items() if k != "state_dict"}
    if not isinstance(meta.get("model"), dict):
        raise CheckpointError(f"{path}: bad model config in checkpoint: 'model' is not a mapping of settings")
    model_meta_ = dict(meta["model"])
    vocab_size = model_meta_.pop("vocab_size", None)
    model_meta_.setdefault("copy_line_breaks", True)  # checkpoints from before the knob: the head copied them
    model_meta_.setdefault("copy_match", 0)  # and before this one: no match terms
    try:
        cfg = build_section(ModelConfig, model_meta_, "model")
    except ParamsError as e:
        raise CheckpointError(f"{path}: bad model config in checkpoint: {e}") from None
    if not isinstance(vocab_size, int) or isinstance(vocab_size, bool) or not 0 < vocab_size <= 1 << 20:
        raise CheckpointError(f"{path}: bad model config in checkpoint: vocab_size {vocab_size!r}")
    if tokenizer_hash is not None and meta.get("tokenizer_hash") != tokenizer_hash:
        raise CheckpointError(
            f"{path}: trained with tokenizer {str(meta.get('tokenizer_hash'))[:12]}, but the tokenizer in use is "
            f"{tokenizer_hash[:12]}; retrain it (`dvc repro`) or use the matching tokenizer"
        )
    if meta.get("stage") == "dpo":  # evaluate reads its beta and loss type to measure the implicit reward
        train_config = meta.get("train_config")
        try:
            if not isinstance(train_config, dict):
                raise PicoError("train_config: is not a mapping")
            for name in ("beta", "loss_type"):
                check_flag(DPOConfig, name, train_config.get(name), f"train_config.{name}")
        except PicoError as e:
            raise CheckpointError(f"{path}: bad DPO settings in checkpoint: {e}") from None
    weights = payload.get("state_dict")
    if not isinstance(weights, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in weights.items()):
        raise CheckpointError(f"{path}: state_dict is not a mapping of names to tensors")
    bad = [k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: weights are not finite (NaN or inf) in {bad[0]}")
    mismatch = _shape_mismatch(cfg, vocab_size, weights)
    if mismatch:  # before allocating: a small file recording a huge model must not ask for 64 GB
        raise CheckpointError(f"{path}: weights do not match the model config it records: {mismatch}")
    model = build_model(cfg, vocab_size)
    try:
        model.load_state_dict(weights, strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path}: weights do not match the model config it records: "
                              f"{str(e).splitlines()[0]}") from None
    return Checkpoint(model=model.to(device), model_cfg=cfg, meta=meta, digest=sha256_file(path))
