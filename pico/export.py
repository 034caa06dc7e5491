"""A pico checkpoint as a Hugging Face model directory that `transformers` loads with no pico code.

pico's GPT is GPT-2's architecture with three differences that map exactly: no biases (GPT-2's are written as
zeros), LayerNorm without bias (the same, zeros), and `nn.Linear` weights (out, in) where GPT-2's `Conv1D` keeps
(in, out) (transposed). Attention splits q, k, v and heads in the same order, the MLP is GELU with the tanh
approximation (`gelu_pytorch_tanh`), LayerNorm eps is 1e-5 and the output layer is tied to the embedding.

An architecture is the pair of checks and maps below. A model it cannot represent exactly (another model type,
a setting it does not know, a tensor it has no place for) is an ExportError naming what does not map, never a
silently dropped tensor. ARCHITECTURES is tried in order: GPT-2 first, so a plain model stays a standard
architecture; then `PicoForCausalLM`, for the settings no standard architecture has (RoPE, the copy head): its
modeling code (pico/hf_modeling/, torch and transformers only) is copied beside the weights and config.json's
`auto_map` points at it, the way the ecosystem ships custom architectures (loaded with `trust_remote_code=True`).

Functions here return dicts and strings; `write_export` is the one that writes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from pico.config import ModelConfig
from pico.errors import ExportError
from pico.hf_tokenizer import tokenizer_config, tokenizer_json
from pico.io import atomic_dir, dumps_json
from pico.sampling import GREEDY_BELOW, SamplingConfig
from pico.tokenizer import Tokenizer

Tensors = dict[str, torch.Tensor]

# ModelConfig fields the GPT-2 mapping reads (None: any value), or the one value it can represent. A field not
# listed here (a knob added to pico's model later) stops the export until the mapping says what it means.
# RoPE and the copy head (issue 19) have no GPT-2 form: only learned positions and no copy head export as GPT-2;
# the copy head's own sizes mean nothing without it.
GPT2_SETTINGS: dict[str, object] = {"type": "transformer", "d_model": None, "n_layer": None, "n_head": None,
                                    "max_seq_len": None, "dropout": None, "k": None, "mlp_ratio": None,
                                    "pos_encoding": "learned", "copy_head": False, "copy_dim": None,
                                    "copy_value_key": None, "copy_min_gap": None, "copy_line_breaks": None,
                                    "copy_match": None}


def unsupported_settings(cfg: ModelConfig, settings: dict[str, object]) -> list[str]:
    """The settings of `cfg` an architecture cannot represent, as `model.key = value` lines."""
    out = []
    for key, value in asdict(cfg).items():
        if key not in settings:
            out.append(f"model.{key} = {value!r} (a setting this architecture does not know)")
        elif settings[key] is not None and value != settings[key]:
            out.append(f"model.{key} = {value!r} (it represents only {settings[key]!r})")
    return out


def gpt2_config(cfg: ModelConfig, vocab_size: int, eot_id: int) -> dict:
    """config.json of GPT2LMHeadModel for this model (keys as transformers' GPT2Config names them)."""
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": vocab_size,
        "n_positions": cfg.max_seq_len,
        "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer,
        "n_head": cfg.n_head,
        "n_inner": cfg.mlp_ratio * cfg.d_model,
        "activation_function": "gelu_pytorch_tanh",  # F.gelu(approximate="tanh"), pico's MLP
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "layer_norm_epsilon": 1e-5,  # nn.LayerNorm's default, pico's
        "initializer_range": 0.02,
        "scale_attn_weights": True,  # 1/sqrt(head size), as scaled_dot_product_attention
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id,
        "use_cache": True,
        "dtype": "float32",
    }


def _linear(hf: str) -> Callable[[torch.Tensor], Tensors]:  # nn.Linear (out, in), no bias -> Conv1D (in, out) + 0
    return lambda w: {f"{hf}.weight": w.t().contiguous(), f"{hf}.bias": torch.zeros(w.shape[0], dtype=w.dtype)}


def _norm(hf: str) -> Callable[[torch.Tensor], Tensors]:  # LayerNorm without bias -> with a zero bias
    return lambda w: {f"{hf}.weight": w.clone(), f"{hf}.bias": torch.zeros_like(w)}


def _same(hf: str) -> Callable[[torch.Tensor], Tensors]:
    return lambda w: {hf: w.clone()}


