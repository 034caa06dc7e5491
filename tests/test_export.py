"""`pico export`: the Hugging Face directory loads in `transformers` with no pico code and gives pico's logits,
ids, prompts and greedy text exactly; what cannot map is an error naming it."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
import transformers

from pico.checkpoint import load_checkpoint, save_checkpoint
from pico.cli import main
from pico.errors import ExportError
from pico.export import (GPT2_SETTINGS, choose_architecture, export_files, gpt2_tensors, pico_tensors,
                         unsupported_settings, write_export)
from pico.model import build_model
from pico.prompt import build_prompt, encode_prompt
from pico.sampling import SamplingConfig, sample
from pico.spec import Spec, sample_specs
from pico.tinystories import split_stories
from pico.tokenizer import EOT, train_tokenizer

from conftest import REPO, config

SAMPLING = SamplingConfig.of(config("evaluate"))


def export(tmp_path, model, tok, name="sft", **kw):
    out = tmp_path / f"export_{name}"
    meta = {"stage": "sft", "step": 3, "model": {**dataclasses.asdict(model.cfg), "vocab_size": model.vocab_size},
            "tokenizer_hash": tok.hash, "parent": "", "train_config": {"lr": 0.003}}
    write_export(out, export_files(name, model, meta, tok, SAMPLING, **kw))
    return out


def load_hf(path, remote_code=False):
    """The export as transformers loads it; `remote_code`: it ships its modeling code (trust_remote_code=True).
    Every tensor of the architecture must come from model.safetensors (none missing, none left over)."""
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, trust_remote_code=remote_code, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    return model.eval(), transformers.AutoTokenizer.from_pretrained(path, trust_remote_code=remote_code)


def tiny_gpt(tok, seed=0, **kw):
    torch.manual_seed(seed)
    plain = {"pos_encoding": "learned", "copy_head": False}  # GPT-2's shape; params.yaml's default has a copy head
    cfg = config("model", type="transformer", d_model=32, n_layer=2, n_head=2, max_seq_len=128, **{**plain, **kw})
    return build_model(cfg, tok.vocab_size).eval()


COPY_SCALE = 30.0  # the copy head's weights at their initialisation give it ~no say; scaled, copying dominates


def tiny_copy_gpt(tok, seed=0, **kw):
    """params.yaml's default shape in small (RoPE, a copy head), with the copy head's weights scaled up so the
    mixture's copy side carries real mass (checked by `copying_matters`)."""
    settings = {"pos_encoding": "rope", "copy_head": True, "copy_dim": 16, "copy_value_key": True,
                "copy_min_gap": 4, **kw}
    model = tiny_gpt(tok, seed, **settings)
    if model.copy is not None and model.copy.blocked is not None:
        model.block_copies(tok.line_break_ids())
    if model.copy is not None:
        with torch.no_grad():
            for p in model.copy.parameters():
                p.mul_(COPY_SCALE)
    return model


def copying_matters(model, ids) -> float:
    """Largest change the copy head makes to a log-prob on `ids`: the mixture against the vocabulary side alone."""
    with torch.no_grad():
        mixture = model(ids)
        vocab_only = torch.log_softmax(model.head(model(ids, return_hidden=True)).float(), dim=-1)
    return (mixture - vocab_only).abs().max().item()


