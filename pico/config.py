"""Typed, validated configuration: one frozen dataclass per params.yaml section, the one source of values.

Each field carries its type, range and help (`knob`, pico/knobs.py), never a default: a missing key is an error.
A bad value fails before any work, naming the key (`params: dpo.beta: ...`). `pico params` lists every key."""

from __future__ import annotations

import re
import typing
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from pico.errors import ParamsError
from pico.knobs import Section, build_section, knob, read_yaml

SPLITS = ("train", "valid", "test")
UNSEEN = "test_unseen"  # SFT specs made only of held-out values
SFT_SPLITS = (*SPLITS, UNSEEN)
PURPOSES = ("baseline_comparison", "model_comparison", "hyperparameter_tuning", "ablation_study",
            "prompt_effectiveness", "data_quality_impact", "scaling_study", "uncategorized")
SLUG, SEED = r"[a-z0-9][a-z0-9_\-]*", "[0, 4294967296)"  # an experiment/purpose name; the range of a seed
Device = Literal["auto", "cpu", "cuda", "mps"]
Precision = Literal["auto", "fp32", "bf16"]


@dataclass(frozen=True, kw_only=True)
class PrepareConfig(Section):
    """TinyStories: where it is read from or downloaded to, and how it is cleaned and split."""
    KEY = "prepare"
    source: str = knob("folder of .txt shards (train/, valid/) or one .txt file", pattern=r".+")
    url: str = knob("where `files` are downloaded from when `source` holds no .txt file", pattern=r"https?://.+")
    files: dict[str, str] = knob("{path in source: file name at url}")
    sha256: dict[str, str] = knob("optional expected checksums, keyed like files")
    max_stories: int = knob("cap on train stories after cleaning (0 = all)", "[0, inf)")
    max_val_stories: int = knob("cap on val stories (0 = all)", "[0, inf)")
    val_fraction: float = knob("val share, used only when the source has no valid/ split", "(0, 1)")
    min_chars: int = knob("shorter stories are dropped as broken", "[1, inf)")
    max_chars: int = knob("longer stories are dropped (merged or run-on)", "[2, inf)")
    seed: int = knob("shuffle seed", SEED)

    def validate(self) -> None:
        self.require(self.max_chars > self.min_chars, "max_chars", f"must be > prepare.min_chars ({self.min_chars})")
        unknown = sorted(set(self.sha256) - set(self.files))
        self.require(not unknown, "sha256", f"names files not in prepare.files: {unknown}")