GPT2_TENSORS: list[tuple[str, Callable[[re.Match], Callable[[torch.Tensor], Tensors]]]] = [
    (r"wte\.weight", lambda m: _same("transformer.wte.weight")),
    (r"wpe\.weight", lambda m: _same("transformer.wpe.weight")),
    (r"ln_f\.weight", lambda m: _norm("transformer.ln_f")),
    (r"blocks\.(\d+)\.ln1\.weight", lambda m: _norm(f"transformer.h.{m[1]}.ln_1")),
    (r"blocks\.(\d+)\.ln2\.weight", lambda m: _norm(f"transformer.h.{m[1]}.ln_2")),
    (r"blocks\.(\d+)\.attn\.qkv\.weight", lambda m: _linear(f"transformer.h.{m[1]}.attn.c_attn")),
    (r"blocks\.(\d+)\.attn\.proj\.weight", lambda m: _linear(f"transformer.h.{m[1]}.attn.c_proj")),
    (r"blocks\.(\d+)\.mlp\.fc\.weight", lambda m: _linear(f"transformer.h.{m[1]}.mlp.c_fc")),
    (r"blocks\.(\d+)\.mlp\.proj\.weight", lambda m: _linear(f"transformer.h.{m[1]}.mlp.c_proj")),
]


def gpt2_tensors(weights: Tensors) -> Tensors:
    """pico's state dict under GPT2LMHeadModel's names. The output layer must be the embedding (tied): GPT-2
    ties lm_head.weight to transformer.wte.weight and stores it once. Every other tensor must have a rule."""
    head = weights.get("head.weight")
    if head is None or "wte.weight" not in weights or not torch.equal(head, weights["wte.weight"]):
        raise ExportError("head.weight: the output layer is not tied to the embedding wte.weight, and GPT-2 "
                          "ties them; this checkpoint cannot be exported as GPT2LMHeadModel")
    out: Tensors = {}
    unmapped = []
    for name, tensor in weights.items():
        if name == "head.weight":
            continue
        for pattern, make in GPT2_TENSORS:
            match = re.fullmatch(pattern, name)
            if match:
                out.update(make(match)(tensor.detach().cpu()))
                break
        else:
            unmapped.append(name)
    if unmapped:
        raise ExportError(f"tensors with no place in GPT2LMHeadModel: {', '.join(unmapped)}; "
                          f"exporting without them would change the model")
    return out


# ----------------------------------------------------------------------------------------------- PicoForCausalLM
# The modeling code shipped beside the weights (torch and transformers only, no pico import).
HF_MODELING_DIR = Path(__file__).with_name("hf_modeling")
PICO_CODE_FILES = ("configuration_pico.py", "modeling_pico.py")
PICO_AUTO_MAP = {"AutoConfig": "configuration_pico.PicoConfig", "AutoModelForCausalLM": "modeling_pico.PicoForCausalLM"}

# Every transformer setting pico has, under the name PicoConfig gives it (the same). `k` is the k-gram model's
# context, which a transformer does not read: known, and not written. A knob added to pico later stops the export
# until PicoConfig and this list know it.
PICO_SETTINGS: dict[str, object] = {"type": "transformer", "d_model": None, "n_layer": None, "n_head": None,
                                    "max_seq_len": None, "dropout": None, "k": None, "mlp_ratio": None,
                                    "pos_encoding": None, "copy_head": None, "copy_dim": None,
                                    "copy_value_key": None, "copy_min_gap": None, "copy_line_breaks": None,
                                    "copy_match": None}
PICO_UNUSED_SETTINGS = ("type", "k")  # `type` is the architecture itself; `k` is the k-gram model's


def pico_config(cfg: ModelConfig, vocab_size: int, eot_id: int) -> dict:
    """config.json of PicoForCausalLM: `auto_map` to the shipped code, and every transformer knob of `cfg`."""
    knobs = {k: v for k, v in asdict(cfg).items() if k not in PICO_UNUSED_SETTINGS}
    return {
        "architectures": ["PicoForCausalLM"],
        "model_type": "pico_gpt",
        "auto_map": dict(PICO_AUTO_MAP),
        "vocab_size": vocab_size,
        **knobs,
        "tie_word_embeddings": True,
        "bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id,
        "use_cache": False,  # it recomputes the sequence each step (modeling_pico.py's docstring)
        "dtype": "float32",
    }


