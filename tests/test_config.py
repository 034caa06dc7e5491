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


def test_a_missing_section_or_key_is_an_error_naming_it(raw):
    with pytest.raises(ParamsError, match="tokenizer: missing section"):
        parse_params({k: v for k, v in raw.items() if k != "tokenizer"})
    bad = copy.deepcopy(raw)
    del bad["sft"]["lr"]
    with pytest.raises(ParamsError, match=r"sft\.lr: missing \(peak learning rate\)"):
        parse_params(bad)
    bad = copy.deepcopy(raw)
    del bad["generate"]["teacher"]["timeout_s"]
    with pytest.raises(ParamsError, match=r"generate\.teacher\.timeout_s: missing"):
        parse_params(bad)


def test_no_hyperparameter_has_a_second_source_of_values():
    """Every section field is a knob with help text and no default: params.yaml is the only source."""
    import dataclasses

    from pico.config import SECTIONS

    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            assert f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING, f"{name}.{f.name}"
            assert f.metadata.get("help"), f"{name}.{f.name} has no help line"


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
        ("dpo", "beta", float("inf"), "dpo.beta"),
        ("dpo", "beta", float("nan"), "dpo.beta"),
        ("evaluate", "temperature", -0.5, "evaluate.temperature"),
        ("generate", "seed", -1, "generate.seed"),
        ("generate", "seed", 2**40, "generate.seed"),
        ("pretrain", "batch_size", 10**9, "pretrain.batch_size"),
        ("generate", "purpose", "Not A Slug", "generate.purpose"),
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


def test_duplicate_keys_and_bad_bytes_are_refused(tmp_path):
    path = tmp_path / "params.yaml"
    text = (REPO / "params.yaml").read_text()
    path.write_text(text.replace("dpo:\n  seed: 1337\n", "dpo:\n  seed: 1337\n  beta: 0.5\n"))
    with pytest.raises(ParamsError, match=r"params: dpo.beta: given twice \(line \d+ of "):
        load_params(path)
    path.write_bytes(b"prepare:\n  source: \xff\xfe\n")
    with pytest.raises(ParamsError, match="not UTF-8"):
        load_params(path)


def test_describe_lists_every_key_with_its_range_and_help():
    from pico.config import SECTIONS
    from pico.knobs import describe

    rows = [r for name, cls in SECTIONS.items() for r in describe(cls, name)]
    keys = [k for k, _, _ in rows]
    assert "dpo.beta" in keys and "generate.teacher.timeout_s" in keys
    beta = next(r for r in rows if r[0] == "dpo.beta")
    assert "(0, 1000]" in beta[1] and "KL" in beta[2]
    assert len(keys) == len(set(keys))


def test_an_unknown_key_with_a_newline_is_named_on_one_line(tmp_path):
    """Found by tests/test_properties.py: a key '\\n' made a two-line error."""
    from pico.knobs import read_yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["prepare"]["\n"] = None
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as e:
        parse_params(read_yaml(path))
    assert "prepare.'\\n'" in str(e.value) and "\n" not in str(e.value)


def test_dpo_pairs_per_prompt_cannot_exceed_the_samples(raw):
    bad = copy.deepcopy(raw)
    bad["dpo"]["onpolicy"].update(samples=2, pairs_per_prompt=3)
    with pytest.raises(ParamsError, match=r"dpo\.onpolicy\.pairs_per_prompt: must be at most dpo\.onpolicy\.samples "
                                         r"\(2\)"):
        parse_params(bad)


def test_dpo_rounds_need_on_policy_pairs(raw):
    bad = copy.deepcopy(raw)
    bad["dpo"]["onpolicy"].update(rounds=2, share=0.0)
    with pytest.raises(ParamsError, match=r"dpo\.onpolicy\.rounds: must be 1 when dpo\.onpolicy\.share is 0"):
        parse_params(bad)
    bad["dpo"]["onpolicy"]["rounds"] = 0
    with pytest.raises(ParamsError, match=r"dpo\.onpolicy\.rounds"):
        parse_params(bad)
