"""Property tests that look for the next bad input: mutated params.yaml values, arbitrary JSONL rows and bytes,
and arbitrary `pico` flags either work or fail as the project's error naming the culprit, never as anything else.

Examples are bounded (max_examples) so `make test` stays as fast as it was; Hypothesis keeps the failing
examples it finds in .hypothesis/ and tries them first next time.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from conftest import REPO
from pico.cli import main
from pico.config import parse_params
from pico.errors import DataError, ParamsError
from pico.io import read_jsonl
from pico.knobs import read_yaml

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
BASE = yaml.safe_load((REPO / "params.yaml").read_text())


def leaf_paths(node, prefix=()) -> list[tuple]:
    """Every key path of a nested mapping, sections and nested mappings included."""
    out = []
    for key, value in node.items():
        out.append(prefix + (key,))
        if isinstance(value, dict):
            out += leaf_paths(value, prefix + (key,))
    return out


PATHS = leaf_paths(BASE)

# the values a hand-edited params.yaml can hold: every YAML type, signs, magnitudes, inf/nan, odd strings
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, -1, 1, 1e-300, 1e-40, 5e-324, 1e308, 2**32, 2**63, -0.0, 0.5, 65536, 65537]),
)
scalars = st.one_of(numbers, st.booleans(), st.none(),
                    st.text(max_size=30), st.sampled_from(["", " ", "auto", "nan", "1e3", "https://u:pw@h/v1", "\x00"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                      max_leaves=6)


def set_path(tree: dict, path: tuple, value) -> None:
    for key in path[:-1]:
        tree = tree[key]
    tree[path[-1]] = value


def delete_path(tree: dict, path: tuple) -> None:
    for key in path[:-1]:
        tree = tree[key]
    del tree[path[-1]]


def dotted(path: tuple) -> str:
    return ".".join(str(p) for p in path)


def check_params_text(text: str, culprit: str) -> None:
    """Validation of this params.yaml text accepts it, or raises ParamsError naming `culprit`; nothing else."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_text(text, encoding="utf-8")
        try:
            parse_params(read_yaml(path))
        except ParamsError as e:
            assert culprit in str(e), f"{culprit} not named in: {e}"
            assert "\n" not in str(e)


# ----------------------------------------------------------------------------------------------- params.yaml
@BOUNDED
@given(path=st.sampled_from(PATHS), value=values)
def test_any_value_in_params_is_accepted_or_refused_naming_its_key(path, value):
    params = json.loads(json.dumps(BASE))
    set_path(params, path, value)
    check_params_text(yaml.safe_dump(params, sort_keys=False, allow_unicode=True), dotted(path))


@BOUNDED
@given(path=st.sampled_from(PATHS))
def test_a_missing_key_is_refused_naming_it(path):
    params = json.loads(json.dumps(BASE))
    delete_path(params, path)
    if path[:2] in (("prepare", "files"), ("generate", "sft_splits"), ("generate", "dpo_splits")) and len(path) > 2:
        # an entry of a free-form mapping: a file may go; a split is named by its mapping
        check_params_text(yaml.safe_dump(params, sort_keys=False), dotted(path[:2]))
        return
    with pytest.raises(ParamsError, match=re.escape(dotted(path))):
        parse_params(params)


def get_path(tree: dict, path: tuple):
    for key in path:
        tree = tree[key]
    return tree


MAPPINGS = [p for p in PATHS if isinstance(get_path(BASE, p), dict)]  # sections and nested mappings


@BOUNDED
@given(path=st.sampled_from(MAPPINGS), name=st.text(st.characters(min_codepoint=97, max_codepoint=122), min_size=1,
                                                     max_size=12))
def test_an_unknown_key_is_refused_naming_it(path, name):
    params = json.loads(json.dumps(BASE))
    mapping = get_path(params, path)
    assume(name not in mapping)
    mapping[name] = 1
    check_params_text(yaml.safe_dump(params, sort_keys=False), dotted(path))


@BOUNDED
@given(section=st.sampled_from(list(BASE)), data=st.data())
def test_a_key_given_twice_is_refused_naming_it(section, data):
    key = data.draw(st.sampled_from(list(BASE[section])))
    value = data.draw(st.one_of(st.just(BASE[section][key]), scalars))
    rest = {k: v for k, v in BASE.items() if k != section}
    body = yaml.safe_dump(BASE[section], sort_keys=False) + yaml.safe_dump({key: value})
    text = yaml.safe_dump(rest, sort_keys=False) + f"{section}:\n" + "".join(f"  {line}\n" for line in body.splitlines())
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_text(text)
        with pytest.raises(ParamsError, match=re.escape(f"{section}.{key}: given twice")):
            read_yaml(path)


@BOUNDED
@given(junk=st.binary(min_size=1, max_size=40), at=st.integers(min_value=0))
def test_any_bytes_in_params_yaml_are_accepted_or_refused_in_one_line(junk, at):
    text = (REPO / "params.yaml").read_bytes()
    at %= len(text)
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "params.yaml"
        path.write_bytes(text[:at] + junk + text[at:])
        try:
            parse_params(read_yaml(path))
        except ParamsError as e:
            assert "\n" not in str(e) and str(e).startswith("params: ")


# ----------------------------------------------------------------------------------------------- JSONL
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True),
              st.text(max_size=20), st.sampled_from(["", " ", "\ud800", "\udcff x", "ok 👻"])),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=5)
