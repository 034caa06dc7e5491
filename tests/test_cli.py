"""The `pico` command: play and compare."""

from __future__ import annotations

import json

import pytest
import torch

from pico.cli import main


def play(capsys, ckpt, tok_path, *args):
    code = main(["play", "--checkpoint", str(ckpt), "--tokenizer", str(tok_path), "--max-new-tokens", "20", *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_play_from_spec_flags_prints_a_story_without_special_tokens(capsys, tiny_checkpoint):
    ckpt, tok_path = tiny_checkpoint
    code, out, err = play(capsys, ckpt, tok_path, "--protagonist", "Mina", "--taboo", "never look back",
                          "--show-prompt", "--seed", "3")
    assert code == 0, err
    assert "Protagonist: Mina" in out and "Taboo rule: never look back" in out
    assert "<|" not in out.split("Story:")[1]
    code2, out2, _ = play(capsys, ckpt, tok_path, "--protagonist", "Mina", "--taboo", "never look back",
                          "--show-prompt", "--seed", "3")
    assert out2 == out  # seeded


def test_play_prompt_and_jsonl_prompt_file(capsys, tiny_checkpoint, tmp_path):
    ckpt, tok_path = tiny_checkpoint
    code, out, _ = play(capsys, ckpt, tok_path, "--prompt", "Once upon a time")
    assert code == 0 and out.strip() != "Once upon a time"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Story {i}:\n"}) + "\n" for i in range(25)))
    code, out, _ = play(capsys, ckpt, tok_path, "--prompt-file", str(prompts), "--batch-size", "8")
    rows = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(rows) == 25 and rows[3]["prompt"] == "Story 3:\n"


def test_play_errors_are_clear(capsys, tiny_checkpoint, tmp_path):
    ckpt, tok_path = tiny_checkpoint
    code, _, err = play(capsys, tmp_path / "missing.pt", tok_path)
    assert code == 2 and "checkpoint not found" in err
    broken = tmp_path / "broken.pt"
    broken.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = play(capsys, broken, tok_path)
    assert code == 2 and "truncated or not a torch checkpoint" in err
    long_prompt = "the dark door " * 400
    code, _, err = play(capsys, ckpt, tok_path, "--prompt", long_prompt)
    assert code == 2 and "context is 512 tokens" in err and "--truncate" in err
    code, out, _ = play(capsys, ckpt, tok_path, "--prompt", long_prompt, "--truncate")
    assert code == 0


def test_play_refuses_a_pickle_that_runs_code(capsys, tiny_checkpoint, tmp_path):
    ckpt, tok_path = tiny_checkpoint
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pt"
    torch.save({"format": "pico-checkpoint", "payload": Evil()}, evil)
    code, _, err = play(capsys, evil, tok_path)
    assert code == 2 and "refused" in err
    assert not marker.exists()


def test_play_rejects_a_checkpoint_of_another_tokenizer(capsys, tiny_checkpoint, tmp_path, sample_stories):
    from pico.tokenizer import train_tokenizer

    ckpt, _ = tiny_checkpoint
    other = tmp_path / "other.json"
    train_tokenizer(sample_stories[:50], 300).save(other)
    code, _, err = play(capsys, ckpt, other)
    assert code == 2 and "trained with tokenizer" in err


def test_interactive_mode_reads_fields_until_eof(monkeypatch, capsys, tiny_checkpoint):
    ckpt, tok_path = tiny_checkpoint
    answers = iter(["", "", "Ruth", "", "", "", ""])

    def fake_input(prompt):
        try:
            return next(answers)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr("builtins.input", fake_input)
    code, out, err = play(capsys, ckpt, tok_path, "--mode", "interactive")
    assert code == 0 and out.strip()


def test_compare_two_checkpoints(capsys, tmp_path):
    from pico.checks import CHECKS

    metrics = {"base": {"sft_test_loss": 6.0, "unseen_pass_all": 0.1},
               "dpo": {"sft_test_loss": 1.0, "unseen_pass_all": 0.9}}
    path = tmp_path / "evaluate.json"
    path.write_text(json.dumps(metrics))
    records = [{"checkpoint": name, "split": "test_unseen", "index": i, "passed_all": passed(i),
                "checks": {c: passed(i) for c in CHECKS}}
               for name, passed in (("base", lambda i: i == 0), ("dpo", lambda i: i != 3)) for i in range(10)]
    (tmp_path / "generations_test_unseen.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    args = ["compare", "base", "dpo", "--metrics-file", str(path), "--eval-dir", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.index("unseen_pass_all") < out.index("sft_test_loss")  # the headline first
    assert "| sft_test_loss | 6 | 1 | -5 | -83.3% | ▲ better |" in out
    assert "Regressions (0): none" in out
    # 9 of 10 vs 1 of 10 on the same specs: 8 specs only dpo passes, none only base: McNemar p = 2/2^8
    assert "| test_unseen | pass_all | 0.100 | 0.900 | +0.800" in out and "| 0 / 8 | 0.00781 | significant |" in out
    assert main([*args, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["sections"]["base -> dpo"]["improvements"] == ["unseen_pass_all", "sft_test_loss"]
    sig = data["sections"]["base -> dpo"]["significance"][0]
    assert sig["metric"] == "pass_all" and sig["significant"] and sig["lo"] > 0
    assert main(["compare", "base", "nope", "--metrics-file", str(path)]) == 2
    assert "no checkpoint 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("args,message", [
    (["--prompt", ""], "--prompt: is empty"),
    (["--prompt", "\udcff"], "--prompt: is not valid UTF-8 text"),
    (["--temperature", "nan"], "--temperature: must be a finite number (got nan)"),
    (["--temperature", "inf"], "--temperature: must be a finite number (got inf)"),
    (["--temperature", "-1"], "--temperature: must be in [0, 100] (got -1.0)"),
    (["--top-p", "0"], "--top-p: must be in (0, 1] (got 0.0)"),
    (["--top-p", "nan"], "--top-p: must be a finite number"),
    (["--top-k", "-2"], "--top-k: must be in [0, inf) (got -2)"),
    (["--seed", "-1"], "--seed: must be in [0, 4294967296) (got -1)"),
    (["--batch-size", "0"], "--batch-size: must be in (0, 65536] (got 0)"),
    (["--title", ""], "--title: must be one line of text"),
    (["--taboo", "a\nb"], "--taboo: must be one line of text"),
    (["--temperature", "hot"], "argument --temperature: invalid float value: 'hot'"),
])
def test_bad_play_flags_are_one_line_errors_naming_the_flag(capsys, tiny_checkpoint, args, message):
    ckpt, tok_path = tiny_checkpoint
    code, out, err = play(capsys, ckpt, tok_path, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("flag,value", [("--temperature", "1e-40"), ("--top-p", "1e-300"), ("--temperature", "0")])
def test_play_settings_that_would_underflow_are_greedy(capsys, tiny_checkpoint, flag, value):
    ckpt, tok_path = tiny_checkpoint
    code, greedy, _ = play(capsys, ckpt, tok_path, "--prompt", "Once upon a time", "--temperature", "0")
    code2, out, err = play(capsys, ckpt, tok_path, "--prompt", "Once upon a time", "--temperature",
                           "1e-40" if flag == "--temperature" else "1.0", flag, value)
    assert code == code2 == 0, err
    assert out == greedy


@pytest.mark.parametrize("content,message", [
    (b"", "prompt file is empty"), (b"  \n", "prompt file is empty"), (b"\x00\x01binary", "looks binary"),
    (b"\xff\xfeStory", "not UTF-8 text (byte 0)"),
])
def test_bad_prompt_files_are_one_line_errors_naming_the_file(capsys, tiny_checkpoint, tmp_path, content, message):
    ckpt, tok_path = tiny_checkpoint
    path = tmp_path / "prompt.txt"
    path.write_bytes(content)
    code, _, err = play(capsys, ckpt, tok_path, "--prompt-file", str(path))
    assert code == 2 and err.startswith(f"error: {path}: ") and message in err, err


@pytest.mark.parametrize("row,message", [
    ('{"prompt": null}', '"prompt" must be a non-empty string (got None)'),
    ('{"prompt": 42}', '"prompt" must be a non-empty string (got 42)'),
    ('{"prompt": NaN}', '"prompt" must be a non-empty string (got nan)'),
    ('{"prompt": ""}', '"prompt" must be a non-empty string'),
    ('{"prompt": "\\ud800"}', "lone surrogate"),
])
def test_bad_jsonl_prompt_rows_name_file_and_line(capsys, tiny_checkpoint, tmp_path, row, message):
    ckpt, tok_path = tiny_checkpoint
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Story:\\n"}\n' + row + "\n")
    code, _, err = play(capsys, ckpt, tok_path, "--prompt-file", str(path))
    assert code == 2 and err.startswith(f"error: {path}:2: ") and message in err, err


@pytest.mark.parametrize("content,message", [
    ("[1, 2]", "expected {checkpoint: {metric: value}}, got a JSON list"),
    ('{"base": 3, "dpo": {}}', "'base' must be an object of metrics (got a JSON int)"),
    ("{", "invalid JSON"),
])
def test_compare_refuses_a_metrics_file_of_another_shape(capsys, tmp_path, content, message):
    path = tmp_path / "evaluate.json"
    path.write_text(content)
    assert main(["compare", "base", "dpo", "--metrics-file", str(path), "--eval-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_debug_shows_the_traceback_and_the_default_does_not(capsys, tmp_path, monkeypatch):
    path = tmp_path / "evaluate.json"
    path.write_text("[1]")
    args = ["compare", "base", "dpo", "--metrics-file", str(path)]
    assert main(args) == 2
    assert "Traceback" not in capsys.readouterr().err
    assert main(["--debug", *args]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    monkeypatch.setenv("PICO_DEBUG", "1")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and err.strip().splitlines()[-1].startswith("error: ")


def test_a_bug_is_one_line_exit_1_and_ctrl_c_exit_130(capsys, monkeypatch):
    import pico.cli

    def boom(args):
        raise ZeroDivisionError("division by zero")

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(pico.cli, "cmd_params", boom)
    assert main(["params"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: internal error ZeroDivisionError: division by zero (a bug in pico")
    assert len(err.strip().splitlines()) == 1
    monkeypatch.setattr(pico.cli, "cmd_params", interrupted)
    assert main(["params"]) == 130
    assert capsys.readouterr().err.startswith("error: interrupted")


def test_compare_two_checkpoints_within_several_runs_pools_the_paired_test(monkeypatch, capsys):
    """`pico compare --rev s0,s1,s2 sft dpo`: SFT against DPO of the same runs (seeds), paired per spec."""
    import pico.cli
    from pico.checks import CHECKS

    def record(ckpt, index, passed):
        return {"checkpoint": ckpt, "split": "test_unseen", "index": index, "passed_all": passed,
                "checks": {c: passed for c in CHECKS}}

    # per run: sft passes specs 0-1 of 10, dpo passes 0-4 (3 more, never fewer)
    gens = {(rev, ck): [record(ck, i, i < (2 if ck == "sft" else 5)) for i in range(10)]
            for rev in ("s0", "s1", "s2") for ck in ("sft", "dpo")}
    metrics = {"sft.unseen_pass_all": 0.2, "dpo.unseen_pass_all": 0.5}
    monkeypatch.setattr(pico.cli, "_metrics_at", lambda rev, f: dict(metrics))
    monkeypatch.setattr(pico.cli, "_generations_at", lambda rev, d, ck: gens[(rev, ck)])
    assert main(["compare", "--rev", "s0,s1,s2", "sft", "dpo", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    pooled = next(r for r in out["pooled"] if r["metric"] == "pass_all")
    assert (pooled["n"], pooled["a_only"], pooled["b_only"]) == (30, 0, 9)  # 3 runs x 10 specs, pooled
    assert pooled["diff"] == pytest.approx(0.3) and pooled["significant"]
    assert [r["diff"] for rows in out["per_run"].values() for r in rows] == pytest.approx([0.3] * 3)
    assert main(["compare", "--rev", "s0,s1,s2", "sft", "dpo"]) == 0
    assert "pooled over the runs (30 generations per checkpoint)" in capsys.readouterr().out
    monkeypatch.setattr(pico.cli, "_generations_at", lambda rev, d, ck: [])
    assert main(["compare", "--rev", "s0,s1", "sft", "dpo"]) == 2  # a usage error
    assert "no generations of sft and dpo" in capsys.readouterr().err