@dataclass(frozen=True, kw_only=True)
class TokenizerConfig(Section):
    """Byte-level BPE trained with rustbpe, served with tiktoken."""
    KEY = "tokenizer"
    vocab_size: int = knob("including <|endoftext|>; ids must fit uint16", "(257, 65535]")
    max_train_chars: int = knob("train on at most this many characters (0 = the whole train split)", "[0, inf)")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Section):
    """Model shape, shared by every stage that builds a model. vocab_size comes from the tokenizer."""
    KEY = "model"
    type: Literal["transformer", "lstm", "kgram_mlp"] = knob("architecture")
    d_model: int = knob("width", "(0, 16384]")
    n_layer: int = knob("depth", "(0, 256]")
    n_head: int = knob("attention heads (transformer)", "(0, 256]")
    max_seq_len: int = knob("context length; SFT/DPO prompt + story must fit", "[8, 131072]")
    dropout: float = knob("dropout while training", "[0, 1)")
    k: int = knob("tokens the kgram_mlp sees", "[1, 1024]")
    mlp_ratio: int = knob("MLP hidden width / d_model", "[1, 64]")
    pos_encoding: Literal["learned", "rope"] = knob("transformer positions: learned table or rotary (RoPE)")
    copy_head: bool = knob("transformer: pointer-generator copy head, can point at context tokens (GPT docstring)")
    copy_dim: int = knob("copy head: width of its queries and keys", "[1, 4096]")
    copy_value_key: bool = knob("copy head: a slot's key also sees the token it would copy (copying can stop)")
    copy_min_gap: int = knob("copy head: points only at tokens at least this far back (a loop guard)", "[1, 4096]")
    copy_match: int = knob("copy head: exact-match features of this order (0 = off): a slot scores higher where the "
                           "1..n tokens before it equal the last 1..n tokens, by a learned, state-dependent amount",
                           "[0, 8]")
    copy_line_breaks: bool = knob("copy head: may copy tokens holding a line break (false: a slot holding one hands "
                                  "its weight to the vocabulary side, so a copy stops at the end of a prompt's line)")

    def validate(self) -> None:
        if self.type == "transformer":
            self.require(self.d_model % self.n_head == 0, "n_head", f"must divide model.d_model ({self.d_model})")
            even = self.pos_encoding != "rope" or self.d_model // self.n_head % 2 == 0
            self.require(even, "pos_encoding", "rope needs an even head size (d_model / n_head)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Section):
    """What the one training loop needs; pretrain, sft and dpo each have their own copy of these knobs."""
    seed: int = knob("seed of initialisation and batch order", SEED)
    device: Device = knob("auto picks cuda, then mps, then cpu")
    precision: Precision = knob("bf16 autocast, fp32 weights; auto: bf16 where native (CUDA, AVX512-BF16/AMX CPUs)")
    compile: bool = knob("torch.compile the model (CUDA only)")
    batch_size: int = knob("sequences (pairs for dpo) per micro-batch", "(0, 65536]")
    grad_accum: int = knob("micro-batches per optimizer step", "(0, 65536]")
    lr: float = knob("peak learning rate", "(0, inf)")
    min_lr_ratio: float = knob("cosine decays to lr * min_lr_ratio", "[0, 1]")
    warmup_steps: int = knob("linear warmup steps", "[0, inf)")
    weight_decay: float = knob("AdamW decoupled weight decay (matrices and embeddings)", "[0, inf)")
    beta1: float = knob("AdamW beta1", "[0, 1)")
    beta2: float = knob("AdamW beta2", "[0, 1)")
    grad_clip: float = knob("max gradient norm (0 = off)", "[0, inf)")
    eval_every: int = knob("steps between evaluations", "(0, inf)")
    save_every: int = knob("steps between resume states", "(0, inf)")
    log_every: int = knob("steps between train-curve points", "(0, inf)")
    patience: int = knob("evaluations without improvement before stopping (0 = never)", "[0, inf)")


@dataclass(frozen=True, kw_only=True)
class PretrainConfig(TrainConfig):
    KEY = "pretrain"
    max_steps: int = knob("optimizer steps", "(0, inf)")
    seq_len: int = knob("training window (0 = model.max_seq_len)", "[0, inf)")
    eval_batches: int = knob("val batches per evaluation", "(0, inf)")
    copy_share: float = knob("share of each batch's rows that teach copying (pico/copy_rows.py); 0 = off", "[0, 1]")


@dataclass(frozen=True, kw_only=True)
class FinetuneConfig(TrainConfig):  # sft and dpo: both train on (prompt, response) rows encoded by `encode_sft`
    epochs: float = knob("passes over the train rows (unless max_steps)", "(0, 10000]")
    max_steps: int = knob("optimizer steps (0 = from epochs)", "[0, inf)")
    max_len: int = knob("tokens of prompt + response + EOS; <= model.max_seq_len", "[16, inf)")
    truncation: Literal["left", "drop"] = knob("over-long rows: cut the prompt from the left, or drop the row")


@dataclass(frozen=True, kw_only=True)
class SFTConfig(FinetuneConfig):
    KEY = "sft"
    copy_share: float = knob("induction rows added to each batch, x its rows (copy_rows.py); 0 = off", "[0, 1]")
    copy_stop: bool = knob("induction rows end each copy on a different token, in the loss: copies learn to stop")
    copy_line_breaks: bool = knob("false: from SFT's first step on the copy head hands line breaks to the "
                                  "vocabulary side (model.copy_line_breaks: false; the base checkpoint stays as it "
                                  "was); true: the head as the base model has it")
    copy_match: int = knob("n > 0: from SFT's first step on the copy head has exact-match terms of order n "
                           "(model.copy_match), starting at zero so SFT starts from the base model's distribution; "
                           "0: the head as the base model has it", "[0, 8]")
    copy_start_weight: float = knob("the loss at the first token of each copy of a spec value in a story (the "
                                    "article of 'an iron bell', a name's first token) counts this many times; "
                                    "1 = every token alike", "[1, 100]")
    copy_continue_weight: float = knob("the loss at each later token of such a copy (the 'il', 'as' of ' S il as' "
                                       "for Silas) counts this many times; 1 = every token alike", "[1, 100]")


@dataclass(frozen=True, kw_only=True)
class OnPolicyConfig(Section):
    """DPO pairs rebuilt from the SFT model's own samples on the DPO prompts, judged by the checker (onpolicy.py)."""
    KEY = "dpo.onpolicy"
    share: float = knob("share of train/valid pairs rebuilt from samples (0 = the template pairs only)", "[0, 1]")
    samples: int = knob("stories sampled per prompt; the first one the checker fails becomes the rejected", "[1, 64]")
    chosen: Literal["template", "self", "self_only"] = knob(
        "the template's story, or the first sample passing every check (self_only: a rebuilt row without both a "
        "passing and a failing sample is dropped, so no template story is in a rebuilt pair)")
    rejected: Literal["first", "values_first"] = knob(
        "the first sample the checker fails, or (values_first) the first that fails the taboo, twist or object "
        "check when one does")
    cut_pairs: float = knob("share of rebuilt rows that also get a pair whose rejected is their chosen story with a "
                            "copied value broken: cut short, a word broken, or its tail said twice "
                            "(`pico.pairs.value_cut_story`)", "[0, 1]")
    article_pairs: float = knob("share of rebuilt rows that also get a pair whose rejected is their chosen story with "
                                "the article before a copied value swapped, 'a iron bell' "
                                "(`pico.pairs.article_swapped_story`)", "[0, 1]")
    pairs_per_prompt: int = knob("pairs one prompt's samples give at most: its first failing sample's, then each "
                                 "other failing sample against the passing ones in turn (1 = the first only)",
                                 "[1, 64]")
    temperature: float = knob("sampling temperature", "(0, 100]")
    top_p: float = knob("nucleus mass (1 = off)", "(0, 1]")
    max_new_tokens: int = knob("story length cap in tokens", "(0, inf)")
    no_repeat_ngram: int = knob("no n-gram of the generated text twice, the prompt not counted and a copy of the "
                                "prompt let go on (0 = off)", "[0, inf)")
    batch_size: int = knob("stories decoded at once (finished ones leave the batch)", "[1, 4096]")
    rounds: int = knob("DPO rounds (iterative DPO): each round after the first rebuilds the pairs from the last "
                       "round's DPO model's own stories and trains it further, against itself as the reference",
                       "[1, 10]")

    def validate(self) -> None:
        self.require(self.rounds == 1 or self.share > 0, "rounds", "must be 1 when dpo.onpolicy.share is 0 (a later "
                     "round rebuilds pairs from the model's own stories)")
        self.require(self.pairs_per_prompt <= self.samples, "pairs_per_prompt", f"must be at most dpo.onpolicy.samples "
                     f"({self.samples}): each pair takes a different failing sample")

    def sampling_settings(self) -> dict:
        """What decides the stories sampled (the first round's): every knob but those that only pick among them, add
        pairs to them or come after them."""
        return {k: v for k, v in asdict(self).items()
                if k not in ("chosen", "rejected", "pairs_per_prompt", "cut_pairs", "article_pairs", "rounds")}


@dataclass(frozen=True, kw_only=True)
class DPOConfig(FinetuneConfig):
    KEY = "dpo"
    beta: float = knob("strength of the KL anchor to the reference", "(0, 1000]")
    label_smoothing: float = knob("conservative DPO epsilon", "[0, 0.5)")
    loss_type: Literal["sigmoid", "ipo"] = knob("sigmoid (DPO) or ipo")
    rpo_alpha: float = knob("weight of the chosen story's mean token NLL added to the loss (RPO); 0 = off", "[0, 100]")
    skip_copies: bool = knob("leave the tokens that copy a spec value out of the log-ratios (RPO's NLL keeps them)")
    skip_rejected_copies: bool = knob("leave the rejected story's whole copies of a spec value out of its log-ratio: "
                                      "DPO keeps pushing the chosen story's copies up, and no longer pushes down the "
                                      "values a story rejected for its form shares with it (a copy cut short stays)")
    skip_rejected_end: bool = knob("leave the rejected story's end token out of the log-ratios: DPO does not push "
                                   "down stopping where a rejected story stops (RPO's NLL keeps the chosen's)")
    onpolicy: OnPolicyConfig = knob("pairs from the SFT model's own samples, judged by the checker")


@dataclass(frozen=True, kw_only=True)
class TeacherConfig(Section):
    """An OpenAI-compatible chat-completions endpoint. The API key is read from the environment only."""
    KEY = "generate.teacher"
    base_url: str = knob("endpoint base URL", pattern=r"https?://.+")
    model: str = knob("model name", pattern=r".+")
    api_key_env: str = knob("environment variable holding the key (never the key)", pattern=r"[A-Za-z_]\w*")
    temperature: float = knob("teacher sampling temperature", "[0, 2]")
    max_tokens: int = knob("reply length cap", "(0, 100000]")
    concurrency: int = knob("requests in flight", "[1, 64]")
    timeout_s: float = knob("per request", "(0, 3600]")
    max_retries: int = knob("per request: timeouts, dropped connections, 429, 5xx, bad replies", "[0, 100]")
    max_attempts: int = knob("generations per story before an invalid one is dropped", "[1, 100]")
    backoff_s: float = knob("first retry wait, doubling (Retry-After wins)", "[0, 600]")


@dataclass(frozen=True, kw_only=True)
class GenerateConfig(Section):
    """SFT and DPO data for the horror-story task."""
    KEY = "generate"
    provider: Literal["template", "openai"] = knob("template (offline) or openai (any compatible endpoint)")
    seed: int = knob("spec and story seed", SEED)
    purpose: str = knob("why this data was made (a slug), recorded in data/dataset.json", pattern=SLUG)
    description: str = knob("free text, recorded in data/dataset.json")
    sft_splits: dict[str, int] = knob("rows per split: train, valid, test, test_unseen (held-out values only)")
    dpo_splits: dict[str, int] = knob("pairs per split: train, valid, test")
    heldout_share: float = knob("share of every value list kept out of train/valid/test, for test_unseen", "(0, 0.9]")
    pair_difficulty: Literal["easy", "hard"] | float = knob("easy, hard, or the share of hard pairs in [0, 1]")
    phrase_values: int = knob("values per field cut from TinyStories for train/valid specs (0 = none)", "[0, 100000]")
    phrase_datasets: list[Literal["sft", "dpo"]] = knob("whose train/valid specs draw phrase values: sft, dpo or both")
    fresh_names: float = knob("share of train/valid rows whose protagonist and supporting character get made-up "
                              "names (pico.spec.compose_name)", "[0, 1]")
    fresh_words: float = knob("share of train/valid object, taboo and twist values (each drawn on its own) whose "
                              "last word becomes a made-up one (pico.spec.compose_word)", "[0, 1]")
    an_values: float = knob("share of train/valid setting and object values starting \"a \" (each drawn on its own) "
                            "given a vowel-initial adjective, so their article is \"an\" "
                            "(pico.generate.with_an_values)",
                            "[0, 1]")
    twist_openers: float = knob("share of train/valid twists opened by an adverbial (\"all along the ...\"), so a "
                                "twist's first word is not always \"the\" (pico.generate.with_twist_openers)", "[0, 1]")
    stutter_pairs: float = knob("share of train/valid DPO pairs whose rejected story is the chosen one with a value's "
                                "last words said twice (pico.generate.with_stutter_rejected)", "[0, 1]")
    teacher: TeacherConfig = knob("the teacher LLM (provider: openai)")

    def validate(self) -> None:
        for name, keys in (("sft_splits", SFT_SPLITS), ("dpo_splits", SPLITS)):
            self.require(set(getattr(self, name)) == set(keys), name, f"must have exactly the keys {', '.join(keys)}")
            for split, n in getattr(self, name).items():
                self.require(n >= 1, f"{name}.{split}", f"must be >= 1 (got {n})")
        share_ok = not isinstance(self.pair_difficulty, float) or 0 <= self.pair_difficulty <= 1
        self.require(share_ok, "pair_difficulty", "must be easy, hard or a share in [0, 1]")


@dataclass(frozen=True, kw_only=True)
class EvaluateConfig(Section):
    """Every checkpoint on held-out data, and generations for fixed test specs checked against their spec."""
    KEY = "evaluate"
    checkpoints: dict[str, str] = knob("extra {name: path} beside base/sft/dpo (add the path to deps too)")
    splits: list[Literal["test_unseen", "test", "valid", "train"]] = knob("SFT splits generated for (unseen_, seen_)")
    device: Device = knob("auto picks cuda, then mps, then cpu")
    precision: Precision = knob("bf16 autocast in every forward pass; auto: bf16 where native")
    batch_size: int = knob("rows per forward pass", "(0, 65536]")
    sample_batch_size: int = knob("stories decoded at once (finished ones leave the batch)", "[1, 4096]")
    val_batches: int = knob("TinyStories val windows (x batch_size) for val loss and bits per byte", "(0, inf)")
    n_generations: int = knob("specs per split (the first n rows), the same for every checkpoint", "[0, inf)")
    temperature: float = knob("sampling temperature (0, or below 1e-6, = greedy)", "[0, 100]")
    top_p: float = knob("nucleus mass (1 = off)", "(0, 1]")
    top_k: int = knob("top-k (0 = off)", "[0, inf)")
    max_new_tokens: int = knob("story length cap in tokens", "(0, inf)")
    no_repeat_ngram: int = knob("no n-gram of the generated text twice; the prompt not counted (0 = off)", "[0, inf)")
    seed: int = knob("sampling seed", SEED)

    def validate(self) -> None:
        for name in self.checkpoints:
            self.require(re.fullmatch(SLUG, name) is not None and name not in ("base", "sft", "dpo"),
                         f"checkpoints.{name}", "must be a new lowercase name (base, sft, dpo are built in)")
        self.require(bool(self.splits), "splits", "must not be empty")


@dataclass(frozen=True, kw_only=True)
class BundleConfig(Section):
    """The poster-ready results package."""
    KEY = "bundle"
    title: str = knob("title of the results README and figures")
    n_samples: int = knob("prompts shown side by side across checkpoints", "[0, inf)")
    dpi: int = knob("figure resolution", "[50, 600]")


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig(Section):
    """Why this run exists. Metadata only: changing it reruns just `bundle`, which records it."""
    KEY = "experiment"
    purpose: str = knob(f"one of {', '.join(PURPOSES)}, or any slug", pattern=SLUG)
    description: str = knob("free text")


@dataclass(frozen=True)
class Params:  # all of params.yaml, validated
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


SECTIONS: dict[str, type] = typing.get_type_hints(Params)


def parse_params(raw: Any) -> Params:
    """Validate a params mapping (as read from params.yaml): every section and key must be there."""
    if not isinstance(raw, dict):
        raise ParamsError("params.yaml", "must be a mapping of sections")
    for name in list(raw) + [s for s in SECTIONS if s not in raw]:
        if name not in SECTIONS or name not in raw:
            raise ParamsError(str(name), "missing section" if name in SECTIONS else
                              f"unknown section (known: {', '.join(SECTIONS)})")
    p = Params(**{name: build_section(cls, raw[name], name) for name, cls in SECTIONS.items()})
    if (p.pretrain.seq_len or p.model.max_seq_len) > p.model.max_seq_len:
        raise ParamsError("pretrain.seq_len", f"must be <= model.max_seq_len ({p.model.max_seq_len})")
    for cfg in [c for c in (p.sft, p.dpo) if c.max_len > p.model.max_seq_len]:
        raise ParamsError(f"{cfg.KEY}.max_len", f"must be <= model.max_seq_len ({p.model.max_seq_len})")
    return p


def load_params(path: str | Path = "params.yaml") -> Params:
    return parse_params(read_yaml(path))
