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