def train_briefly(model, tok, stories, steps=30):
    """A few AdamW steps on real text, so the weights are no longer their initialisation (loss must fall)."""
    ids = torch.tensor([t for s in stories[:60] for t in tok.encode(s) + [tok.eot_id]][: 8 * 65]).view(8, 65)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    losses = []
    for _ in range(steps):
        logits = model(ids[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.5, losses[::10]
    return model.eval()


# ----------------------------------------------------------------------------------------------- logits
@pytest.mark.parametrize("trained", [False, True])
def test_transformers_gives_picos_logits(tmp_path, tok, sample_stories, trained):
    model = tiny_gpt(tok)
    if trained:
        model = train_briefly(model, tok, sample_stories)
    hf, _ = load_hf(export(tmp_path, model, tok))
    assert type(hf).__name__ == "GPT2LMHeadModel"  # a standard architecture: no pico code, no trust_remote_code
    ids = torch.randint(0, tok.vocab_size, (3, model.cfg.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max().item() < 1e-4


def test_safetensors_hold_every_tensor_once_and_the_head_is_tied(tmp_path, tok):
    from safetensors.torch import load_file

    model = tiny_gpt(tok)
    out = export(tmp_path, model, tok)
    tensors = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in tensors  # tied to transformer.wte.weight, as GPT-2 stores it
    assert torch.equal(tensors["transformer.h.1.attn.c_attn.weight"], model.blocks[1].attn.qkv.weight.t())
    assert not tensors["transformer.h.0.mlp.c_fc.bias"].any()  # pico has no biases: zeros, exactly
    config_json = json.loads((out / "config.json").read_text())
    assert config_json["architectures"] == ["GPT2LMHeadModel"] and config_json["eos_token_id"] == tok.eot_id
    hf, _ = load_hf(out)
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()


# ----------------------------------------------------------------------------------------------- tokenizer
@pytest.fixture(scope="module")
def big_tok(tinystories):
    """A 4096-id tokenizer (the pipeline's size), trained on a train shard: many merges to get right."""
    text = (tinystories / "train" / "v1_s-ajaykumar_smallGPT.txt").read_text(encoding="utf-8")
    return train_tokenizer(split_stories(text), 4096)


def val_stories(tinystories) -> list[str]:
    return [s for f in sorted((tinystories / "valid").glob("*.txt"))
            for s in split_stories(f.read_text(encoding="utf-8")) if s.strip()]


@pytest.mark.parametrize("which", ["tok", "big_tok"])
def test_hf_tokenizer_gives_picos_ids_on_tinystories_val(tmp_path, request, tinystories, which):
    tok = request.getfixturevalue(which)
    _, hf_tok = load_hf(export(tmp_path, tiny_gpt(tok), tok))
    stories = val_stories(tinystories)
    assert len(stories) > 500
    ours = tok.encode_batch(stories)
    theirs = hf_tok(stories, add_special_tokens=False)["input_ids"]
    mismatched = [i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b]
    assert not mismatched, f"{len(mismatched)} stories differ, first: {stories[mismatched[0]][:80]!r}"
    assert [hf_tok.decode(ids) for ids in ours[:200]] == [tok.decode(ids) for ids in ours[:200]]


def test_hf_tokenizer_gives_picos_ids_on_sft_prompts_and_special_text(tmp_path, tok):
    from pico.generate import generate_rows

    _, hf_tok = load_hf(export(tmp_path, tiny_gpt(tok), tok))
    rows = generate_rows(config("generate", sft_splits={"train": 40, "valid": 2, "test": 2, "test_unseen": 2},
                                dpo_splits={"train": 2, "valid": 2, "test": 2})).rows[("sft", "train")]
    for text in [r["prompt"] for r in rows] + [r["response"] for r in rows]:
        assert hf_tok.encode(text, add_special_tokens=False) == tok.encode(text)
    typed = f"a story {EOT} that types the end token"  # text in a prompt, never the special id (as in pico)
    assert hf_tok.encode(typed, add_special_tokens=False) == tok.encode(typed)
    assert tok.eot_id not in hf_tok.encode(typed, add_special_tokens=False)
    ids = tok.encode("The end.") + [tok.eot_id]
    assert hf_tok.decode(ids, skip_special_tokens=True) == tok.decode(ids) == "The end."
    assert hf_tok.eos_token_id == tok.eot_id and hf_tok.pad_token_id == tok.eot_id


ODD = Spec("Q's \"{{ title }}\" {% raw %}", "a place with \\ backslashes", "Mina", "Kai", "a key 🗝",
           "never say '{#'", "the end")


@pytest.mark.parametrize("spec", [*sample_specs(20, 5), ODD])
def test_chat_template_renders_a_spec_in_the_one_prompt_format(tmp_path, tok, spec):
    _, hf_tok = load_hf(export(tmp_path, tiny_gpt(tok), tok))
    messages = [{"role": "system", "content": "ignored"}, {"role": "user", "content": spec.to_dict()}]
    assert hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == build_prompt(spec)
    ids = hf_tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == encode_prompt(tok, build_prompt(spec))


def test_chat_template_takes_text_as_the_full_prompt_and_refuses_assistant_turns(tmp_path, tok):
    _, hf_tok = load_hf(export(tmp_path, tiny_gpt(tok), tok))
    assert hf_tok.apply_chat_template([{"role": "user", "content": "Once upon a time"}], tokenize=False) \
        == "Once upon a time"
    with pytest.raises(Exception, match="single-turn"):
        hf_tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}],
                                   tokenize=False)


# ----------------------------------------------------------------------------------------------- generation
def test_greedy_generate_gives_picos_greedy_text(tmp_path, tok, sample_stories):
    model = train_briefly(tiny_gpt(tok), tok, sample_stories)
    hf, hf_tok = load_hf(export(tmp_path, model, tok))
    prompts = ["Once upon a time, there was a", "Tom and Sue went to the park. They", build_prompt(ODD)[-60:]]
    greedy = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=40, no_repeat_ngram=0, seed=0)
    ours = [tok.decode(ids) for ids in sample(model, [tok.encode(p) for p in prompts], greedy, tok.eot_id)]
    batch = hf_tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)  # left-padded, together
    out = hf.generate(**batch, do_sample=False, max_new_tokens=40)
    theirs = [hf_tok.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    assert theirs == ours
    assert len(set(ours)) == 3 and all(ours)


def test_generation_config_has_the_evaluation_sampling_and_the_end_token(tmp_path, tok):
    out = export(tmp_path, tiny_gpt(tok), tok)
    gen = transformers.GenerationConfig.from_pretrained(out)
    ev = config("evaluate")
    assert gen.eos_token_id == tok.eot_id and gen.pad_token_id == tok.eot_id and gen.do_sample
    assert (gen.temperature, gen.top_p, gen.top_k, gen.max_new_tokens) == (ev.temperature, ev.top_p, ev.top_k,
                                                                         ev.max_new_tokens)


# ---------------------------------------------------------------------------------------------- pico's own architecture
CUSTOM_SETTINGS = {
    "rope_copy": {},  # params.yaml's default: RoPE, a copy head whose keys see the value, a gap
    "rope_copy_gap1_no_value_key": {"copy_value_key": False, "copy_min_gap": 1},
    "learned_copy": {"pos_encoding": "learned"},
    "rope_copy_no_line_breaks": {"copy_line_breaks": False},  # the blocked tokens travel as a buffer
    "rope_copy_match": {"copy_match": 2, "copy_line_breaks": False},  # exact-match terms of order 1 and 2
    "rope_no_copy": {"copy_head": False},
}


def max_log_prob_gap(ours: torch.Tensor, theirs: torch.Tensor) -> float:
    return (torch.log_softmax(ours.float(), -1) - torch.log_softmax(theirs.float(), -1)).abs().max().item()


@pytest.mark.parametrize("trained", [False, True])
@pytest.mark.parametrize("which", list(CUSTOM_SETTINGS))
def test_custom_architecture_gives_picos_log_probs(tmp_path, tok, sample_stories, which, trained):
    model = tiny_copy_gpt(tok, **CUSTOM_SETTINGS[which])
    if trained:
        model = train_briefly(model, tok, sample_stories)
    out = export(tmp_path, model, tok)
    hf, _ = load_hf(out, remote_code=True)
    assert type(hf).__name__ == "PicoForCausalLM"
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()  # tied, as pico's head
    story = torch.tensor(tok.encode("\n".join(sample_stories[:5]))[: model.cfg.max_seq_len]).unsqueeze(0)
    assert set(story.flatten().tolist()) & set(tok.line_break_ids())  # line breaks to copy, or not
    ids = torch.cat([story, torch.randint(0, tok.vocab_size, (2, story.shape[1]),
                                          generator=torch.Generator().manual_seed(1))])
    if model.copy is not None:
        assert copying_matters(model, ids) > 1.0  # the copy side changes log-probs by more than a nat
    with torch.no_grad():
        ours, theirs = model(ids), hf(ids).logits
    assert ours.shape == theirs.shape
    assert max_log_prob_gap(ours, theirs) < 1e-4


def test_custom_config_json_has_auto_map_and_every_knob(tmp_path, tok):
    model = tiny_copy_gpt(tok)
    out = export(tmp_path, model, tok)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["PicoForCausalLM"] and cfg["model_type"] == "pico_gpt"
    assert cfg["auto_map"] == {"AutoConfig": "configuration_pico.PicoConfig",
                               "AutoModelForCausalLM": "modeling_pico.PicoForCausalLM"}
    knobs = {k: v for k, v in dataclasses.asdict(model.cfg).items() if k not in ("type", "k")}
    assert {k: cfg[k] for k in knobs} == knobs and cfg["vocab_size"] == tok.vocab_size
    assert (out / "modeling_pico.py").read_text() == (REPO / "pico/hf_modeling/modeling_pico.py").read_text()
    assert (out / "configuration_pico.py").is_file()
    card = (out / "README.md").read_text()
    assert "AutoModelForCausalLM.from_pretrained(DIR, trust_remote_code=True)" in card and "PicoForCausalLM" in card
    assert "AutoTokenizer.from_pretrained(DIR, trust_remote_code=True)" in card


def test_plain_model_stays_gpt2_and_the_default_model_is_pico(tok):
    assert choose_architecture(tiny_gpt(tok).cfg, "x").name == "GPT2LMHeadModel"
    assert choose_architecture(config("model"), "x").name == "PicoForCausalLM"  # params.yaml's model exports
    assert choose_architecture(tiny_copy_gpt(tok, copy_head=False).cfg, "x").name == "PicoForCausalLM"  # RoPE alone


@pytest.mark.parametrize("which", ["rope_copy", "learned_copy", "rope_copy_match"])  # RoPE is blind to a row's
# shift, learned positions are not; padding never counts as a match
def test_left_padded_batch_gives_picos_cached_log_probs(tmp_path, tok, sample_stories, which):
    """pico decodes a left-padded batch through its cache with `valid`; the export takes the attention mask."""
    model = train_briefly(tiny_copy_gpt(tok, **CUSTOM_SETTINGS[which]), tok, sample_stories)
    hf, _ = load_hf(export(tmp_path, model, tok), remote_code=True)
    rows = [tok.encode(s)[:n] for s, n in zip(sample_stories[5:8], (60, 23, 41))]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.eot_id)
    valid = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], valid[i, width - len(r):] = torch.tensor(r), True
    assert not valid.all()
    with torch.no_grad():
        ours = model(ids, cache=model.new_cache(len(rows), width), valid=valid)
        theirs = hf(ids, attention_mask=valid.long()).logits
    assert max_log_prob_gap(ours[valid], theirs[valid]) < 1e-4  # padded positions predict nothing
    with torch.no_grad():  # and a row alone, unpadded, as pico's plain forward
        alone = hf(torch.tensor([rows[1]])).logits[0]
    assert max_log_prob_gap(model(torch.tensor([rows[1]]))[0], alone) < 1e-4