rows = st.one_of(st.fixed_dictionaries({"prompt": json_values, "response": json_values}), json_values)


def encode_row(row) -> bytes:
    return json.dumps(row, ensure_ascii=True).encode()  # NaN, Infinity and \ud800 escapes as Python writes them


lines = st.one_of(rows.map(encode_row), st.binary(max_size=30),
                  st.sampled_from([b"", b"\xef\xbb\xbf{}", b"{", b"[" * 5000, b"1" * 5000, b'{"prompt": "\\ud800"}']))


@BOUNDED
@given(body=st.lists(lines, min_size=0, max_size=5), bom=st.booleans())
def test_any_jsonl_file_is_read_or_refused_as_file_and_line(body, bom):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "train.jsonl"
        path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + b"\n".join(body))
        try:
            got = read_jsonl(path, texts=("prompt", "response"))
        except DataError as e:
            assert re.match(rf"{re.escape(str(path))}(:\d+)?: ", str(e)), str(e)
            assert "\n" not in str(e)
            return
        for row in got:
            for key in ("prompt", "response"):
                assert isinstance(row[key], str) and row[key].strip()
                row[key].encode("utf-8")  # text every later stage can write


# ----------------------------------------------------------------------------------------------- CLI flags
def run_cli(args: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(args)
    return code, out.getvalue(), err.getvalue()


def assert_clean(code: int, err: str) -> None:
    """Exit 0, or 2 with exactly one line on stderr; never a traceback, never a bug (exit 1)."""
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), err


@pytest.fixture(scope="module")
def play_files(tok, tmp_path_factory):
    import torch

    from conftest import config
    from pico.checkpoint import save_checkpoint
    from pico.model import build_model

    d = tmp_path_factory.mktemp("play")
    cfg = config("model", d_model=16, n_layer=1, n_head=2, max_seq_len=512)
    torch.manual_seed(0)
    save_checkpoint(d / "m.pt", build_model(cfg, tok.vocab_size), model_cfg=cfg, tokenizer_hash=tok.hash,
                    stage="test", step=0)
    tok.save(d / "tok.json")
    return d


flag_numbers = st.one_of(numbers.map(repr), st.sampled_from(["nan", "inf", "-inf", "1e-40", "1e-300", "x", ""]))
PLAY_FLAGS = {"--temperature": flag_numbers, "--top-p": flag_numbers, "--top-k": flag_numbers,
              "--max-new-tokens": st.one_of(st.integers(-3, 12).map(str), flag_numbers),
              "--no-repeat-ngram": flag_numbers, "--seed": flag_numbers, "--batch-size": flag_numbers,
              "--prompt": st.one_of(st.text(max_size=20), st.sampled_from(["", " ", "\n", "\udcff", "Story:\n"])),
              "--title": st.one_of(st.text(max_size=10), st.sampled_from(["", "a\nb", "\udcff"]))}


@BOUNDED
@given(flags=st.dictionaries(st.sampled_from(list(PLAY_FLAGS)), st.just(None), max_size=3), data=st.data())
def test_any_play_flags_work_or_fail_in_one_line(play_files, flags, data):
    args = ["play", "--checkpoint", str(play_files / "m.pt"), "--tokenizer", str(play_files / "tok.json"),
            "--max-new-tokens", "4"]
    for flag in flags:
        value = data.draw(PLAY_FLAGS[flag], label=flag)
        args += [f"{flag}={value}"]  # `=`: a value starting with '-' stays this flag's value
    code, _, err = run_cli(args)
    assert_clean(code, err)


@BOUNDED
@given(content=st.one_of(st.binary(max_size=40), st.text(max_size=40).map(str.encode),
                         st.sampled_from([b"", b"\x00\x01", b"\xff\xfe", b"\xef\xbb\xbfStory:\n", b"  \n"])),
       jsonl=st.booleans())
def test_any_prompt_file_works_or_fails_in_one_line(play_files, content, jsonl):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / ("prompts.jsonl" if jsonl else "prompt.txt")
        path.write_bytes(content)
        code, _, err = run_cli(["play", "--checkpoint", str(play_files / "m.pt"), "--tokenizer",
                                str(play_files / "tok.json"), "--max-new-tokens", "2", "--prompt-file", str(path)])
    assert_clean(code, err)


@BOUNDED
@given(body=st.lists(lines, min_size=0, max_size=4))
def test_pico_check_on_any_file_works_or_fails_in_one_line(body):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "stories.jsonl"
        path.write_bytes(b"\n".join(body))
        code, _, err = run_cli(["check", "--input", str(path)])
    assert_clean(code, err)


@BOUNDED
@given(metrics=json_values, names=st.lists(st.sampled_from(["base", "sft", "dpo", "x", ""]), min_size=0, max_size=3),
       generations=st.lists(lines, max_size=2))
def test_pico_compare_on_any_files_works_or_fails_in_one_line(metrics, names, generations):
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "evaluate.json").write_text(json.dumps(metrics))
        (Path(d) / "generations_test.jsonl").write_bytes(b"\n".join(generations))
        code, _, err = run_cli(["compare", *names, "--metrics-file", str(Path(d) / "evaluate.json"),
                                "--eval-dir", d])
    assert_clean(code, err)
