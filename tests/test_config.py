import copy

import pytest
import yaml

from pico.config import load_params, parse_params
from pico.errors import ParamsError

from conftest import REPO


@pytest.fixture
def raw():
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repo_params_are_valid(raw):
    p = parse_params(raw)
    assert p.model.type == "transformer"
    assert p.pretrain.lr > 0


def test_missing_sections_take_defaults():
    p = parse_params({})
    assert p.tokenizer.vocab_size == 4096


@pytest.mark.parametrize(
    "section,key,value,needle",
    [
        ("pretrain", "lr", 0, "pretrain.lr"),
        ("pretrain", "lr", -1e-3, "pretrain.lr"),
        ("pretrain", "lr", "fast", "pretrain.lr"),
        ("pretrain", "batch_size", 0, "pretrain.batch_size"),
        ("pretrain", "max_steps", 1.5, "pretrain.max_steps"),
        ("pretrain", "device", "tpu", "pretrain.device"),
        ("pretrain", "compile", "yes", "pretrain.compile"),
        ("model", "type", "mamba", "model.type"),
        ("model", "n_head", 5, "model.n_head"),
        ("model", "d_model", True, "model.d_model"),
        ("tokenizer", "vocab_size", 100, "tokenizer.vocab_size"),
        ("tokenizer", "vocab_size", 70000, "tokenizer.vocab_size"),
        ("prepare", "val_fraction", 1.5, "prepare.val_fraction"),
        ("prepare", "files", ["a"], "prepare.files"),
    ],
)
def test_bad_values_name_the_key(raw, section, key, value, needle):
    bad = copy.deepcopy(raw)
    bad[section][key] = value
    with pytest.raises(ParamsError) as e:
        parse_params(bad)
    assert needle in str(e.value)


def test_unknown_key_and_section_are_named(raw):
    bad = copy.deepcopy(raw)
    bad["pretrain"]["lrr"] = 1.0
    with pytest.raises(ParamsError, match=r"pretrain\.lrr: unknown key"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    bad["pretrian"] = {}
    with pytest.raises(ParamsError, match="pretrian: unknown section"):
        parse_params(bad)


def test_cross_section_context_check(raw):
    bad = copy.deepcopy(raw)
    bad["pretrain"]["seq_len"] = bad["model"]["max_seq_len"] * 2
    with pytest.raises(ParamsError, match="pretrain.seq_len"):
        parse_params(bad)


def test_ints_are_accepted_where_floats_are_due(raw):
    ok = copy.deepcopy(raw)
    ok["pretrain"]["lr"] = 1
    assert parse_params(ok).pretrain.lr == 1.0


def test_load_params_errors(tmp_path):
    with pytest.raises(ParamsError, match="file not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("pretrain: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)