def pico_tensors(weights: Tensors) -> Tensors:
    """pico's state dict under PicoForCausalLM's names: the body under `transformer.`, the copy head as it is,
    the output layer tied to the embedding (not stored). A tensor no rule places is an ExportError naming it."""
    head = weights.get("head.weight")
    if head is None or "wte.weight" not in weights or not torch.equal(head, weights["wte.weight"]):
        raise ExportError("head.weight: the output layer is not tied to the embedding wte.weight, and "
                          "PicoForCausalLM ties them; this checkpoint cannot be exported")
    body = re.compile(r"(wte|wpe|ln_f)\.weight|blocks\.\d+\.(ln1|ln2|attn\.qkv|attn\.proj|mlp\.fc|mlp\.proj)\.weight")
    copy = re.compile(r"copy\.(q|k_hidden|k_embed|k_value)\.weight|copy\.(sentinel|match_gate)\.(weight|bias)"
                      r"|copy\.blocked")
    out: Tensors = {}
    unmapped = []
    for name, tensor in weights.items():
        if name == "head.weight":
            continue
        if body.fullmatch(name):
            out[f"transformer.{name}"] = tensor.detach().cpu().clone()
        elif copy.fullmatch(name):
            out[name] = tensor.detach().cpu().clone()
        else:
            unmapped.append(name)
    if unmapped:
        raise ExportError(f"tensors with no place in PicoForCausalLM: {', '.join(unmapped)}; "
                          f"exporting without them would change the model")
    return out


def pico_code_files() -> dict[str, str]:
    """{file name: source} of the modeling code an export of PicoForCausalLM ships."""
    return {name: (HF_MODELING_DIR / name).read_text(encoding="utf-8") for name in PICO_CODE_FILES}


# ----------------------------------------------------------------------------------------------- choosing
@dataclass(frozen=True)
class Architecture:
    """How one transformers architecture represents pico's GPT: what it cannot, its config, its tensors, and the
    code files shipped beside the weights (none for a standard architecture)."""

    name: str
    unsupported: Callable[[ModelConfig], list[str]]
    config: Callable[[ModelConfig, int, int], dict]
    tensors: Callable[[Tensors], Tensors]
    code_files: Callable[[], dict[str, str]] = field(default=dict)

    @property
    def remote_code(self) -> bool:
        """Whether loading it takes `trust_remote_code=True` (it ships its own modeling code)."""
        return bool(self.code_files())


ARCHITECTURES = [
    Architecture("GPT2LMHeadModel", lambda cfg: unsupported_settings(cfg, GPT2_SETTINGS), gpt2_config, gpt2_tensors),
    Architecture("PicoForCausalLM", lambda cfg: unsupported_settings(cfg, PICO_SETTINGS), pico_config, pico_tensors,
                 pico_code_files),
]


def choose_architecture(cfg: ModelConfig, source: str) -> Architecture:
    """The first architecture that represents `cfg` exactly; an ExportError saying why none does."""
    if cfg.type != "transformer":
        raise ExportError(f"{source}: a {cfg.type} model is not exportable to a standard transformers "
                          f"architecture or to pico's own (only model.type: transformer is)")
    reasons = {}
    for arch in ARCHITECTURES:
        reasons[arch.name] = arch.unsupported(cfg)
        if not reasons[arch.name]:
            return arch
    raise ExportError(f"{source}: no architecture represents this model exactly: "
                      + "; ".join(f"{name} cannot take {', '.join(why)}" for name, why in reasons.items()))


# ----------------------------------------------------------------------------------------------- generation, card
def generation_config(sampling: SamplingConfig, eot_id: int) -> dict:
    """generation_config.json: stop at the end token, and sample as `evaluate` does by default.

    pico's `no_repeat_ngram` is left out: it guards the generated text only, while transformers'
    `no_repeat_ngram_size` also counts the prompt's n-grams, so it would forbid copying the spec's fields."""
    out: dict = {"bos_token_id": eot_id, "eos_token_id": eot_id, "pad_token_id": eot_id,
                 "max_new_tokens": sampling.max_new_tokens}
    if sampling.temperature < GREEDY_BELOW:
        out["do_sample"] = False
    else:
        out.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k)
    return out


def _metric_rows(metrics: dict, prefix: str = "") -> list[tuple[str, object]]:
    rows = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            rows += _metric_rows(value, f"{prefix}{key}.")
        elif isinstance(value, (int, float, str)) and not isinstance(value, bool):
            rows.append((prefix + key, value))
    return rows


