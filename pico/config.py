"""Typed, validated configuration: one frozen dataclass per params.yaml section.

`load_params` reads params.yaml once and checks every section before any stage does work, so a typo in
`dpo.beta` fails the first stage that runs, not the sixth. Every error names the key (`pretrain.lr`).
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import yaml

from pico.errors import ParamsError

DEVICES = ("auto", "cpu", "cuda", "mps")
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ParamsError(key, message)


@dataclass(frozen=True)
class PrepareConfig:
    """TinyStories: where it is read from or downloaded to, and how it is cleaned and split."""

    source: str = "data/raw/tinystories"  # folder of .txt shards (train/, valid/ optional) or one .txt file
    url: str = "https://huggingface.co/datasets/roneneldan/TinyStories/resolve/main"
    # files fetched from `url` into `source` when it is missing: {relative path in source: file name at url}
    files: dict[str, str] = field(
        default_factory=lambda: {
            "train/TinyStories-train.txt": "TinyStories-train.txt",
            "valid/TinyStories-valid.txt": "TinyStories-valid.txt",
        }
    )
    sha256: dict[str, str] = field(default_factory=dict)  # optional expected checksums, same keys as files
    max_stories: int = 0  # cap on train stories after cleaning; 0 = all
    max_val_stories: int = 0  # cap on val stories; 0 = all
    val_fraction: float = 0.05  # used only when the source has no valid/ split of its own
    min_chars: int = 64  # shorter stories are dropped as broken
    max_chars: int = 8000  # longer ones are dropped (merged or run-on stories)
    seed: int = 1337

    def __post_init__(self) -> None:
        _require(bool(self.source), "prepare.source", "must be a path")
        _require(self.max_stories >= 0, "prepare.max_stories", f"must be >= 0 (got {self.max_stories})")
        _require(self.max_val_stories >= 0, "prepare.max_val_stories", f"must be >= 0 (got {self.max_val_stories})")
        _require(0 < self.val_fraction < 1, "prepare.val_fraction", f"must be in (0, 1) (got {self.val_fraction})")
        _require(self.min_chars >= 1, "prepare.min_chars", f"must be >= 1 (got {self.min_chars})")
        _require(self.max_chars > self.min_chars, "prepare.max_chars", "must be > prepare.min_chars")
        unknown = set(self.sha256) - set(self.files)
        _require(not unknown, "prepare.sha256", f"names files not in prepare.files: {sorted(unknown)}")


@dataclass(frozen=True)
class TokenizerConfig:
    """Byte-level BPE trained with rustbpe, served with tiktoken."""

    vocab_size: int = 4096  # including the one special token <|endoftext|>
    max_train_chars: int = 0  # train on at most this many characters of the train split; 0 = all

    def __post_init__(self) -> None:
        _require(257 < self.vocab_size <= 65535, "tokenizer.vocab_size",
                 f"must be in (257, 65535] so ids fit in uint16 (got {self.vocab_size})")
        _require(self.max_train_chars >= 0, "tokenizer.max_train_chars", "must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    """Model shape, shared by every stage that builds or loads a model. vocab_size comes from the tokenizer."""

    type: Literal["transformer", "lstm", "kgram_mlp"] = "transformer"
    d_model: int = 192
    n_layer: int = 4
    n_head: int = 4  # transformer only
    max_seq_len: int = 512  # context length; SFT/DPO pairs must fit in it
    dropout: float = 0.0
    k: int = 8  # kgram_mlp: how many previous tokens it sees
    mlp_ratio: int = 4

    def __post_init__(self) -> None:
        _require(self.d_model > 0, "model.d_model", f"must be > 0 (got {self.d_model})")
        _require(self.n_layer > 0, "model.n_layer", f"must be > 0 (got {self.n_layer})")
        _require(self.n_head > 0, "model.n_head", f"must be > 0 (got {self.n_head})")
        if self.type == "transformer":
            _require(self.d_model % self.n_head == 0, "model.n_head",
                     f"must divide model.d_model ({self.d_model} % {self.n_head} != 0)")
        _require(self.max_seq_len >= 8, "model.max_seq_len", f"must be >= 8 (got {self.max_seq_len})")
        _require(0.0 <= self.dropout < 1.0, "model.dropout", f"must be in [0, 1) (got {self.dropout})")
        _require(self.k >= 1, "model.k", f"must be >= 1 (got {self.k})")
        _require(self.mlp_ratio >= 1, "model.mlp_ratio", f"must be >= 1 (got {self.mlp_ratio})")


@dataclass(frozen=True)
class TrainConfig:
    """What the one training loop needs; pretrain, sft and dpo each have their own copy of these knobs."""

    seed: int = 1337
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    compile: bool = False  # torch.compile the model (CUDA only; ignored on CPU where it barely pays)
    batch_size: int = 16  # sequences (pairs for DPO) per micro-batch
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 20
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    eval_every: int = 50
    save_every: int = 50  # resume-state interval, in optimizer steps
    log_every: int = 1  # train-curve point interval
    patience: int = 0  # stop after this many evals without a better val loss; 0 = never

    def __post_init__(self) -> None:
        s = self._section
        _require(self.lr > 0, f"{s}.lr", f"must be > 0 (got {self.lr})")
        _require(self.batch_size > 0, f"{s}.batch_size", f"must be > 0 (got {self.batch_size})")
        _require(self.grad_accum > 0, f"{s}.grad_accum", f"must be > 0 (got {self.grad_accum})")
        _require(0 <= self.min_lr_ratio <= 1, f"{s}.min_lr_ratio", f"must be in [0, 1] (got {self.min_lr_ratio})")
        _require(self.warmup_steps >= 0, f"{s}.warmup_steps", f"must be >= 0 (got {self.warmup_steps})")
        _require(self.weight_decay >= 0, f"{s}.weight_decay", f"must be >= 0 (got {self.weight_decay})")
        _require(0 <= self.beta1 < 1, f"{s}.beta1", f"must be in [0, 1) (got {self.beta1})")
        _require(0 <= self.beta2 < 1, f"{s}.beta2", f"must be in [0, 1) (got {self.beta2})")
        _require(self.grad_clip >= 0, f"{s}.grad_clip", f"must be >= 0 (got {self.grad_clip})")
        _require(self.eval_every > 0, f"{s}.eval_every", f"must be > 0 (got {self.eval_every})")
        _require(self.save_every > 0, f"{s}.save_every", f"must be > 0 (got {self.save_every})")
        _require(self.log_every > 0, f"{s}.log_every", f"must be > 0 (got {self.log_every})")
        _require(self.patience >= 0, f"{s}.patience", f"must be >= 0 (got {self.patience})")

    _section = "train"


@dataclass(frozen=True)
class PretrainConfig(TrainConfig):
    max_steps: int = 300
    seq_len: int = 0  # training window; 0 = model.max_seq_len
    eval_batches: int = 8  # val batches per evaluation
    lr: float = 2e-3

    _section = "pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.max_steps > 0, "pretrain.max_steps", f"must be > 0 (got {self.max_steps})")
        _require(self.seq_len >= 0, "pretrain.seq_len", f"must be >= 0 (got {self.seq_len})")
        _require(self.eval_batches > 0, "pretrain.eval_batches", f"must be > 0 (got {self.eval_batches})")


@dataclass(frozen=True)
class FinetuneConfig(TrainConfig):
    """Shared by sft and dpo: both train on (prompt, response) rows encoded by `encode_sft`."""

    epochs: float = 3.0
    max_steps: int = 0  # 0 = derived from epochs
    max_len: int = 512  # tokens of prompt + response + EOS; must be <= model.max_seq_len
    truncation: Literal["left", "drop"] = "left"  # over-long rows: cut the prompt from the left, or drop
    warmup_steps: int = 10
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self._section
        _require(self.epochs > 0, f"{s}.epochs", f"must be > 0 (got {self.epochs})")
        _require(self.max_steps >= 0, f"{s}.max_steps", f"must be >= 0 (got {self.max_steps})")
        _require(self.max_len >= 16, f"{s}.max_len", f"must be >= 16 (got {self.max_len})")


@dataclass(frozen=True)
class SFTConfig(FinetuneConfig):
    lr: float = 5e-4
    eval_every: int = 10
    patience: int = 3

    _section = "sft"


@dataclass(frozen=True)
class DPOConfig(FinetuneConfig):
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO (ε); 0 = plain DPO
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    lr: float = 1e-4
    epochs: float = 2.0
    batch_size: int = 8
    eval_every: int = 10

    _section = "dpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        _require(self.beta > 0, "dpo.beta", f"must be > 0 (got {self.beta})")
        _require(0 <= self.label_smoothing < 0.5, "dpo.label_smoothing",
                 f"must be in [0, 0.5) (got {self.label_smoothing})")


@dataclass(frozen=True)
class TeacherConfig:
    """An OpenAI-compatible chat-completions endpoint. The API key is read from the environment only."""

    base_url: str = "https://api.openai.com/v1"
    model: str = "gpt-4o-mini"
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key
    temperature: float = 0.9
    max_tokens: int = 700
    concurrency: int = 4
    timeout_s: float = 60.0
    max_retries: int = 6  # per request, for timeouts, dropped connections, 429, 5xx and malformed replies
    max_attempts: int = 3  # generations per story before an invalid one is dropped
    backoff_s: float = 1.0  # first retry wait; doubles each time (Retry-After wins when the server sends it)

    def __post_init__(self) -> None:
        _require(self.base_url.startswith(("http://", "https://")), "generate.teacher.base_url",
                 f"must be an http(s) URL (got {self.base_url!r})")
        _require(bool(self.model), "generate.teacher.model", "must not be empty")
        _require(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", self.api_key_env) is not None, "generate.teacher.api_key_env",
                 "must be the name of an environment variable (like OPENAI_API_KEY), never the key itself")
        _require(0 <= self.temperature <= 2, "generate.teacher.temperature", f"must be in [0, 2] (got {self.temperature})")
        _require(self.max_tokens > 0, "generate.teacher.max_tokens", f"must be > 0 (got {self.max_tokens})")
        _require(1 <= self.concurrency <= 64, "generate.teacher.concurrency", f"must be in [1, 64] (got {self.concurrency})")
        _require(self.timeout_s > 0, "generate.teacher.timeout_s", f"must be > 0 (got {self.timeout_s})")
        _require(self.max_retries >= 0, "generate.teacher.max_retries", f"must be >= 0 (got {self.max_retries})")
        _require(self.max_attempts >= 1, "generate.teacher.max_attempts", f"must be >= 1 (got {self.max_attempts})")
        _require(self.backoff_s >= 0, "generate.teacher.backoff_s", f"must be >= 0 (got {self.backoff_s})")


SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class GenerateConfig:
    """SFT and DPO data for the horror-story task."""

    provider: Literal["template", "openai"] = "template"
    seed: int = 1234
    purpose: str = "baseline"  # why this data was made (a slug); recorded in data/dataset.json
    description: str = ""
    sft_splits: dict[str, int] = field(default_factory=lambda: {"train": 256, "valid": 32, "test": 32})
    dpo_splits: dict[str, int] = field(default_factory=lambda: {"train": 256, "valid": 32, "test": 32})
    # easy: rejected is wholesome; hard: rejected is eerie but breaks one constraint; a number: share of hard pairs
    pair_difficulty: Literal["easy", "hard"] | float = "easy"
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def __post_init__(self) -> None:
        _require(_SLUG.match(self.purpose) is not None, "generate.purpose",
                 f"must be a lowercase slug like prompt_engineering (got {self.purpose!r})")
        for name in ("sft_splits", "dpo_splits"):
            splits = getattr(self, name)
            _require(set(splits) == set(SPLITS), f"generate.{name}",
                     f"must have exactly the keys {', '.join(SPLITS)} (got {', '.join(splits) or 'none'})")
            for split, n in splits.items():
                _require(n >= 1, f"generate.{name}.{split}", f"must be >= 1 (got {n})")
        if isinstance(self.pair_difficulty, float):
            _require(0.0 <= self.pair_difficulty <= 1.0, "generate.pair_difficulty",
                     f"must be easy, hard or a share of hard pairs in [0, 1] (got {self.pair_difficulty})")


@dataclass(frozen=True)
class EvaluateConfig:
    """Every checkpoint on held-out data, and generations for fixed test specs checked against their spec."""

    checkpoints: dict[str, str] = field(default_factory=dict)  # extra {name: path}; also add the path to deps
    splits: list[str] = field(default_factory=lambda: ["test"])  # SFT splits whose specs are generated for
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    batch_size: int = 16
    val_batches: int = 8  # TinyStories val windows (x batch_size) for val loss and bits per byte
    n_generations: int = 16  # specs per split (the first n rows), the same for every checkpoint
    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 0
    max_new_tokens: int = 320
    no_repeat_ngram: int = 0
    seed: int = 1337

    def __post_init__(self) -> None:
        for name in self.checkpoints:
            _require(_SLUG.match(name) is not None and name not in ("base", "sft", "dpo", "style_judge"),
                     f"evaluate.checkpoints.{name}", "must be a new lowercase name (base, sft, dpo are built in)")
        _require(bool(self.splits) and set(self.splits) <= set(SPLITS), "evaluate.splits",
                 f"must be a non-empty list of {', '.join(SPLITS)} (got {self.splits})")
        _require(self.batch_size > 0, "evaluate.batch_size", f"must be > 0 (got {self.batch_size})")
        _require(self.val_batches > 0, "evaluate.val_batches", f"must be > 0 (got {self.val_batches})")
        _require(self.n_generations >= 0, "evaluate.n_generations", f"must be >= 0 (got {self.n_generations})")
        _require(self.temperature >= 0, "evaluate.temperature", f"must be >= 0 (got {self.temperature})")
        _require(0 < self.top_p <= 1, "evaluate.top_p", f"must be in (0, 1] (got {self.top_p})")
        _require(self.top_k >= 0, "evaluate.top_k", f"must be >= 0 (got {self.top_k})")
        _require(self.max_new_tokens > 0, "evaluate.max_new_tokens", f"must be > 0 (got {self.max_new_tokens})")
        _require(self.no_repeat_ngram >= 0, "evaluate.no_repeat_ngram", f"must be >= 0 (got {self.no_repeat_ngram})")


PURPOSES = ("baseline_comparison", "model_comparison", "hyperparameter_tuning", "ablation_study",
            "prompt_effectiveness", "data_quality_impact", "scaling_study", "uncategorized")


@dataclass(frozen=True)
class ExperimentConfig:
    """Why this run exists. Metadata only: changing it reruns just `bundle`, which records it."""

    purpose: str = "uncategorized"  # one of PURPOSES or any other lowercase slug
    description: str = ""

    def __post_init__(self) -> None:
        _require(_SLUG.match(self.purpose) is not None, "experiment.purpose",
                 f"must be a lowercase slug such as {', '.join(PURPOSES[:3])} (got {self.purpose!r})")


@dataclass(frozen=True)
class BundleConfig:
    """The poster-ready results package."""

    title: str = "pico: from TinyStories to an aligned horror-story writer"
    n_samples: int = 4  # prompts shown side by side across checkpoints
    dpi: int = 150

    def __post_init__(self) -> None:
        _require(self.n_samples >= 0, "bundle.n_samples", f"must be >= 0 (got {self.n_samples})")
        _require(50 <= self.dpi <= 600, "bundle.dpi", f"must be in [50, 600] (got {self.dpi})")


SECTIONS: dict[str, type] = {
    "prepare": PrepareConfig,
    "tokenizer": TokenizerConfig,
    "generate": GenerateConfig,
    "model": ModelConfig,
    "pretrain": PretrainConfig,
    "sft": SFTConfig,
    "dpo": DPOConfig,
    "evaluate": EvaluateConfig,
    "bundle": BundleConfig,
    "experiment": ExperimentConfig,
}


@dataclass(frozen=True)
class Params:
    """All of params.yaml, validated."""

    prepare: PrepareConfig
    tokenizer: TokenizerConfig
    generate: GenerateConfig
    model: ModelConfig
    pretrain: PretrainConfig
    sft: SFTConfig
    dpo: DPOConfig
    evaluate: EvaluateConfig
    bundle: BundleConfig
    experiment: ExperimentConfig

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


def _check_value(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widened to float where a float is due)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return build_config(tp, value, key)
    if origin is Literal:
        allowed = typing.get_args(tp)
        _require(value in allowed, key, f"must be one of {', '.join(map(repr, allowed))} (got {value!r})")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            if option is type(None) and value is None:
                return None
            try:
                return _check_value(value, option, key)
            except ParamsError as e:
                errors.append(str(e))
        raise ParamsError(key, f"must be {' or '.join(_type_name(a) for a in typing.get_args(tp))} (got {value!r})")
    if origin is list:
        _require(isinstance(value, list), key, f"must be a list (got {value!r})")
        (item,) = typing.get_args(tp)
        return [_check_value(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        _require(isinstance(value, dict), key, f"must be a mapping (got {value!r})")
        ktp, vtp = typing.get_args(tp)
        return {_check_value(k, ktp, key): _check_value(v, vtp, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        _require(isinstance(value, bool), key, f"must be true or false (got {value!r})")
        return value
    if tp is int:
        _require(isinstance(value, int) and not isinstance(value, bool), key, f"must be an integer (got {value!r})")
        return value
    if tp is float:
        _require(isinstance(value, (int, float)) and not isinstance(value, bool), key,
                 f"must be a number (got {value!r})")
        return float(value)
    if tp is str:
        _require(isinstance(value, str), key, f"must be a string (got {value!r})")
        return value
    raise TypeError(f"unsupported annotation {tp!r} for {key}")  # a bug in this module, not user input


def build_config(cls: type, raw: Any, prefix: str) -> Any:
    if raw is None:
        raw = {}
    _require(isinstance(raw, dict), prefix, f"must be a mapping of keys to values (got {raw!r})")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls) if f.init}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ParamsError(f"{prefix}.{unknown[0]}", f"unknown key (known keys: {', '.join(sorted(known))})")
    kwargs = {name: _check_value(value, hints[name], f"{prefix}.{name}") for name, value in raw.items()}
    return cls(**kwargs)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from params.yaml). Missing sections take their defaults."""
    if raw is None:
        raw = {}
    _require(isinstance(raw, dict), "params.yaml", "must be a mapping of sections")
    unknown = sorted(set(raw) - set(SECTIONS))
    if unknown:
        raise ParamsError(unknown[0], f"unknown section (known: {', '.join(SECTIONS)})")
    built = {name: build_config(cls, raw.get(name), name) for name, cls in SECTIONS.items()}
    params = Params(**built)
    _check_cross_section(params)
    return params


def _check_cross_section(p: Params) -> None:
    seq = p.pretrain.seq_len or p.model.max_seq_len
    _require(seq <= p.model.max_seq_len, "pretrain.seq_len",
             f"must be <= model.max_seq_len ({p.model.max_seq_len}) (got {seq})")
    for name in ("sft", "dpo"):
        cfg = getattr(p, name)
        _require(cfg.max_len <= p.model.max_seq_len, f"{name}.max_len",
                 f"must be <= model.max_seq_len ({p.model.max_seq_len}) (got {cfg.max_len})")


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(str(path), "file not found; run from the repository root or pass --params")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ParamsError(str(path), f"is not valid YAML: {e}") from None
    return parse_params(raw)