def test_custom_greedy_generate_gives_picos_greedy_text(tmp_path, tok, sample_stories):
    model = train_briefly(tiny_copy_gpt(tok), tok, sample_stories)
    hf, hf_tok = load_hf(export(tmp_path, model, tok), remote_code=True)
    prompts = ["Once upon a time, there was a", "Tom and Sue went to the park. They saw a dog. Tom and Sue",
               build_prompt(ODD)[-60:]]
    greedy = SamplingConfig(temperature=0.0, top_k=0, top_p=1.0, max_new_tokens=40, no_repeat_ngram=0, seed=0)
    ours = [tok.decode(ids) for ids in sample(model, [tok.encode(p) for p in prompts], greedy, tok.eot_id)]
    batch = hf_tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)  # left-padded, together
    assert not batch["attention_mask"].bool().all()
    out = hf.generate(**batch, do_sample=False, no_repeat_ngram_size=0, max_new_tokens=40)
    theirs = [hf_tok.decode(row[batch["input_ids"].shape[1]:], skip_special_tokens=True) for row in out]
    assert theirs == ours
    assert len(set(ours)) == 3 and all(ours)


def test_sampling_generate_draws_from_picos_distribution_at_every_step(tmp_path, tok, sample_stories):
    """What `generate` samples from at each step (its raw logits, before temperature and top-p) is pico's mixture
    for the row's real tokens so far."""
    model = train_briefly(tiny_copy_gpt(tok), tok, sample_stories)
    hf, hf_tok = load_hf(export(tmp_path, model, tok), remote_code=True)
    prompts = ["Once upon a time, there was a", "Tom and Sue went to the park. They saw a dog. Tom and Sue"]
    batch = hf_tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(3)
    out = hf.generate(**batch, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=12,
                      no_repeat_ngram_size=0, output_logits=True, return_dict_in_generate=True)
    width = batch["input_ids"].shape[1]
    checked = 0
    for r, prompt in enumerate(prompts):
        real = tok.encode(prompt) + out.sequences[r, width:].tolist()
        for step, step_logits in enumerate(out.logits):
            context = real[: len(tok.encode(prompt)) + step]
            if tok.eot_id in context[len(tok.encode(prompt)):]:
                break  # the row ended; generate pads it from here
            with torch.no_grad():
                ours = model(torch.tensor([context]))[0, -1]
            assert max_log_prob_gap(ours, step_logits[r]) < 1e-4
            checked += 1
    assert checked >= 12