def model_card(name: str, meta: dict, arch: str, sampling: SamplingConfig, dataset: dict | None,
               evaluation: dict | None, remote_code: bool = False) -> str:
    """README.md of an export: what the model is, what it was trained on and with, how it scored, how to load it.
    `remote_code`: the architecture's modeling code ships in the directory (loaded with trust_remote_code=True)."""
    m = meta["model"]
    if remote_code:
        how = (f"as `{arch}`, whose modeling code (`modeling_pico.py`, `configuration_pico.py`: torch and "
               f"transformers only) ships in this directory: `transformers` loads it with `trust_remote_code=True` "
               f"and no pico installed, and it gives pico's next-token log-probabilities")
        trust = ", trust_remote_code=True"  # AutoTokenizer reads config.json too, and asks without it
    else:
        how = f"as `{arch}`: `transformers` loads it with no pico code, and it gives pico's logits"
        trust = ""
    lines = ["---", "library_name: transformers", "pipeline_tag: text-generation", "tags: [pico, horror-stories]",
             "---", "", f"# pico {name}: a {m['n_layer']}-layer GPT that writes horror stories from a specification", "",
             f"Exported by `pico export` from a pico checkpoint (stage `{meta.get('stage')}`, step {meta.get('step')})"
             f" {how} (checked in pico's tests to 1e-4 in fp32).", "",
             "## Use", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f"tok = AutoTokenizer.from_pretrained(DIR{trust})",
             f"model = AutoModelForCausalLM.from_pretrained(DIR{trust})",
             'spec = {"title": ..., "setting": ..., "protagonist": ..., "supporting": ..., "object": ..., '
             '"taboo": ..., "twist": ...}',
             'ids = tok.apply_chat_template([{"role": "user", "content": spec}], return_tensors="pt", '
             'return_dict=True)',
             "out = model.generate(**ids)  # sampling defaults: generation_config.json",
             "print(tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))", "```", "",
             "The chat template writes a spec (a mapping of the seven fields) in pico's one prompt format; a user "
             "message that is text is taken as the whole prompt. The model is single-turn.", "",
             "## Model", "", "| setting | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in m.items()]
    lines += ["", "## Training", "", f"- stage: {meta.get('stage')}, step {meta.get('step')}",
              f"- tokenizer sha256: {meta.get('tokenizer_hash')}", f"- trained from (sha256): {meta.get('parent') or '-'}"]
    lines += [f"- {k}: {v}" for k, v in (meta.get("train_config") or {}).items()]
    lines += ["", "## Data", ""]
    if dataset:
        lines += [f"- {k}: {json.dumps(v, ensure_ascii=False)}" for k, v in dataset.items() if k != "sha256"]
    else:
        lines.append("Not recorded (no dataset card given to `pico export`).")
    lines += ["", "## Evaluation", ""]
    if evaluation:
        lines += ["Measured by pico's `evaluate` stage on this checkpoint (sampling: temperature "
                  f"{sampling.temperature}, top_p {sampling.top_p}, top_k {sampling.top_k}, at most "
                  f"{sampling.max_new_tokens} new tokens).", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in _metric_rows(evaluation)]
    else:
        lines.append("No evaluation numbers for this checkpoint (run `dvc repro evaluate`, then export again).")
    return "\n".join(lines) + "\n"


def not_exported_card(name: str, reason: str) -> str:
    """README.md of a checkpoint the pipeline could not export, saying why (the ExportError's message)."""
    return (f"# pico {name}: not exported\n\n{reason}\n\nOnly model.type: transformer checkpoints whose every "
            f"setting and tensor maps onto a transformers architecture (a standard one, or pico's own shipped "
            f"as code) are exported.\n")


# ----------------------------------------------------------------------------------------------- write
def export_files(name: str, model: torch.nn.Module, meta: dict, tok: Tokenizer, sampling: SamplingConfig,
                 dataset: dict | None = None, evaluation: dict | None = None, source: str = "checkpoint") -> dict:
    """{file name: str or tensors} of the export directory (tensors for model.safetensors)."""
    cfg = model.cfg
    arch = choose_architecture(cfg, source)
    weights = {k: v for k, v in model.state_dict().items()}
    return {
        "config.json": dumps_json(arch.config(cfg, model.vocab_size, tok.eot_id)),
        "model.safetensors": arch.tensors(weights),
        **arch.code_files(),
        "generation_config.json": dumps_json(generation_config(sampling, tok.eot_id)),
        "tokenizer.json": json.dumps(tokenizer_json(tok), ensure_ascii=False) + "\n",
        "tokenizer_config.json": dumps_json(tokenizer_config(tok, cfg.max_seq_len)),
        "README.md": model_card(name, meta, arch.name, sampling, dataset, evaluation, arch.remote_code),
    }


def write_export(out_dir: str | Path, files: dict) -> None:
    """Write the export directory whole or not at all (a temp directory renamed over it)."""
    from safetensors.torch import save_file

    with atomic_dir(out_dir) as tmp:
        for fname, content in files.items():
            if isinstance(content, str):
                (tmp / fname).write_text(content, encoding="utf-8")
            else:
                save_file(content, str(tmp / fname), metadata={"format": "pt"})
                (tmp / fname).chmod(0o644)  # safetensors writes 0600; an export is for others to read