FRESH_LOAD = """
import importlib.abc, json, sys
class NoPico(importlib.abc.MetaPathFinder):  # pico is installed in this venv (editable): make it unimportable
    def find_spec(self, name, path=None, target=None):
        if name == "pico" or name.startswith("pico."):
            raise ImportError(f"{name}: an export must load without pico")
sys.meta_path.insert(0, NoPico())
import torch, transformers
model = transformers.AutoModelForCausalLM.from_pretrained(sys.argv[1], trust_remote_code=True, dtype=torch.float32)
ids = torch.tensor(json.loads(sys.argv[2]))
with torch.no_grad():
    log_probs = torch.log_softmax(model.eval()(ids).logits, -1)
assert not [m for m in sys.modules if m == "pico" or m.startswith("pico.")]
print(json.dumps({"type": type(model).__name__, "log_probs": log_probs[0, :, :8].tolist()}))
"""


def test_export_loads_in_a_fresh_process_that_cannot_import_pico(tmp_path, tok):
    model = tiny_copy_gpt(tok)
    out = export(tmp_path, model, tok)
    ids = [[5, 9, 13, 5, 9, 13, 5, 9, 13, 5, 9, 13, 5, 9]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")  # the shipped code is copied here, not under ~
    proc = subprocess.run([sys.executable, "-c", FRESH_LOAD, str(out), json.dumps(ids)], check=False,
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["type"] == "PicoForCausalLM"
    with torch.no_grad():
        ours = torch.log_softmax(model(torch.tensor(ids)), -1)[0, :, :8]
    assert (ours - torch.tensor(got["log_probs"])).abs().max().item() < 1e-4
    blocked = subprocess.run([sys.executable, "-c", FRESH_LOAD.split("import torch")[0] + "import pico"],
                             check=False, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=60)
    assert blocked.returncode != 0 and "an export must load without pico" in blocked.stderr  # the guard works


def test_a_tensor_with_no_place_in_the_custom_architecture_is_an_error_naming_it(tok):
    weights = dict(tiny_copy_gpt(tok).state_dict())
    weights["copy.gate.weight"] = torch.zeros(3)
    with pytest.raises(ExportError, match=r"no place in PicoForCausalLM: copy\.gate\.weight"):
        pico_tensors(weights)
    weights.pop("copy.gate.weight")
    weights["head.weight"] = weights["head.weight"].clone() + 1
    with pytest.raises(ExportError, match="head.weight: the output layer is not tied"):
        pico_tensors(weights)


# ----------------------------------------------------------------------------------------------- what does not map
@pytest.mark.parametrize("kind", ["lstm", "kgram_mlp"])
def test_lstm_and_kgram_are_not_exportable(tmp_path, tok, kind):
    model = build_model(config("model", type=kind, d_model=16, n_layer=1, max_seq_len=64), tok.vocab_size)
    with pytest.raises(ExportError, match=f"a {kind} model is not exportable to a standard transformers"):
        export(tmp_path, model, tok)
    assert not (tmp_path / "export_sft").exists()


def test_a_tensor_with_no_place_is_an_error_naming_it(tok):
    weights = dict(tiny_gpt(tok).state_dict())
    weights["copy_gate.weight"] = torch.zeros(3)
    with pytest.raises(ExportError, match="copy_gate.weight"):
        gpt2_tensors(weights)
    weights.pop("copy_gate.weight")
    weights["head.weight"] = weights["head.weight"].clone() + 1  # an untied output layer
    with pytest.raises(ExportError, match="head.weight: the output layer is not tied"):
        gpt2_tensors(weights)


def test_a_setting_the_mapping_does_not_know_is_named():
    cfg = config("model", type="transformer", pos_encoding="learned", copy_head=False)
    assert unsupported_settings(cfg, GPT2_SETTINGS) == []
    known = {k: v for k, v in GPT2_SETTINGS.items() if k != "mlp_ratio"}  # as if pico gained a new knob
    assert unsupported_settings(cfg, known) == [f"model.mlp_ratio = {cfg.mlp_ratio} (a setting this architecture "
                                                f"does not know)"]
    assert "it represents only 'transformer'" in unsupported_settings(config("model", type="lstm"), GPT2_SETTINGS)[0]


# ----------------------------------------------------------------------------------------------- command and stage
def save(path, model, tok, stage="sft"):
    train_config = {"beta": 0.1, "loss_type": "sigmoid"} if stage == "dpo" else {"lr": 0.003}
    save_checkpoint(path, model, model_cfg=model.cfg, tokenizer_hash=tok.hash, stage=stage, step=7,
                    train_config=train_config)


def test_pico_export_writes_a_directory_with_a_model_card(tmp_path, tok, capsys):
    tok.save(tmp_path / "tokenizer.json")
    save(tmp_path / "sft.pt", tiny_gpt(tok), tok)
    (tmp_path / "evaluate.json").write_text(json.dumps({"sft": {"val_bpb": 3.25, "unseen_pass_all": 0.125}}))
    (tmp_path / "dataset.json").write_text(json.dumps({"purpose": "baseline", "rows": {"sft/train": 256}}))
    code = main(["export", "--checkpoint", str(tmp_path / "sft.pt"), "--out", str(tmp_path / "out"),
                 "--tokenizer", str(tmp_path / "tokenizer.json"), "--params", str(REPO / "params.yaml"),
                 "--metrics", str(tmp_path / "evaluate.json"), "--dataset", str(tmp_path / "dataset.json")])
    assert code == 0, capsys.readouterr().err
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "generation_config.json",
                                                     "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    card = (out / "README.md").read_text()
    assert "| val_bpb | 3.25 |" in card and "| unseen_pass_all | 0.125 |" in card
    assert '- purpose: "baseline"' in card and "- lr: 0.003" in card and "GPT2LMHeadModel" in card
    assert "trust_remote_code" not in card  # a standard architecture: no code of ours to trust
    load_hf(out)


def test_pico_export_of_an_lstm_is_one_line_naming_the_file(tmp_path, tok, capsys):
    tok.save(tmp_path / "tokenizer.json")
    lstm = build_model(config("model", type="lstm", d_model=16, n_layer=1, max_seq_len=64), tok.vocab_size)
    save(tmp_path / "lstm.pt", lstm, tok)
    code = main(["export", "--checkpoint", str(tmp_path / "lstm.pt"), "--out", str(tmp_path / "out"),
                 "--tokenizer", str(tmp_path / "tokenizer.json"), "--params", str(REPO / "params.yaml")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.splitlines()[-1].startswith(f"error: {tmp_path / 'lstm.pt'}: a lstm model is not exportable")
    assert not (tmp_path / "out").exists()


def test_stage_exports_both_checkpoints_and_explains_an_unexportable_one(tmp_path, tok):
    tok.save(tmp_path / "tokenizer.json")
    save(tmp_path / "sft.pt", tiny_copy_gpt(tok), tok)  # params.yaml's shape: RoPE and a copy head
    lstm = build_model(config("model", type="lstm", d_model=16, n_layer=1, max_seq_len=64), tok.vocab_size)
    save(tmp_path / "dpo.pt", lstm, tok, stage="dpo")
    (tmp_path / "evaluate.json").write_text(json.dumps({"sft": {"val_bpb": 3.25}}))
    (tmp_path / "dataset.json").write_text(json.dumps({"purpose": "baseline"}))
    cmd = [sys.executable, str(REPO / "stages/export.py"), "--params", str(REPO / "params.yaml"),
           "--sft", str(tmp_path / "sft.pt"), "--dpo", str(tmp_path / "dpo.pt"),
           "--tokenizer", str(tmp_path / "tokenizer.json"), "--dataset", str(tmp_path / "dataset.json"),
           "--evaluation", str(tmp_path / "evaluate.json"), "--sft-out", str(tmp_path / "exports/sft"),
           "--dpo-out", str(tmp_path / "exports/dpo")]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "exports/sft").iterdir()) == [
        "README.md", "config.json", "configuration_pico.py", "generation_config.json", "model.safetensors",
        "modeling_pico.py", "tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in (tmp_path / "exports/dpo").iterdir()] == ["README.md"]
    assert "a lstm model is not exportable" in (tmp_path / "exports/dpo/README.md").read_text()
    assert "not exported" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["dpo", "sft"]  # no temp folders left
    reloaded = load_checkpoint(tmp_path / "sft.pt", tokenizer_hash=tok.hash).model
    hf, _ = load_hf(tmp_path / "exports/sft", remote_code=True)
    ids = torch.arange(20).repeat(2).unsqueeze(0)  # a repeat: the copy head has something to point at
    with torch.no_grad():
        assert max_log_prob_gap(reloaded.eval()(ids), hf(ids).logits) < 1e-4

